"""The consistency point's lock: `FLUSH TABLES WITH READ LOCK` on one held connection.

With `[mysql] lock` other than `none` the lock is taken (bounded by `lock_timeout`: a watchdog on
a second connection kills the statement if it waits longer), so writers stop while the spool
snapshot is taken, the message id and binlog position are read, and mysqldump's
`--single-transaction` snapshot begins. The lock is then released; the dump goes on without
blocking anybody. The window is measured and lands in the manifest as `freeze_window_ms`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time

from emg_borg.core.signals import Interrupted
from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql.settings import NAME, connection_settings, query_one

logger = logging.getLogger(__name__)


def session(run):
    """The connection held for the consistency point, opened on first use."""
    state = run.state(NAME)
    if "connection" not in state:
        state["settings"] = connection_settings(run.config, run.layout)
        state["connection"] = mysql.connect(state["settings"])
    return state["connection"]


def close(run) -> None:
    connection = run.state(NAME).pop("connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()


class Watchdog:
    """After `timeout` seconds (unless stopped first), end the statement (`QUERY`) or the whole
    session (`CONNECTION`, which releases its locks) from a second connection.

    `stop()` waits for the thread: a KILL under way is finished before the command goes on, and
    no thread is left talking to the server while the interpreter shuts down (a daemon thread
    inside PyMySQL at exit crashed the process with SIGSEGV, 1 run in 6 of the hanging-command
    test)."""

    JOIN_SECONDS = 15  # the guard's connect (5 s) and read (5 s) timeouts, and some slack

    def __init__(self, settings, thread_id: int, timeout: float, what: str = "QUERY"):
        self.settings, self.thread_id, self.timeout, self.what = settings, int(thread_id), timeout, what
        self._stopped = threading.Event()
        # Set before the KILL is sent: the killed statement's error can reach the main thread
        # before the KILL returns here, and must be read as this timeout.
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"emg-borg kill {what.lower()} watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._stopped.wait(self.timeout):
            return
        self.fired.set()
        with contextlib.suppress(Exception):
            guard = mysql.connect(self.settings, connect_timeout=5, read_timeout=5)
            try:
                with guard.cursor() as cursor:
                    cursor.execute(f"KILL {self.what} {self.thread_id}")
            finally:
                guard.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.JOIN_SECONDS)


class FreezeTooLong(EmgBorgError):
    """The consistency point was held longer than `[mysql] max_freeze`."""


@contextlib.contextmanager
def global_read_lock(run):
    section = run.config["mysql"]
    mode, timeout, max_freeze = section["lock"], float(section["lock_timeout"]), float(section["max_freeze"])
    connection = session(run)
    settings = run.state(NAME)["settings"]
    try:
        if mode == "none":
            run.lock_state = "none"
            yield
            return
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = %s", (max(1, math.ceil(timeout)),))
            # If emg-borg is stopped or killed while it holds the lock, the server ends the idle
            # session, and with it the lock, by itself.
            cursor.execute("SET SESSION wait_timeout = %s, interactive_timeout = %s",
                           (math.ceil(max_freeze), math.ceil(max_freeze)))
        waiting = Watchdog(settings, connection.thread_id(), timeout)
        logger.info("taking a global read lock on %s (waiting at most %g s, holding it at most %g s)",
                    settings.describe(), timeout, max_freeze)
        try:
            with connection.cursor() as cursor:
                cursor.execute("FLUSH TABLES WITH READ LOCK")
        except Exception as error:  # noqa: BLE001 - PyMySQL errors vary; all mean "no lock"
            waiting.stop()
            if isinstance(error, Interrupted):
                raise  # SIGTERM stops the run: not a lock that could not be had
            # ER_LOCK_WAIT_TIMEOUT, or ER_QUERY_INTERRUPTED by our watchdog
            timed_out = waiting.fired.is_set() or getattr(error, "args", (None,))[0] in (1205, 1317)
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
        except BaseException:  # SIGINT (KeyboardInterrupt): no watchdog is left to fire later
            waiting.stop()
            raise
        # Held from here, while the watchdog is stopped too (it may be sending its KILL right now).
        acquired = time.monotonic()
        waiting.stop()
        run.lock_state = "held"
        run.freeze_deadline = acquired + max_freeze
        # At max_freeze the session is killed from outside, whatever this process is doing.
        holding = Watchdog(settings, connection.thread_id(), max(0.0, run.freeze_deadline - time.monotonic()),
                           "CONNECTION")
        try:
            # Under the lock the binlog position cannot move: it is the dump's position too.
            # Unlocked it would describe neither the dump nor the snapshot, so it is not recorded.
            run.state(NAME)["binlog"] = binlog_position(connection)
            yield
        except BaseException as error:
            holding.stop()
            if holding.fired.is_set() or time.monotonic() >= run.freeze_deadline:
                raise _too_long(run, max_freeze) from error
            raise
        finally:
            holding.stop()
            held = time.monotonic() - acquired
            run.freeze_window_ms = round(held * 1000, 3)
            if not holding.fired.is_set():
                with contextlib.suppress(Exception):
                    with connection.cursor() as cursor:
                        cursor.execute("UNLOCK TABLES")
            logger.info("global read lock released after %.1f ms", run.freeze_window_ms)
        if holding.fired.is_set() or held >= max_freeze:
            raise _too_long(run, max_freeze)
        if held > max_freeze / 2:
            warning = (f"the consistency point took {held:.2f} s, more than half of [mysql] max_freeze "
                       f"({max_freeze:g} s)")
            logger.warning("%s", warning)
            run.warnings.append(warning)
    except BaseException:
        close(run)
        raise


def _too_long(run, max_freeze: float) -> FreezeTooLong:
    return FreezeTooLong(
        f"the consistency point passed [mysql] max_freeze ({max_freeze:g} s) while {run.step}: the global read "
        f"lock was released at once and the command stopped; nothing of this run is kept, no archive is made"
    )


def binlog_position(connection) -> dict | None:
    try:
        status = query_one(connection, "SHOW MASTER STATUS")
    except Exception:  # noqa: BLE001 - no binlog privilege: no coordinates, not a failure
        return None
    return {"file": status[0], "position": int(status[1])} if status else None


def has_reload(connection) -> bool:
    return has_privilege(connection, {"RELOAD"})


def has_privilege(connection, wanted: set) -> bool:
    """Whether a global grant of the current user includes one of `wanted` (or ALL PRIVILEGES). A
    role granted to the user may carry it too; then the statement itself will tell, so say yes."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants = [row[0] for row in cursor.fetchall()]
    if any(not re.search(r" ON \S+ TO ", grant, re.IGNORECASE) for grant in grants):
        return True  # a role grant
    for grant in grants:
        match = re.match(r"GRANT (.+?) ON \*\.\* TO ", grant, re.IGNORECASE)
        privileges = {p.strip().upper() for p in match.group(1).split(",")} if match else set()
        if privileges & (set(wanted) | {"ALL PRIVILEGES", "ALL"}):
            return True
    return False
