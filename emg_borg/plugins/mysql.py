"""Built-in plugin: the EMG database, the consistency point's lock, the message id and the dump.

One PyMySQL connection is held for the whole consistency point. With `[mysql] lock` other than
`none` it takes `FLUSH TABLES WITH READ LOCK` (bounded by `lock_timeout`: a watchdog on a second
connection kills the statement if it waits longer), so writers stop while the spool snapshot is
taken, the message id and binlog position are read, and mysqldump's `--single-transaction`
snapshot begins. The lock is then released; the dump goes on without blocking anybody. The window
is measured and lands in the manifest as `freeze_window_ms`.

How the dump's transaction start is observed: mysqldump opens a new connection (its thread id is
above every id seen before it started) as the dump user and runs `START TRANSACTION WITH
CONSISTENT SNAPSHOT`, which shows in `information_schema.INNODB_TRX`. A small dump may even end
inside the window; its exit says the same.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from pathlib import Path

from emg_borg.errors import ConfigError, EmgBorgError
from emg_borg.external import mysql
from emg_borg.hookspecs import hookimpl
from emg_borg.plugins.seqno import node_range

logger = logging.getLogger(__name__)
NAME = "mysql"
DEFAULT_QUERY = "SELECT MAX(id) FROM routelog"


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
            password = path.read_text().splitlines()[0] if path.read_text() else ""
        except OSError as error:
            raise ConfigError(f"cannot read password_file {path}: {error.strerror}", config.path, None, "mysql.password_file")
    database = section["database"] or (db.database if db else None)
    if not database:
        raise ConfigError(
            "no database name: server.cfg has no DBPROFILE with DBNAME; set [mysql] database", config.path, None,
            "mysql.database",
        )
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
            reason = f"waited {timeout:g} s" if killed else str(error)
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


def _close(run):
    connection = _state(run).pop("connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()


@hookimpl
def emg_borg_hold_consistency_point(run):
    if not enabled(run.config, run.layout):
        return None
    return _global_read_lock(run)


@hookimpl
def emg_borg_capture_message_id(run):
    if not enabled(run.config, run.layout):
        return None
    section = run.config["seqno"]
    query, args = section["query"], None
    low = high = None
    if run.layout.node_id is not None:
        low, high = node_range(run.layout.node_id, section["node_digits"])
        if query == DEFAULT_QUERY:
            query = DEFAULT_QUERY + " WHERE id BETWEEN %(node_min)s AND %(node_max)s"
    if "%(" in query:
        args = {"node_min": low if low is not None else 0, "node_max": high if high is not None else 2**63 - 1}
    connection = _session(run)
    try:
        row = _query_one(connection, query, args)
    except Exception as error:  # noqa: BLE001
        raise EmgBorgError(f"[seqno] query {query!r} failed: {error}")
    value = row[0] if row else None
    if value is None:
        value = low or 0
        logger.warning("[seqno] query returned no id (empty table?); using %d", value)
    value = int(value)
    if low is not None and not low <= value <= high:
        raise EmgBorgError(f"message id {value} is outside node {run.layout.node_id}'s range {low}..{high}")
    run.message_id_source = "query"
    logger.info("message id %d (from [seqno] query)", value)
    with contextlib.suppress(Exception):
        with connection.cursor() as cursor:
            cursor.execute("SHOW MASTER STATUS")
            status = cursor.fetchone()
        if status:
            run.binlog = {"file": status[0], "position": int(status[1])}
    return value


def _dump_started(connection, watermark: int, user: str | None) -> bool:
    row = _query_one(
        connection,
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p "
        "ON p.ID = t.trx_mysql_thread_id WHERE t.trx_mysql_thread_id > %s AND (%s IS NULL OR p.USER = %s)",
        (watermark, user, user),
    )
    return bool(row and row[0])


@hookimpl
def emg_borg_begin_dumps(run):
    if not enabled(run.config, run.layout) or "database" not in run.categories:
        return None
    connection = _session(run)
    settings = _state(run)["settings"]
    watermark = _query_one(connection, "SELECT MAX(ID) FROM information_schema.PROCESSLIST")[0] or 0
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
        if dump.poll() is not None or _dump_started(connection, watermark, settings.user):
            break
        if time.monotonic() > deadline:
            dump.abort()
            raise EmgBorgError("mysqldump did not begin its transaction within [mysql] lock_timeout")
        time.sleep(0.002)
    return [dump]


@hookimpl
def emg_borg_finish_dumps(run):
    from emg_borg.lifecycle.backup import sha256_file

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
def emg_borg_release(run):
    # The dump and connection live in the before-backup process only; on failure, stop them.
    dump = _state(run).pop("dump", None)
    if dump is not None:
        dump.abort()
    _close(run)
