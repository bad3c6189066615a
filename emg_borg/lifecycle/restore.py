"""`emg-borg restore`: the vendor note's "Simple recovery" as one workflow.

The order makes every refusal come before anything is written: it refuses while emgd runs; reads
the live database's message id before the database could be replaced; lets each dump's plugin
check its database (refusing a non-empty one unless told otherwise) and fetch and check the dump;
extracts configuration and spool over the live paths (`restore_files`); only then loads the
dumps (not after an incomplete extraction); and writes `SPOOLDIR/seqno` so emgd starts with an
id above every id it has used (`restore_seqno`). The result is a checklist for the operator.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import tempfile
from pathlib import Path

from emg_borg.config import duration_seconds
from emg_borg.core import proc
from emg_borg.core.host import machine_identity
from emg_borg.core.manifest import Dump
from emg_borg.core.run import ArchivedLayout, RestoreRun
from emg_borg.core.signals import signals_raise
from emg_borg.emg import categories as category_module
from emg_borg.emg import layout as emg_layout
from emg_borg.emg import servercfg
from emg_borg.errors import ConfigError, EmgBorgError, UsageError
from emg_borg.lifecycle import tools
from emg_borg.lifecycle import extract as extraction
from emg_borg.lifecycle.archives import Archive, Repository, Selection, select
from emg_borg.lifecycle.restore_files import note_live_spool, restore_files
from emg_borg.lifecycle.restore_seqno import check_message_id, keep_seqno, message_id, write_seqno

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RestoreRequest:
    """What the operator asked for (the command line's options)."""

    selection: Selection
    categories: str = category_module.DEFAULT_SELECTION
    skip_data: bool = False
    message_id: int | None = None
    load_database: bool = False
    force_database: bool = False
    force: bool = False
    target: str = "/"
    dry_run: bool = False
    old_spool: bool = False


@dataclasses.dataclass
class RestoreResult:
    archive: str
    time: str
    age: str
    message_id: int | None
    target: str
    categories: list
    dry_run: bool
    seqno: dict
    done: list
    todo: list
    not_restored: list

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def restore(config, manager, request: RestoreRequest) -> RestoreResult:
    selected = set(category_module.parse(request.categories))
    if request.skip_data:
        selected.discard("data")
    if request.load_database or request.force_database:
        selected.add("database")
    target = Path(request.target).resolve()
    if not target.is_dir():
        raise UsageError(f"restore target {target} is not a directory")
    check_message_id(request.message_id, None, None)
    running = check_emgd(request.force, request.dry_run, target)
    repository, archive = select(request.selection)
    selected = extraction.present(archive, tuple(c for c in category_module.CATEGORIES if c in selected))
    age = check_spool_age(config, archive, "data" in selected, request.old_spool)
    run = RestoreRun(
        config=config, hook=manager.hook, repository=repository, archive=archive,
        layout=archived_layout(repository, archive), target=target, categories=selected, fetcher=lambda d: None,
        load_database=request.load_database or request.force_database, force_database=request.force_database,
        dry_run=request.dry_run,
    )
    run.fetcher = DumpFetcher(run)
    check_message_id(request.message_id, run.layout.node_id, config["seqno"]["node_digits"])
    note_emgd(run, running)
    # SIGTERM/SIGHUP become errors, so the cleanup (the decrypted dumps' directory) runs.
    with signals_raise(), run.cleanup:
        try:
            seqno, source = _restore(run, selected, request.message_id)
        except BaseException:
            # The error comes next, as one line; say what had already been done before it.
            for line in run.actions:
                logger.warning("done before the failure: %s", line)
            raise
    run.todo("start emgd; it reads the seqno file into seqno.hdb at start-up")
    return RestoreResult(
        archive=archive.name, time=archive.time.isoformat(timespec="seconds"), age=age, message_id=archive.manifest.get("message_id"),
        target=str(target), categories=list(selected), dry_run=run.dry_run, seqno={"value": seqno, "source": source},
        done=run.actions, todo=run.remaining, not_restored=run.unwritten,
    )


def _restore(run: RestoreRun, selected: tuple, given_id: int | None):
    check_machine(run)
    live_counter = run.live(run.layout.spooldir) / "seqno.hdb"
    keep_live_counter = "data" not in selected and given_id is None and live_counter.exists()
    known, known_source = message_id(run, given_id)  # read before a dump could replace the database
    if keep_live_counter:
        seqno, source = None, f"the live message id counter {live_counter} is newer than the archive"
    else:
        seqno, source = known, known_source
    if "database" in selected:
        restore_dumps(run)
    if "data" not in selected:
        note_live_spool(run)
    files = tuple(c for c in selected if c != "database")
    if files:
        restore_files(run, files)
    run_deferred(run)
    if keep_live_counter:
        keep_seqno(run, live_counter, known, known_source)
    else:
        write_seqno(run, seqno, source)
    return seqno, source


def restore_dumps(run: RestoreRun) -> None:
    """Hand each dump of the archive to the plugin that made it (which checks at once and loads
    last, through `run.later`)."""
    if not run.manifest.dumps:
        logger.warning("archive %s holds no database dump", run.archive.name)
    for dump in run.manifest.dumps:
        if not run.hook.emg_borg_restore_dump(restore=run, dump=dump):
            logger.warning("no installed plugin restores %s dumps: %s not loaded", dump.plugin, dump.path)
            run.todo(f"load {dump.path} ({dump.plugin} dump of {dump.database}) by hand, or install the emg-borg "
                     f"plugin {dump.plugin!r} and restore --categories database")


class DumpFetcher:
    """Extracts the archive's dumps once into a private temporary directory (removed when the
    restore ends) and hands out each, checked against the manifest's size and sha256."""

    def __init__(self, run: RestoreRun):
        self.run, self.scratch = run, None

    def __call__(self, dump: Dump) -> Path:
        run = self.run
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="emg-borg-dump-"))
            run.cleanup.callback(shutil.rmtree, self.scratch, True)
            extracted = extraction.extract(run.repository, run.archive, ("database",), self.scratch)
            if not extracted.complete:
                raise EmgBorgError(f"archive {run.archive.name}: the dumps could not be extracted: "
                                   f"{extraction.incomplete(extracted, run.repository)}; not loading them")
        path = self.scratch / dump.path
        problem = dump.problem(path)
        if problem:
            raise EmgBorgError(f"archive {run.archive.name}: {problem}; not loading it")
        return path


