"""Built-in plugin: the EMG database, the consistency point's lock, the message id and the dump.

One PyMySQL connection is held for the whole consistency point. With `[mysql] lock` other than
`none` it takes `FLUSH TABLES WITH READ LOCK` (bounded by `lock_timeout`: a watchdog on a second
connection kills the statement if it waits longer), so writers stop while the spool snapshot is
taken, the message id and binlog position are read, and mysqldump's `--single-transaction`
snapshot begins. The lock is then released; the dump goes on without blocking anybody. The window
is measured and lands in the manifest as `freeze_window_ms`.

How the dump's transaction start is observed: mysqldump opens a new connection (its thread id is
above every id seen before it started) as the dump user and runs `START TRANSACTION WITH
CONSISTENT SNAPSHOT`; the statements it sends next show in `information_schema.PROCESSLIST`, and
its transaction in `information_schema.INNODB_TRX` (see `_DumpWatch`). A small dump may even end
inside the window; its exit says the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import shutil
import threading
import time
from pathlib import Path

from emg_borg.config import SCHEMA
from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql
from emg_borg.hookspecs import hookimpl
from emg_borg.lifecycle.run import sha256_file
from emg_borg.plugins.seqno import node_range

logger = logging.getLogger(__name__)
NAME = "mysql"
DEFAULT_QUERY = SCHEMA["seqno"]["query"].default


def enabled(config, layout) -> bool:
    setting = config["mysql"]["enabled"]
    if setting is not None:
        return setting
    return layout is not None and layout.db is not None and layout.db.is_mysql


def connection_settings(config, layout) -> mysql.Connection:
    """Credentials from server.cfg's DB profile, overridden by `[mysql]`."""
    section = config["mysql"]
    db = layout.db if layout is not None else None
    password = db.password if db else None
    if section["password_file"]:
        path = Path(section["password_file"])
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise config.error("mysql", "password_file", f"cannot read {path}: {error.strerror}")
        password = lines[0] if lines else ""
    database = section["database"] or (db.database if db else None)
    if not database:
        raise config.error("mysql", "database", "no database name: server.cfg has no DBPROFILE with DBNAME; set it here")
    return mysql.Connection(
        host=section["host"] or (db.host if db else None),
        port=section["port"] or (db.port if db else None),
        socket=section["socket"],
        user=section["user"] or (db.user if db else None),
        database=database,
        password=password,
    )


def _state(run) -> dict:
    return run.plugin_state.setdefault(NAME, {})


def _session(run):
    """The connection held for the consistency point, opened on first use."""
    state = _state(run)
    if "connection" not in state:
        state["settings"] = connection_settings(run.config, run.layout)
        state["connection"] = mysql.connect(state["settings"])
    return state["connection"]


