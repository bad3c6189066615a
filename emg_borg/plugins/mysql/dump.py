"""The dump: `mysqldump --single-transaction`, begun inside the consistency point.

How the dump's transaction start is observed: mysqldump connects through a relay started before
the freeze, which tells its server thread id; the statements that session sends after `START
TRANSACTION WITH CONSISTENT SNAPSHOT` show in `information_schema.PROCESSLIST`, and its
transaction in `information_schema.INNODB_TRX` (see `dump_session`). A small dump may even end
inside the window; its exit says the same. What proved it lands in the manifest
(`dump_snapshot`), and where the binary log is on, the dump's own snapshot position, checked
against the position read in the freeze.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time

from emg_borg.core.manifest import Dump
from emg_borg.core.proc import kill_group_if, start_time
from emg_borg.core.progress import PROGRESS, Throttle
from emg_borg.core.dump_buffer import HEAD as HEAD_BYTES
from emg_borg.core.streamer import head_problem
from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql.dump_session import DumpWatch, Relay, has_binlog_snapshot, snapshot_check
from emg_borg.plugins.mysql.lock import session
from emg_borg.plugins.mysql import replica
from emg_borg.plugins.mysql.settings import NAME, REPLICA

logger = logging.getLogger(__name__)

DUMP_PROCESS = "dump-process"


def prepare(run) -> None:
    """Before the freeze: start the relay mysqldump will connect through (an interpreter's start
    must not land in the freeze), and learn whether the server tells a snapshot's binlog position.
    With a replica to dump: bring it up to date and stop its replication (replica.py)."""
    state = run.state(NAME)
    connection = session(run)
    section = run.config["mysql"]
    # Until mysqldump connects; a relay whose before-backup is gone ends sooner by itself.
    seconds = float(section["lock_timeout"]) * 2 + float(section["max_freeze"]) + 30
    settings = state["settings"]
    if state.get("dump_from") == "replica":
        seconds += float(run.config[REPLICA]["max_wait"])
        settings = replica.prepare(run, connection)
    state["binlog_snapshot"] = state.get("dump_from") != "replica" and has_binlog_snapshot(connection)
    state["relay"] = Relay(run.runtime.staging, settings, seconds, float(section["stall_timeout"]))
    if state.get("dump_from") == "replica":
        replica.pause(run)


def begin(run) -> None:
    """Inside the freeze: start mysqldump and return once its transaction snapshot has begun;
    with a replica to dump, only read the primary's GTID position (the dump begins after)."""
    state = run.state(NAME)
    if state.get("dump_from") == "replica":
        state["replica_target"] = replica.gtid_position(session(run), "gtid_binlog_pos")
        return
    # The position read in the freeze (only under the lock), to be found in the dump's head.
    binlog = state.get("binlog") if state.get("binlog_snapshot") else None
    check = state["head_check"] = snapshot_check(binlog) if binlog else None
    # Waiting for the dump's start is part of the freeze: bounded by lock_timeout and by what is
    # left of max_freeze.
    deadline = min(time.monotonic() + float(run.config["mysql"]["lock_timeout"]), run.freeze_deadline or math.inf)
    launch(run, session(run), state["settings"], ("--master-data=2",) if check else (), check, deadline)


def begin_on_replica(run) -> None:
    """After the freeze: run the replica up to the consistency point's position, begin the dump
    there, and resume replication at once."""
    state = run.state(NAME)
    target, connection, settings = state["replica_target"], state["replica_connection"], state["replica_settings"]
    name = settings.describe()
    run.step = "bringing the replica to the consistency point"
    with replica.talking_to(name, run.step):
        replica.reach(connection, target, float(run.config[REPLICA]["max_wait"]), name)
        replica.check_message_id(run, connection, name)
    run.step = "starting the dump on the replica"
    with replica.talking_to(name, run.step):
        launch(run, connection, settings, (), None, time.monotonic() + float(run.config["mysql"]["lock_timeout"]))
        replica.check_at(connection, target, name)
    replica.release(run)
    if run.stream_dumps:
        state["dump"][0].carry()