def run_deferred(run: RestoreRun) -> None:
    """The database loads, last: not after an incomplete extraction (the operator fixes that
    first, and the database is still the one that goes with the old files)."""
    if run.unwritten:
        for what, _ in run.deferred:
            run.todo(f"not done because the files are incomplete: {what}; once they are restored, run: emg-borg "
                     f"restore --archive {run.archive.name} --categories database --database --force-database")
        return
    for _, step in run.deferred:
        step()


def human_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def check_spool_age(config, archive: Archive, restoring_spool: bool, old_spool: bool) -> str:
    """Say how old the archive is; refuse an old spool unless the operator means it. Queues are
    short-lived and open delivery reports live up to days (the vendor note): an old spool holds
    messages that were sent since and would be sent again."""
    seconds = (datetime.datetime.now().astimezone() - archive.time).total_seconds()
    age = human_age(max(0.0, seconds))
    logger.info("archive %s is %s old", archive.name, age)
    limit = duration_seconds(config["restore"]["max_spool_age"])
    if restoring_spool and seconds > limit and not old_spool:
        raise EmgBorgError(
            f"archive {archive.name} is {age} old, more than [restore] max_spool_age "
            f"({config['restore']['max_spool_age']}): its spool holds queued messages and delivery reports that "
            f"were handled since and would be sent or matched again. Restore with --skip-data (configuration, "
            f"database and message id, keeping the live spool), or pass --old-spool if you mean it"
        )
    return age


def check_emgd(force: bool, dry_run: bool, target: Path) -> list[int]:
    """The ids of emgd processes running on the target; refuses (raises) when there are any,
    unless forced."""
    running = proc.emgd_pids(within=target)
    if running and not force and not dry_run:
        raise EmgBorgError(
            f"emgd is running (pid {', '.join(map(str, running))}); restoring under it would mix its open spool files "
            f"with the archived ones and it would not read the restored seqno. Stop it (emgd -stop) and run restore "
            f"again, or pass --force"
        )
    return running


def note_emgd(run: RestoreRun, running: list[int]) -> None:
    if not running:
        return
    pids = ", ".join(map(str, running))
    if run.dry_run:
        logger.warning("emgd is running (pid %s): a real restore would refuse until it is stopped", pids)
        run.todo("stop emgd (emgd -stop) before the real restore")
    else:
        logger.warning("emgd is running (pid %s); restoring anyway because of --force", pids)
        run.todo("restart emgd: it ran during the restore and has not read the restored files")


def archived_layout(repository: Repository, archive: Archive) -> ArchivedLayout:
    """The archived installation: paths from the manifest, the DB profile from its server.cfg."""
    manifest = archive.manifest
    db = None
    cfg_path = manifest.get("server_cfg")
    if cfg_path:
        text = tools.of(repository).read_member(repository, archive, cfg_path.lstrip("/"))
        if text is None:
            logger.warning("archive %s has no %s", archive.name, cfg_path)
        else:
            try:
                # The layout module's own reading of a DB profile, applied to the archived server.cfg.
                db = emg_layout.db_profile(servercfg.parse(text.decode("utf-8", errors="replace"), Path(cfg_path)))
            except ConfigError as error:
                logger.warning("no database profile from the archived server.cfg (%s); using the configuration only",
                               error)
    return ArchivedLayout(
        emgdir=manifest.get("emgdir") or "", server_cfg=cfg_path or "", spooldir=manifest["spooldir"],
        node_id=manifest.get("node_id"), db=db,
    )


def check_machine(run: RestoreRun) -> None:
    """Warn when the archive comes from other hardware: EMG licenses are tied to the machine."""
    archived, here = run.manifest.get("machine") or {}, machine_identity()
    keys = [k for k in ("machine_id", "product_uuid") if archived.get(k) and here.get(k)] or ["hostname"]
    differing = [k for k in keys if archived.get(k) != here.get(k)]
    if not differing:
        logger.info("this is the machine the archive was made on (%s match)", ", ".join(keys))
        run.todo("check that emgd accepts the restored license file when it starts")
        return
    detail = ", ".join(f"{k} {archived.get(k)} there, {here.get(k)} here" for k in differing)
    logger.warning("the archive was made on another machine (%s): a new EMG license key may be needed", detail)
    run.todo("check EMG's license: the archive comes from other hardware, and EMG licenses are tied to the "
             "machine; request a new license key from EMG support unless a standby license covers this one")