def _query_one(connection, sql, args=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchone()


@contextlib.contextmanager
def _global_read_lock(run):
    section = run.config["mysql"]
    mode, timeout = section["lock"], float(section["lock_timeout"])
    connection = _session(run)
    settings = _state(run)["settings"]
    try:
        if mode == "none":
            run.lock_state = "none"
            yield
            return
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = %s", (max(1, math.ceil(timeout)),))
        thread_id = connection.thread_id()
        done = threading.Event()
        killed = []

        def watchdog():
            # FLUSH TABLES WITH READ LOCK waits behind long queries and blocks every writer while
            # it waits, so it must never wait longer than lock_timeout.
            if done.wait(timeout):
                return
            with contextlib.suppress(Exception):
                guard = mysql.connect(settings, connect_timeout=5)
                with guard.cursor() as cursor:
                    cursor.execute(f"KILL QUERY {int(thread_id)}")
                killed.append(True)
                guard.close()

        guard_thread = threading.Thread(target=watchdog, daemon=True)
        guard_thread.start()
        logger.info("taking a global read lock on %s (at most %g s)", settings.describe(), timeout)
        try:
            with connection.cursor() as cursor:
                cursor.execute("FLUSH TABLES WITH READ LOCK")
        except Exception as error:  # noqa: BLE001 - PyMySQL errors vary; all mean "no lock"
            done.set()
            timed_out = killed or getattr(error, "args", (None,))[0] == 1205  # ER_LOCK_WAIT_TIMEOUT
            reason = f"waited {timeout:g} s" if timed_out else str(error)
            if mode == "best-effort":
                logger.warning("no global read lock (%s); going on unlocked: the dump and the spool may differ", reason)
                run.lock_state = "failed, unlocked (best-effort)"
                yield
                return
            raise EmgBorgError(
                f"cannot take a global read lock on {settings.describe()} ({reason}); long-running queries may be "
                f"in the way. Set [mysql] lock = \"best-effort\" to go on without it"
            )
        done.set()
        acquired = time.monotonic()
        run.lock_state = "held"
        try:
            # Under the lock the binlog position cannot move: it is the dump's position too.
            # Unlocked it would describe neither the dump nor the snapshot, so it is not recorded.
            run.binlog = _binlog_position(connection)
            yield
        finally:
            with contextlib.suppress(Exception):
                with connection.cursor() as cursor:
                    cursor.execute("UNLOCK TABLES")
            run.freeze_window_ms = round((time.monotonic() - acquired) * 1000, 3)
            logger.info("global read lock released after %.1f ms", run.freeze_window_ms)
    except BaseException:
        _close(run)
        raise


def _binlog_position(connection) -> dict | None:
    try:
        status = _query_one(connection, "SHOW MASTER STATUS")
    except Exception:  # noqa: BLE001 - no binlog privilege: no coordinates, not a failure
        return None
    return {"file": status[0], "position": int(status[1])} if status else None


def _close(run):
    connection = _state(run).pop("connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()


def _has_reload(connection) -> bool:
    """Whether a global grant of the current user includes RELOAD (or ALL PRIVILEGES). A role
    granted to the user may carry it too; then the lock itself will tell, so say yes."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants = [row[0] for row in cursor.fetchall()]
    if any(not re.search(r" ON \S+ TO ", grant, re.IGNORECASE) for grant in grants):
        return True  # a role grant
    for grant in grants:
        match = re.match(r"GRANT (.+?) ON \*\.\* TO ", grant, re.IGNORECASE)
        privileges = {p.strip().upper() for p in match.group(1).split(",")} if match else set()
        if privileges & {"RELOAD", "ALL PRIVILEGES", "ALL"}:
            return True
    return False


@hookimpl
def emg_borg_preflight(run):
    """Connect as the backup will, check the global read lock's privilege, run the [seqno]
    query and find mysqldump; take no lock."""
    if not enabled(run.config, run.layout):
        return None
    problems = []
    settings = connection_settings(run.config, run.layout)
    if "database" in run.categories and not shutil.which(run.config["mysql"]["mysqldump"]):
        problems.append(f"{run.config['mysql']['mysqldump']}: command not found (install the MariaDB/MySQL client)")
    try:
        connection = mysql.connect(settings)
    except EmgBorgError as error:
        return problems + [str(error)]
    try:
        if run.config["mysql"]["lock"] != "none" and not _has_reload(connection):
            problems.append(f"{settings.describe()}: the user lacks the RELOAD privilege needed for the global read lock")
        if not run.config["seqno"]["command"]:
            query, args, _, _ = _message_id_query(run.config, run.layout.node_id)
            try:
                _query_one(connection, query, args)
            except Exception as error:  # noqa: BLE001
                problems.append(f"[seqno] query {query!r} failed: {error}")
    finally:
        connection.close()
    return problems


@hookimpl
def emg_borg_hold_consistency_point(run):
    if not enabled(run.config, run.layout):
        return None
    return _global_read_lock(run)


def _message_id_query(config, node_id):
    """The [seqno] query, limited to this node's ids when NODEID is set: (query, args, low, high)."""
    section = config["seqno"]
    query, args = section["query"], None
    low = high = None
    if node_id is not None:
        low, high = node_range(node_id, section["node_digits"])
        if query == DEFAULT_QUERY:
            query = DEFAULT_QUERY + " WHERE id BETWEEN %(node_min)s AND %(node_max)s"
    if "%(" in query:
        args = {"node_min": low if low is not None else 0, "node_max": high if high is not None else 2**63 - 1}
    return query, args, low, high


@hookimpl
def emg_borg_capture_message_id(run):
    if not enabled(run.config, run.layout):
        return None
    query, args, low, high = _message_id_query(run.config, run.layout.node_id)
    connection = _session(run)
    try:
        row = _query_one(connection, query, args)
    except Exception as error:  # noqa: BLE001
        raise EmgBorgError(f"[seqno] query {query!r} failed: {error}")
    value = row[0] if row else None
    if value is None:
        # Never guess: a 0 written back at restore would make emgd reuse ids. Without an id the
        # archive has no seqno file and emgd keeps the restored seqno.hdb.
        logger.warning("[seqno] query %r returned no id (empty table?); no message id is captured", query)
        return None
    value = int(value)
    if low is not None and not low <= value <= high:
        raise EmgBorgError(f"message id {value} is outside node {run.layout.node_id}'s range {low}..{high}")
    run.message_id_source = "query"
    logger.info("message id %d (from [seqno] query)", value)
    return value


# Statements mysqldump --single-transaction sends only after its START TRANSACTION WITH
# CONSISTENT SNAPSHOT has returned: seeing one of them on the dump's connection proves its
# snapshot has begun.
_AFTER_SNAPSHOT = ("UNLOCK TABLES", "SHOW MASTER STATUS", "SHOW BINLOG STATUS", "SET OPTIMIZER_SWITCH",
                   "SELECT LOGFILE_GROUP_NAME", "SELECT DISTINCT TABLESPACE_NAME", "SAVEPOINT", "SHOW FULL TABLES",
                   "SHOW TABLES", "SHOW CREATE", "SELECT /*!40001 SQL_NO_CACHE */", "ROLLBACK TO SAVEPOINT")
# InnoDB refreshes information_schema.INNODB_TRX at most every 100 ms, so it is only the slower
# second witness.
_TRX_CACHE_SECONDS = 0.11


class _DumpWatch:
    """Decides when the dump's transaction snapshot has begun, from the server's point of view."""

    def __init__(self, connection, user):
        self.connection, self.user = connection, user
        self.watermark = _query_one(connection, "SELECT MAX(ID) FROM information_schema.PROCESSLIST")[0] or 0
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
            row = _query_one(
                self.connection,
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p "
                "ON p.ID = t.trx_mysql_thread_id WHERE t.trx_mysql_thread_id > %s AND (%s IS NULL OR p.USER = %s)",
                (self.watermark, self.user, self.user),
            )
            return bool(row and row[0])
        return False


@hookimpl
def emg_borg_begin_dumps(run):
    if not enabled(run.config, run.layout) or "database" not in run.categories:
        return None
    connection = _session(run)
    settings = _state(run)["settings"]
    watch = _DumpWatch(connection, settings.user)
    run.runtime.dumps.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = run.runtime.dumps / f"{settings.database}.sql"
    stack = contextlib.ExitStack()
    option, fd = stack.enter_context(mysql.defaults_pipe(settings))
    try:
        argv = mysql.mysqldump_argv(
            run.config["mysql"]["mysqldump"], option, settings.database, tuple(run.config["mysql"]["dump_options"])
        )
        logger.info("dumping database %s with mysqldump --single-transaction", settings.database)
        dump = mysql.Dump(argv, path, (fd,), settings.database)
    finally:
        stack.close()
    _state(run)["dump"] = dump
    deadline = time.monotonic() + float(run.config["mysql"]["lock_timeout"])
    while True:
        if dump.poll() is not None or watch.started():
            break
        if time.monotonic() > deadline:
            dump.abort()
            raise EmgBorgError("mysqldump did not begin its transaction within [mysql] lock_timeout")
        time.sleep(0.002)


@hookimpl
def emg_borg_finish_dumps(run):
    dump = _state(run).pop("dump", None)
    _close(run)
    if dump is None:
        return
    last = [time.monotonic()]

    def progress(size):
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            logger.info("mysqldump %s: %.1f MiB written", dump.database, size / 2**20)

    try:
        dump.finish(progress)
    except BaseException:
        dump.abort()
        raise
    size = dump.path.stat().st_size
    result = {
        "database": dump.database,
        "dump": f"emg-borg/mysql/{dump.path.name}",
        "bytes": size,
        "sha256": sha256_file(dump.path),
    }
    if run.binlog:
        result.update(binlog_file=run.binlog["file"], binlog_position=run.binlog["position"])
    run.dump_results.append(result)
    logger.info("dump of %s complete: %d bytes", dump.database, size)


@hookimpl
def emg_borg_manifest_fields(run):
    if not run.dump_results:
        return None
    return {"mysql": run.dump_results[0], "databases": run.dump_results}


@hookimpl
def emg_borg_release(run):
    # The dump and connection live in the before-backup process only; on failure, stop them.
    dump = _state(run).pop("dump", None)
    if dump is not None:
        dump.abort()
    _close(run)


# Restore: the live message id, and loading the archived dump.


def quote_name(name: str) -> str:
    """A MySQL identifier in backquotes, safe for any database name."""
    return "`" + name.replace("`", "``") + "`"


def server_connection(settings: mysql.Connection):
    """A connection to the server with no database selected (the database may not exist yet)."""
    return mysql.connect(dataclasses.replace(settings, database=""))


def table_count(connection, database: str) -> int | None:
    """How many tables `database` has, or None when it does not exist."""
    if not _query_one(connection, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))[0]:
        return None
    return int(_query_one(connection, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))[0])