def launch(run, connection, settings, options: tuple, check, deadline: float) -> None:
    """Start mysqldump on `settings`' server; return once its snapshot has begun (by `deadline`)."""
    state = run.state(NAME)
    relay = state["relay"]
    watch = DumpWatch(connection, relay)
    filename = f"{settings.database}.sql"
    with mysql.defaults_pipe(settings) as (option, fd):
        argv = mysql.mysqldump_argv(run.config["mysql"]["mysqldump"], option, settings.database,
                                    (*options, *run.config["mysql"]["dump_options"]), relay.mysqldump_options())
        logger.info("dumping database %s with mysqldump --single-transaction", settings.database)
        if run.stream_dumps:
            dump = run.stream_dump(NAME, filename, label=f"mysqldump of {settings.database}", argv=argv,
                                   footer=mysql.Dump.FOOTER.decode(), pass_fds=(fd, *relay.pass_fds), head_check=check)
            archive_path = dump.archive_path
        else:
            path, archive_path = run.dump_path(NAME, filename)
            dump = mysql.Dump(argv, path, (fd, *relay.pass_fds), settings.database)
            # If this process is killed, the next release stops it (a streamed dump's streamer does).
            state["dump_entry"] = run.ledger.add(NAME, DUMP_PROCESS, released_by="plugin", pgid=dump.process.pid,
                                                 started=start_time(dump.process.pid))
    state["dump"] = (dump, archive_path, settings.database)
    checks = 0
    while (proof := _started(dump, watch, staged_file=not run.stream_dumps and checks % 10 == 9)) is None:
        checks += 1
        if time.monotonic() > deadline:
            dump.abort()
            raise EmgBorgError(f"mysqldump on {settings.describe()} did not begin its transaction within [mysql] "
                               f"lock_timeout ({run.config['mysql']['lock_timeout']:g} s)")
        time.sleep(0.002)
    if run.stream_dumps and (failure := dump.failure()):
        raise CommandError(failure)
    state["dump_snapshot"] = {"session": relay.session(), "proof": proof}


def _started(dump, watch: DumpWatch, staged_file: bool) -> str | None:
    """What proves that the dump's snapshot has begun, or None. `staged_file`: look at the file too
    (a small dump can be complete before its process has exited)."""
    if dump.poll() is not None:
        return "the dump ended inside the freeze"
    if staged_file and dump.wrote_footer():
        return "the dump was complete inside the freeze"
    return watch.started()


def finish(run) -> Dump | None:
    """Wait for the dump, check its completion line, and describe it for the manifest."""
    state = run.state(NAME)
    if state.get("replica_target"):
        begin_on_replica(run)
    running = state.pop("dump", None)
    if running is None:
        return None
    dump, archive_path, database = running
    binlog, check = state.get("binlog"), state.get("head_check")
    details = {"binlog_file": binlog["file"], "binlog_position": binlog["position"]} if binlog else {}
    details["dump_snapshot"] = dict(state.get("dump_snapshot") or {})
    details.update(replica.dump_source(run))
    if check:
        # The dump's own position: its head must name the freeze's (checked by the streamer on
        # the way into borg, or below in the staged file), else the run fails.
        details["dump_snapshot"].update(binlog_file=binlog["file"], binlog_position=binlog["position"])
    if run.stream_dumps:
        if failure := dump.failure():  # it ended with an error already: no need to wait for borg
            raise CommandError(failure)
        # The streamer checks its exit and completion line and counts it on its way into borg.
        # The relay goes on carrying mysqldump's connection, and ends with it.
        state.pop("relay").detach()
        logger.info("dump of %s streams into borg", database)
        return dump.dump(NAME, database, format="sql", **details)
    throttle = Throttle()

    def progress(size):
        if throttle.due():
            logger.log(PROGRESS, "mysqldump %s: %.1f MiB written", dump.database, size / 2**20)

    try:
        dump.finish(progress)
    except CommandError as error:
        dump.abort()
        stall = state["relay"].stalled() if "relay" in state else None
        if stall is None:
            raise
        raise CommandError(f"mysqldump of {dump.database} stopped: {dump_server(state)} passed no byte for "
                           f"{stall:g} s ([mysql] stall_timeout)") from error
    except BaseException:
        dump.abort()
        raise
    finally:
        forget_dump_process(run)
        close_relay(run, wait=5)
    with open(dump.path, "rb") as staged:
        if problem := head_problem(staged.read(HEAD_BYTES), check):
            raise EmgBorgError(problem)
    result = Dump.of_file(NAME, dump.database, dump.path, archive_path, format="sql", **details)
    logger.info("dump of %s complete: %d bytes", dump.database, result.bytes)
    return result


def dump_server(state) -> str:
    settings = state.get("replica_settings") if state.get("dump_from") == "replica" else state.get("settings")
    return f"the server {settings.describe()}" if settings is not None else "the server"


def abort(run) -> None:
    """Stop a dump still running (the run failed before it finished)."""
    running = run.state(NAME).pop("dump", None)
    if running is not None:
        with contextlib.suppress(Exception):
            running[0].abort()
    forget_dump_process(run)
    close_relay(run)
    replica.release(run)


def forget_dump_process(run) -> None:
    entry = run.state(NAME).pop("dump_entry", None)
    if entry is not None:
        run.ledger.remove(entry)


def stop_left_dumps(run) -> None:
    """Stop the staged mysqldump of a run whose before-backup was killed (from the ledger)."""
    for entry in run.ledger.of(NAME, DUMP_PROCESS):
        kill_group_if(entry["pgid"], entry.get("started"), signal.SIGKILL)
        run.ledger.remove(entry)


def close_relay(run, wait: float = 0) -> None:
    relay = run.state(NAME).pop("relay", None)
    if relay is not None:
        relay.close(wait)
