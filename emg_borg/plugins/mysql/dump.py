"""The dump: `mysqldump --single-transaction`, begun inside the consistency point.

How the dump's transaction start is observed: mysqldump opens a new connection (its thread id is
above every id seen before it started) as the dump user and runs `START TRANSACTION WITH
CONSISTENT SNAPSHOT`; the statements it sends next show in `information_schema.PROCESSLIST`, and
its transaction in `information_schema.INNODB_TRX` (see `DumpWatch`). A small dump may even end
inside the window; its exit says the same.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

from emg_borg.core.manifest import Dump
from emg_borg.core.progress import PROGRESS, Throttle
from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql.lock import session
from emg_borg.plugins.mysql.settings import NAME, query_one

logger = logging.getLogger(__name__)

# Statements mysqldump --single-transaction sends only after its START TRANSACTION WITH
# CONSISTENT SNAPSHOT has returned: seeing one of them on the dump's connection proves its
# snapshot has begun.
_AFTER_SNAPSHOT = ("UNLOCK TABLES", "SHOW MASTER STATUS", "SHOW BINLOG STATUS", "SET OPTIMIZER_SWITCH",
                   "SELECT LOGFILE_GROUP_NAME", "SELECT DISTINCT TABLESPACE_NAME", "SAVEPOINT", "SHOW FULL TABLES",
                   "SHOW TABLES", "SHOW CREATE", "SELECT /*!40001 SQL_NO_CACHE */", "ROLLBACK TO SAVEPOINT")
# InnoDB refreshes information_schema.INNODB_TRX at most every 100 ms, so it is only the slower
# second witness.
_TRX_CACHE_SECONDS = 0.11


class DumpWatch:
    """Decides when the dump's transaction snapshot has begun, from the server's point of view."""

    def __init__(self, connection, user):
        self.connection, self.user = connection, user
        self.watermark = query_one(connection, "SELECT MAX(ID) FROM information_schema.PROCESSLIST")[0] or 0
        self.next_trx_check = time.monotonic() + _TRX_CACHE_SECONDS

    def started(self) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT COMMAND, INFO FROM information_schema.PROCESSLIST WHERE ID > %s AND (%s IS NULL OR USER = %s)",
                (self.watermark, self.user, self.user),
            )
            for command, info in cursor.fetchall():
                if command == "Init DB" or (info and info.lstrip().upper().startswith(_AFTER_SNAPSHOT)):
                    return True
        if time.monotonic() >= self.next_trx_check:
            self.next_trx_check = time.monotonic() + _TRX_CACHE_SECONDS
            row = query_one(
                self.connection,
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p "
                "ON p.ID = t.trx_mysql_thread_id WHERE t.trx_mysql_thread_id > %s AND (%s IS NULL OR p.USER = %s)",
                (self.watermark, self.user, self.user),
            )
            return bool(row and row[0])
        return False


def begin(run) -> None:
    """Start mysqldump and return once its transaction snapshot has begun (inside the window)."""
    connection = session(run)
    settings = run.state(NAME)["settings"]
    watch = DumpWatch(connection, settings.user)
    filename = f"{settings.database}.sql"
    with mysql.defaults_pipe(settings) as (option, fd):
        argv = mysql.mysqldump_argv(
            run.config["mysql"]["mysqldump"], option, settings.database, tuple(run.config["mysql"]["dump_options"])
        )
        logger.info("dumping database %s with mysqldump --single-transaction", settings.database)
        if run.stream_dumps:
            dump = run.stream_dump(NAME, filename, label=f"mysqldump of {settings.database}", argv=argv,
                                   footer=mysql.Dump.FOOTER.decode(), pass_fds=(fd,))
            archive_path = dump.archive_path
        else:
            path, archive_path = run.dump_path(NAME, filename)
            dump = mysql.Dump(argv, path, (fd,), settings.database)
    run.state(NAME)["dump"] = (dump, archive_path, settings.database)
    # Waiting for the dump's start is part of the freeze: bounded by lock_timeout and by what is
    # left of max_freeze.
    deadline = min(time.monotonic() + float(run.config["mysql"]["lock_timeout"]), run.freeze_deadline or math.inf)
    checks = 0
    while not (dump.poll() is not None or watch.started()
               or (checks % 10 == 9 and not run.stream_dumps and dump.wrote_footer())):
        checks += 1
        if time.monotonic() > deadline:
            dump.abort()
            raise EmgBorgError("mysqldump did not begin its transaction within [mysql] lock_timeout")
        time.sleep(0.002)
    if run.stream_dumps and (failure := dump.failure()):
        raise CommandError(failure)


def finish(run) -> Dump | None:
    """Wait for the dump, check its completion line, and describe it for the manifest."""
    running = run.state(NAME).pop("dump", None)
    if running is None:
        return None
    dump, archive_path, database = running
    binlog = run.state(NAME).get("binlog")
    details = {"binlog_file": binlog["file"], "binlog_position": binlog["position"]} if binlog else {}
    if run.stream_dumps:
        if failure := dump.failure():  # it ended with an error already: no need to wait for borg
            raise CommandError(failure)
        # The streamer checks its exit and completion line and counts it on its way into borg.
        logger.info("dump of %s streams into borg", database)
        return dump.dump(NAME, database, format="sql", **details)
    throttle = Throttle()

    def progress(size):
        if throttle.due():
            logger.log(PROGRESS, "mysqldump %s: %.1f MiB written", dump.database, size / 2**20)

    try:
        dump.finish(progress)
    except BaseException:
        dump.abort()
        raise
    result = Dump.of_file(NAME, dump.database, dump.path, archive_path, format="sql", **details)
    logger.info("dump of %s complete: %d bytes", dump.database, result.bytes)
    return result


def abort(run) -> None:
    """Stop a dump still running (the run failed before it finished)."""
    running = run.state(NAME).pop("dump", None)
    if running is not None:
        with contextlib.suppress(Exception):
            running[0].abort()
