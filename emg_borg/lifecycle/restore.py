"""The restore side: `archives`, `patterns`, `extract`, `restore` and `verify`.

`restore` is the vendor note's "Simple recovery" as one command, in an order where a refusal comes
before anything is written: it refuses while emgd runs; reads the live database's message id
before the database could be replaced; checks the database step (refusing a non-empty database
unless told otherwise) and fetches and checks the dump; extracts configuration and spool over the
live paths, moving an existing spool aside first so old and restored queue files never mix; only
then loads the dump (not after an incomplete extraction); and writes `SPOOLDIR/seqno` so emgd
starts with an id above every id it has used. It ends with a checklist for the operator.

Each `cmd_*` takes the parsed arguments and the emg-borg configuration (None when there is none:
a rebuilt machine may have no `/etc/emg-borg/config.toml` yet) and returns an exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from emg_borg import config as config_module
from emg_borg.cli import print_json
from emg_borg.emg import categories as category_module
from emg_borg.emg import layout as emg_layout
from emg_borg.emg import servercfg
from emg_borg.errors import EXIT_FAILURE, EXIT_OK, ConfigError, EmgBorgError, UsageError
from emg_borg.external import borg, proc
from emg_borg.lifecycle import extract as extraction
from emg_borg.lifecycle.archives import Archive, Repository, emg_archives, resolve_repository, select
from emg_borg.lifecycle.backup import machine_identity, signals_raise
from emg_borg.lifecycle.run import sha256_file
from emg_borg.plugins import get_plugin_manager
from emg_borg.plugins.seqno import node_range

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ArchivedLayout:
    """What a restore knows of the archived installation: the manifest's paths and the DB
    profile of the archived server.cfg (the one being restored)."""

    emgdir: str
    server_cfg: str
    spooldir: str
    node_id: int | None
    db: emg_layout.DbProfile | None


@dataclasses.dataclass
class RestoreRun:
    """One restore; the restore hooks read it and report through `done` and `todo`."""

    config: Any
    hook: Any
    repository: Repository
    archive: Archive
    layout: ArchivedLayout
    target: Path
    categories: tuple
    load_database: bool = False
    force_database: bool = False
    dry_run: bool = False
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    actions: list = dataclasses.field(default_factory=list)
    remaining: list = dataclasses.field(default_factory=list)
    unwritten: list = dataclasses.field(default_factory=list)  # borg's warnings: paths it could not write
    deferred: list = dataclasses.field(default_factory=list)  # (what, step): database loads, run after the files
    plugin_state: dict = dataclasses.field(default_factory=dict)

    @property
    def manifest(self) -> dict:
        return self.archive.manifest

    def live(self, path) -> Path:
        return extraction.live_path(self.target, path)

    def done(self, text: str) -> None:
        # The closing checklist prints these; logged only for -v, so a terminal shows them once.
        logger.debug("%s", text)
        self.actions.append(text)

    def todo(self, text: str) -> None:
        self.remaining.append(text)

    def later(self, what: str, step) -> None:
        """Run `step()` after the files are restored: a restore hook checks (and refuses) at once and
        leaves the irreversible part (replacing the database) for last."""
        self.deferred.append((what, step))

    def fetch_dump(self) -> Path:
        """The archived dump, extracted into a private temporary directory (removed when the
        restore ends) and checked against the manifest's size and sha256."""
        mysql = self.manifest["mysql"]
        scratch = Path(tempfile.mkdtemp(prefix="emg-borg-dump-"))
        self.cleanup.callback(shutil.rmtree, scratch, True)
        extracted = extraction.extract(self.repository, self.archive, ("database",), scratch)
        if not extracted.complete:
            raise EmgBorgError(f"archive {self.archive.name}: the dump could not be extracted: "
                               f"{extraction.incomplete(extracted)}; not loading it")
        path = scratch / mysql["dump"]
        problem = dump_problem(path, mysql)
        if problem:
            raise EmgBorgError(f"archive {self.archive.name}: {problem}; not loading it")
        return path