def recreate_database(connection, database: str) -> None:
    """Drop `database` and create it again, empty, with its character set and collation, so that
    a dump loaded into it leaves no table of the old content behind."""
    charset, collation = _query_one(
        connection, "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME = %s", (database,))
    logger.warning("dropping database %s (--force-database) to load the archived dump into it", database)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE {quote_name(database)}")
        cursor.execute(f"CREATE DATABASE {quote_name(database)} CHARACTER SET {charset} COLLATE {collation}")


def load_into(config, settings: mysql.Connection, dump_path, connection) -> int:
    """Create `settings.database` if missing, load the dump into it, and return its table count."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote_name(settings.database)}")
    logger.info("loading %s into %s", Path(dump_path).name, settings.describe())
    mysql.load_dump(config["mysql"]["mysql"], settings, dump_path, settings.database)
    return table_count(connection, settings.database) or 0


@hookimpl
def emg_borg_live_message_id(restore):
    if not enabled(restore.config, restore.layout):
        return None
    settings = connection_settings(restore.config, restore.layout)
    try:
        connection = server_connection(settings)
    except EmgBorgError as error:
        logger.warning("cannot read the live message id: %s", error)
        restore.todo("the live database could not be read: if it holds message ids above the one written to seqno, "
                     "write a higher id into SPOOLDIR/seqno before starting emgd")
        return None
    try:
        if not table_count(connection, settings.database):
            logger.info("live database %s does not exist or is empty: no live message id", settings.database)
            return None
        connection.select_db(settings.database)
        query, args, _, _ = _message_id_query(restore.config, restore.layout.node_id)
        try:
            row = _query_one(connection, query, args)
        except Exception as error:  # noqa: BLE001 - a missing table is as good as no id
            logger.warning("cannot read the live message id: [seqno] query %r failed: %s", query, error)
            return None
        return int(row[0]) if row and row[0] is not None else None
    finally:
        connection.close()


@hookimpl
def emg_borg_restore_database(restore):
    if not enabled(restore.config, restore.layout) or not restore.manifest.get("mysql"):
        return None
    settings = connection_settings(restore.config, restore.layout)
    try:
        connection = server_connection(settings)
    except EmgBorgError as error:
        if restore.load_database:
            raise
        logger.warning("database not restored: %s", error)
        restore.todo(f"load the database dump once MySQL runs: emg-borg restore --archive {restore.archive.name} "
                     f"--categories database --database")
        return True
    try:
        tables = table_count(connection, settings.database)
        if tables:
            if not restore.load_database:
                restore.done(f"left the database {settings.database} as it is: it has {tables} tables "
                             f"(--database --force-database replaces them with the archived dump)")
                return True
            if not restore.force_database:
                raise EmgBorgError(
                    f"database {settings.database} on {settings.describe()} has {tables} tables; refusing to load the "
                    f"archived dump over it without --force-database"
                )
        if restore.dry_run:
            restore.done(f"would load the dump into {settings.describe()}")
            return True
        dump = restore.fetch_dump()  # extracted and checked against the manifest before anything is written
    finally:
        connection.close()

    def load():
        # Last, after the files: a failed extraction must not leave a replaced database behind.
        connection = server_connection(settings)
        try:
            if tables:
                recreate_database(connection, settings.database)
                restore.done(f"dropped the database {settings.database} ({tables} tables) and created it empty "
                             f"(--force-database)")
            loaded = load_into(restore.config, settings, dump, connection)
        finally:
            connection.close()
        restore.done(f"loaded the dump of {restore.manifest['mysql'].get('database')} into {settings.describe()} "
                     f"({loaded} tables)")

    restore.later(f"load the dump into {settings.describe()}", load)
    return True
