"""Restore: the message id emgd starts from, so ids never go backwards.

emgd reads a text file `SPOOLDIR/seqno` at start-up into its counter `seqno.hdb`. The restore
writes it with the highest id it can prove was used (the archive's, the live database's, the
operator's `--message-id`) plus `[seqno] margin`, atomically and fsynced; with no id known it
writes none, so emgd keeps the counter in `seqno.hdb`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from emg_borg.core.files import write_atomic
from emg_borg.core.run import RestoreRun
from emg_borg.emg.message_ids import MAX_MESSAGE_ID, node_range
from emg_borg.errors import EmgBorgError, UsageError

logger = logging.getLogger(__name__)


def check_message_id(value: int | None, node_id: int | None, node_digits: int | None) -> None:
    """`--message-id` must be an id EMG can hand out: 1 ... 2**63-1, and within this node's range
    when the archived server.cfg sets NODEID. A usage error (exit 2) otherwise, before any work."""
    if value is None:
        return
    if not 1 <= value <= MAX_MESSAGE_ID:
        raise UsageError(f"--message-id {value} is out of range: a message id is 1 ... {MAX_MESSAGE_ID}")
    if node_id is not None and node_digits is not None:
        low, high = node_range(node_id, int(node_digits))
        if not low <= value <= high:
            raise UsageError(f"--message-id {value} is outside node {node_id}'s range {low} ... {high} "
                             f"(NODEID={node_id} in the archived server.cfg, [seqno] node_digits = {node_digits})")




def message_id(restore: RestoreRun, given: int | None) -> tuple[int | None, str]:
    """The id for SPOOLDIR/seqno: the highest of the archive's, the live database's and
    `--message-id`, plus `[seqno] margin`; and a sentence saying where it came from. None when no
    id is known: an id of 0 or less from the archive or the database proves nothing (no message
    was logged), so it never becomes `0 + margin`."""
    candidates = []
    archived = restore.manifest.get("message_id")
    if archived is not None and int(archived) > 0:
        candidates.append((int(archived), "the archive's message id"))
    elif archived is not None:
        logger.warning("the archive's message id is %s: no message id was captured at the backup", archived)
    try:
        live = restore.hook.emg_borg_live_message_id(restore=restore)
    except EmgBorgError as error:
        if given is None:
            raise EmgBorgError(f"{error}. The live database may hold ids newer than the archive; a seqno below them "
                               f"would make emgd hand them out again. Make the database readable, or pass "
                               f"--message-id N (the highest id known to be used)")
        logger.warning("%s; going on with --message-id %d", error, given)
        restore.todo(f"the live database could not be read ({error}); the seqno rests on --message-id {given}")
        live = None
    if live is not None and int(live) > 0:
        candidates.append((int(live), "the highest id in the live database"))
    if given is not None:
        candidates.append((given, "--message-id"))
    if not candidates:
        return None, "no message id known (the archive has none, the database gave none, no --message-id)"
    value, source = max(candidates, key=lambda c: c[0])
    margin = int(restore.config["seqno"]["margin"])
    others = ", ".join(f"{what} {v}" for v, what in candidates if what != source)
    text = f"{source} {value}" + (f" + margin {margin}" if margin else "") + (f" (also seen: {others})" if others else "")
    return value + margin, text




def write_seqno(restore: RestoreRun, value: int | None, source: str) -> None:
    """Write SPOOLDIR/seqno; emgd reads it into seqno.hdb when it starts. With no id known
    nothing is written, so emgd keeps the counter in seqno.hdb (the restored one, or with
    --skip-data the live one)."""
    path = restore.live(restore.layout.spooldir) / "seqno"
    if value is None:
        _no_seqno(restore, path, source)
        return
    if restore.dry_run:
        restore.done(f"would write {path} = {value} ({source})")
        return
    _write(restore, path, value)
    restore.done(f"wrote {path} = {value} from {source}")




def keep_seqno(restore: RestoreRun, counter: Path, value: int | None, source: str) -> None:
    """The spool was not restored and its live `seqno.hdb` is there: it counts on from ids newer
    than the archive, so no seqno is written for it. But a pending seqno file (an earlier
    restore's, read into seqno.hdb at the next start) is never left below `value`, the highest
    id known plus the margin."""
    path = counter.parent / "seqno"
    pending = _read_id(path)
    if path.exists() and value is not None and (pending is None or pending < value):
        if restore.dry_run:
            restore.done(f"would raise the pending {path} from {pending} to {value} ({source})")
            return
        _write(restore, path, value)
        logger.warning("raised the pending %s from %s to %d: emgd reads it at start-up", path, pending, value)
        restore.done(f"raised the pending {path} from {pending} to {value} ({source}): emgd reads it into "
                     f"{counter.name} at start-up, and it was below ids already used")
        return
    logger.warning("the spool was not restored and %s exists: not writing %s (pass --message-id N to write one)",
                   counter, path)
    restore.done(f"wrote no {path}: the live message id counter {counter} was kept, it is newer than the archive "
                 f"(--message-id N writes a seqno anyway)")
    if path.exists():
        restore.done(f"left the pending {path} = {pending}: it is not below the highest id known ({source})")


def _read_id(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write(restore: RestoreRun, path: Path, value: int) -> None:
    spool = path.parent
    if not spool.is_dir():
        spool.mkdir(parents=True, mode=0o755)
        restore.todo(f"{spool} was created owned by root: give it to the user emgd runs as")
    owner = spool.stat()
    write_atomic(path, f"{value}\n", 0o644, owner=(owner.st_uid, owner.st_gid))


def _no_seqno(restore: RestoreRun, path: Path, source: str) -> None:
    restored_spool = "data" in restore.categories and not restore.dry_run
    logger.warning("%s: not writing %s", source, path)
    if restored_spool and path.exists():
        # Only the archive can have put it there (the old spool was moved aside): an archive that
        # recorded no usable id, so its seqno holds none either.
        path.unlink()
        restore.done(f"removed {path}, which the archive held without a usable message id")
    counter = "the restored seqno.hdb" if restored_spool else f"{path.parent / 'seqno.hdb'} as it is"
    restore.todo(f"no message id is known, so no {path} was written: emgd keeps the message id counter of "
                 f"{counter}. If you know a higher id used since, write it into {path} before starting emgd")
    if path.exists():
        restore.todo(f"{path} exists and emgd reads it at start-up instead: check that it holds the last message id, "
                     f"or remove it")