def dump_problem(path: Path, mysql: dict) -> str | None:
    """Why an extracted dump does not match the manifest, or None when it does."""
    if not path.is_file():
        return f"the dump {mysql['dump']} is missing"
    size = path.stat().st_size
    if size != mysql.get("bytes"):
        return f"the dump is {size} bytes, the manifest says {mysql.get('bytes')}"
    digest = sha256_file(path)
    if digest != mysql.get("sha256"):
        return f"the dump's sha256 {digest[:16]}... differs from the manifest's {str(mysql.get('sha256'))[:16]}..."
    return None


def _config(config):
    return config if config is not None else config_module.defaults()


def cmd_archives(args, config) -> int:
    archives = emg_archives(resolve_repository(args))
    rows = [a.summary() for a in archives]
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        logger.info("no emg-borg archives (archives without emg-borg/manifest.json do not count)")
        return EXIT_OK
    print(f"{'time':<25} {'message id':>12} {'provider':<9} {'freeze ms':>10} {'dump':>10}  archive")
    for row in rows:
        freeze = "-" if row["freeze_window_ms"] is None else f"{row['freeze_window_ms']:.1f}"
        dump = "-" if row["dump_bytes"] is None else extraction.human_size(row["dump_bytes"])
        print(f"{row['time']:<25} {str(row['message_id']):>12} {str(row['snapshot_provider']):<9} {freeze:>10} "
              f"{dump:>10}  {row['name']}")
    return EXIT_OK


def cmd_patterns(args, config) -> int:
    selected = category_module.parse(args.categories)
    _, archive = select(args)
    sys.stdout.write(extraction.pattern_text(archive, extraction.present(archive, selected)))
    return EXIT_OK


def cmd_extract(args, config) -> int:
    selected = category_module.parse(args.categories)
    destination = extraction.check_destination(args.destination, args.in_place)
    repository, archive = select(args)
    selected = extraction.present(archive, selected)
    if args.dry_run:
        return _print_plan(extraction.plan(repository, archive, selected), archive, args.json)
    destination = destination or extraction.new_directory(archive)
    with extraction.created_directory(destination, keep_on_error=args.in_place):
        extracted = extraction.extract(repository, archive, selected, destination)
    if not extracted.complete:
        raise EmgBorgError(f"extraction into {destination} incomplete: {extraction.incomplete(extracted)}")
    items = extracted.items
    result = {"archive": archive.name, "categories": list(selected), "destination": str(destination), "items": items}
    if args.json:
        print_json(result)
    else:
        print(f"extracted {', '.join(selected)} of {archive.name} into {destination} ({items} items)")
    return EXIT_OK


def _print_plan(by_category: dict, archive: Archive, as_json: bool) -> int:
    if as_json:
        print_json({"archive": archive.name, "dry_run": True, "categories": by_category})
        return EXIT_OK
    print(f"dry run: would extract from {archive.name}:")
    for category, items in by_category.items():
        size = sum(item.get("size") or 0 for item in items)
        print(f"{category} ({len(items)} items, {extraction.human_size(size)}):")
        for item in items:
            print(f"  {item['path']}")
    return EXIT_OK


def cmd_restore(args, config) -> int:
    config = _config(config)
    selected = set(category_module.parse(args.categories))
    if args.skip_data:
        selected.discard("data")
    if args.database or args.force_database:
        selected.add("database")
    target = Path(args.target).resolve()
    if not target.is_dir():
        raise UsageError(f"restore target {target} is not a directory")
    check_message_id(args.message_id, None, None)
    running = check_emgd(args.force, args.dry_run)
    repository, archive = select(args)
    selected = extraction.present(archive, tuple(c for c in category_module.CATEGORIES if c in selected))
    restore = RestoreRun(
        config=config, hook=get_plugin_manager().hook, repository=repository, archive=archive,
        layout=archived_layout(repository, archive), target=target, categories=selected,
        load_database=args.database or args.force_database, force_database=args.force_database, dry_run=args.dry_run,
    )
    check_message_id(args.message_id, restore.layout.node_id, config["seqno"]["node_digits"])
    note_emgd(restore, running)
    # SIGTERM/SIGHUP become errors, so the cleanup (the decrypted dump's directory) runs.
    with signals_raise(), restore.cleanup:
        try:
            check_machine(restore)
            live_counter = restore.live(restore.layout.spooldir) / "seqno.hdb"
            keep_live_counter = "data" not in selected and args.message_id is None and live_counter.exists()
            if keep_live_counter:
                seqno, source = None, f"the live message id counter {live_counter} is newer than the archive"
            else:
                seqno, source = message_id(restore, args.message_id)
            if "database" in selected and not restore.hook.emg_borg_restore_database(restore=restore):
                logger.warning("no plugin restored the database (server.cfg has no MySQL DB profile?)")
            if "data" not in selected:
                note_live_spool(restore)
            files = tuple(c for c in selected if c != "database")
            if files:
                restore_files(restore, files)
            run_deferred(restore)
            if keep_live_counter:
                keep_seqno(restore, live_counter)
            else:
                write_seqno(restore, seqno, source)
        except BaseException:
            # The error comes next, as one line; say what had already been done before it.
            for line in restore.actions:
                logger.warning("done before the failure: %s", line)
            raise
    restore.todo("start emgd; it reads the seqno file into seqno.hdb at start-up")
    return _report(restore, seqno, source, args.json)


MAX_MESSAGE_ID = 2**63 - 1  # EMG's ids are signed 64-bit


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


def check_emgd(force: bool, dry_run: bool) -> list[int]:
    """The ids of running emgd processes; refuses (raises) when there are any, unless forced."""
    running = proc.emgd_pids()
    if running and not force and not dry_run:
        raise EmgBorgError(
            f"emgd is running (pid {', '.join(map(str, running))}); restoring under it would mix its open spool files "
            f"with the archived ones and it would not read the restored seqno. Stop it (emgd -stop) and run restore "
            f"again, or pass --force"
        )
    return running


def note_emgd(restore: RestoreRun, running: list[int]) -> None:
    if not running:
        return
    pids = ", ".join(map(str, running))
    if restore.dry_run:
        logger.warning("emgd is running (pid %s): a real restore would refuse until it is stopped", pids)
        restore.todo("stop emgd (emgd -stop) before the real restore")
    else:
        logger.warning("emgd is running (pid %s); restoring anyway because of --force", pids)
        restore.todo("restart emgd: it ran during the restore and has not read the restored files")


def archived_layout(repository: Repository, archive: Archive) -> ArchivedLayout:
    """The archived installation: paths from the manifest, the DB profile from its server.cfg."""
    manifest = archive.manifest
    db = None
    cfg_path = manifest.get("server_cfg")
    if cfg_path:
        text = borg.read_file(repository.location, archive.name, cfg_path.lstrip("/"), env=repository.env)
        if text is None:
            logger.warning("archive %s has no %s", archive.name, cfg_path)
        else:
            try:
                # The layout module's own reading of a DB profile, applied to the archived server.cfg.
                db = emg_layout.db_profile(servercfg.parse(text.decode("utf-8", errors="replace"), Path(cfg_path)))
            except ConfigError as error:
                logger.warning("no database profile from the archived server.cfg (%s); using [mysql] only", error)
    return ArchivedLayout(
        emgdir=manifest.get("emgdir") or "", server_cfg=cfg_path or "", spooldir=manifest["spooldir"],
        node_id=manifest.get("node_id"), db=db,
    )


def check_machine(restore: RestoreRun) -> None:
    """Warn when the archive comes from other hardware: EMG licenses are tied to the machine."""
    archived, here = restore.manifest.get("machine") or {}, machine_identity()
    keys = [k for k in ("machine_id", "product_uuid") if archived.get(k) and here.get(k)] or ["hostname"]
    differing = [k for k in keys if archived.get(k) != here.get(k)]
    if not differing:
        logger.info("this is the machine the archive was made on (%s match)", ", ".join(keys))
        restore.todo("check that emgd accepts the restored license file when it starts")
        return
    detail = ", ".join(f"{k} {archived.get(k)} there, {here.get(k)} here" for k in differing)
    logger.warning("the archive was made on another machine (%s): a new EMG license key may be needed", detail)
    restore.todo("check EMG's license: the archive comes from other hardware, and EMG licenses are tied to the "
                 "machine; request a new license key from EMG support unless a standby license covers this one")


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
    live = restore.hook.emg_borg_live_message_id(restore=restore)
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


def run_deferred(restore: RestoreRun) -> None:
    """The database loads, last: not after an incomplete extraction (the operator fixes that
    first, and the database is still the one that goes with the old files)."""
    if restore.unwritten:
        for what, _ in restore.deferred:
            restore.todo(f"not done because the files are incomplete: {what}; once they are restored, run: emg-borg "
                         f"restore --archive {restore.archive.name} --categories database --database --force-database")
        return
    for _, step in restore.deferred:
        step()


def existing_config_files(restore: RestoreRun) -> list[Path]:
    """The configuration files an extraction is about to overwrite."""
    items = extraction.plan(restore.repository, restore.archive, ("config",)).get("config", [])
    return [restore.live(item["path"]) for item in items
            if item.get("type") == "-" and restore.live(item["path"]).is_file()]


def restore_files(restore: RestoreRun, files: tuple) -> None:
    """Extract the file categories over the live paths (under the target)."""
    if restore.dry_run:
        for category, items in extraction.plan(restore.repository, restore.archive, files).items():
            restore.done(f"would extract {category}: {len(items)} items")
        return
    if "data" in files:
        for root in restore.manifest["categories"].get("data", []):
            move_aside(restore, restore.live(root))
    overwritten = existing_config_files(restore) if "config" in files else []
    extracted = extraction.extract(restore.repository, restore.archive, files, restore.target)
    roots = category_module.selected_roots(restore.manifest["categories"], files)
    restore.done(f"extracted {', '.join(files)} ({extracted.items} items) to "
                 f"{', '.join(str(restore.live(r)) for r in roots)}")
    for warning in extracted.warnings:
        restore.unwritten.append(warning)
        restore.todo(f"NOT RESTORED (borg could not write it; fix the cause and extract it again): {warning}")
    unwritten = {warning.split(":", 1)[0] for warning in extracted.warnings}
    replaced = [str(path) for path in overwritten if str(path.relative_to(restore.target)) not in unwritten]
    if replaced:
        restore.done(f"overwrote {len(replaced)} existing configuration files with the archived ones (their previous "
                     f"content is not kept): {', '.join(replaced)}")


ASIDE_MARK = emg_layout.MOVED_ASIDE_MARK


def _aside_name(stem: str, where: Path) -> Path:
    """`where/<stem>.emg-borg-before-restore-<timestamp>`, numbered when taken (two restores
    within a second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    candidate = where / f"{stem}{ASIDE_MARK}{stamp}"
    number = 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = where / f"{stem}{ASIDE_MARK}{stamp}-{number}"
    return candidate


def move_aside(restore: RestoreRun, path: Path) -> None:
    """Move an existing, non-empty spool out of the way, so that the restored spool is exactly
    the archived one (stale queue or LevelDB files mixed into it would corrupt it).

    The old spool goes to the sibling `<spool>.emg-borg-before-restore-<timestamp>`: with the
    vendor's default SPOOLDIR (EMGDIR/spool) that lies inside EMGDIR, so the name carries
    emg-borg's mark, which the backup side excludes from every root. A mount point cannot be
    renamed: its old content goes to the hidden `<spool>/.emg-borg-before-restore-<timestamp>`
    instead. Earlier restores' directories stay where they are."""
    if not path.is_dir():
        return
    children = [child for child in path.iterdir() if not child.name.startswith(ASIDE_MARK)]
    if not children:
        return
    if os.path.ismount(path):
        aside = _aside_name("", path)
        aside.mkdir(mode=0o700)
        for child in children:
            child.rename(aside / child.name)
    else:
        aside = _aside_name(path.name, path.parent)
        path.rename(aside)
    logger.info("moved the existing spool %s aside to %s", path, aside)
    restore.done(f"moved the existing {path} aside to {aside}")
    restore.todo(f"remove {aside} once EMG runs well")


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
    spool = path.parent
    if not spool.is_dir():
        spool.mkdir(parents=True, mode=0o755)
        restore.todo(f"{spool} was created owned by root: give it to the user emgd runs as")
    tmp = spool / ".seqno.emg-borg"
    tmp.write_text(f"{value}\n")
    owner = spool.stat()
    with contextlib.suppress(PermissionError):
        os.chown(tmp, owner.st_uid, owner.st_gid)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    restore.done(f"wrote {path} = {value} from {source}")


def note_live_spool(restore: RestoreRun) -> None:
    """The spool is not being restored (--skip-data, or a selection without data): say what emgd
    will find there."""
    spool = restore.live(restore.layout.spooldir)
    if spool.is_dir() and any(child.name != "seqno" for child in spool.iterdir()):
        restore.done(f"left the live spool {spool} as it is (data not restored): emgd keeps its queues, delivery "
                     f"reports, SAT pool and keyword sessions")
    else:
        restore.done(f"restored no spool and there is none at {spool} (data not restored): emgd recreates empty "
                     f"queues, delivery reports, SAT pool and keyword sessions")


def keep_seqno(restore: RestoreRun, counter: Path) -> None:
    """The spool was not restored and its live `seqno.hdb` is there: it counts on from ids newer
    than the archive, and a seqno file (read into it at start-up) could only set it back."""
    path = counter.parent / "seqno"
    logger.warning("the spool was not restored and %s exists: not writing %s (pass --message-id N to write one)",
                   counter, path)
    restore.done(f"wrote no {path}: the live message id counter {counter} was kept, it is newer than the archive "
                 f"(--message-id N writes a seqno anyway)")
    if path.exists():
        restore.todo(f"{path} exists and emgd reads it into {counter.name} at start-up: check that it holds the last "
                     f"message id, or remove it")


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


def _report(restore: RestoreRun, seqno, source: str, as_json: bool) -> int:
    archive = restore.archive
    if as_json:
        print_json({
            "archive": archive.name, "time": archive.time.isoformat(timespec="seconds"), "target": str(restore.target),
            "categories": list(restore.categories), "dry_run": restore.dry_run,
            "seqno": {"value": seqno, "source": source}, "done": restore.actions, "todo": restore.remaining,
            "not_restored": restore.unwritten,
        })
        return EXIT_FAILURE if restore.unwritten else EXIT_OK
    heading = "dry run: would restore" if restore.dry_run else "restored"
    if restore.unwritten:
        heading = f"restore INCOMPLETE ({len(restore.unwritten)} path(s) could not be written): restored"
    print(f"{heading} from {archive.name} ({archive.time.isoformat(timespec='seconds')}, "
          f"message id {restore.manifest.get('message_id')}) into {restore.target}")
    for line in restore.actions:
        print(f"  done: {line}")
    print("still to do:")
    for line in restore.remaining:
        print(f"  - {line}")
    if restore.unwritten:
        logger.error("restore incomplete: %s", extraction.incomplete(borg.Extracted(0, restore.unwritten)))
        return EXIT_FAILURE
    return EXIT_OK


def cmd_verify(args, config) -> int:
    from emg_borg.lifecycle import verify

    return verify.run(args, _config(config))
