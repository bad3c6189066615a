"""The dump taken on a GTID replica at exactly the consistency point (`[mysql.replica]`).

Before the freeze the replica is checked (`problems`), waits until it has applied what the
primary had logged (bounded by `max_wait`), and its replication is stopped (`pause`): MariaDB
stops a replica at a GTID position only from a standstill (`START SLAVE UNTIL master_gtid_pos`
needs both threads stopped). In the freeze the primary's `@@gtid_binlog_pos` is read: under the
global read lock it cannot move, so it is the consistency point's position. After the freeze the
replica runs up to exactly that position and stops (`reach`); mysqldump's transaction begins
there, proven by the replica's `@@gtid_slave_pos` equal to it before and after; replication is
resumed at once (`resume`). The primary pays only the freeze.

Replication is always resumed: by this process on every path (`Pause.close`), by a guard process
(`replica_guard.py`) if this one dies while replication is paused, and from the ledger by the
next emg-borg command that releases (`resume_left`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

from emg_borg.core.proc import kill_group_if, start_time
from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql import replica_guard
from emg_borg.plugins.mysql.replica_state import (behind, describe, error_text, gtid_position, problems, reached,
                                                  slave_status, talking_to)
from emg_borg.plugins.mysql.settings import NAME, REPLICA, query_one, replica_settings

logger = logging.getLogger(__name__)

KIND = "replica-paused"
_STOP_SECONDS = 10  # for the replica's threads to stop once it reached the position
_GUARD_START_SECONDS = 10


class ReplicaUnfit(EmgBorgError):
    """The replica cannot give the dump: a fallback to the primary may apply."""


def catch_up(replica, primary, max_wait: float, name: str) -> float:
    """Wait (at most `max_wait` s) until the replica has applied what the primary has logged now;
    the seconds it took."""
    target = gtid_position(primary, "gtid_binlog_pos")
    started = time.monotonic()
    result = query_one(replica, "SELECT MASTER_GTID_WAIT(%s, %s)", (target, float(max_wait)))[0]
    if result != 0:
        raise ReplicaUnfit(f"replica {name} did not catch up with the primary ({target}) within [{REPLICA}] "
                           f"max_wait ({max_wait:g} s): {behind(gtid_position(replica, 'gtid_slave_pos'), target)} "
                           "transaction(s) behind")
    return time.monotonic() - started


def decide(run, primary) -> list[str]:
    """The preflight: whether the dump is taken on the replica (`state["dump_from"]`). Returns
    the replica's problems with `fallback = "fail"`; with `"primary"` they are a warning instead."""
    state = run.state(NAME)
    settings = replica_settings(run.config, run.layout)  # a configuration error is never a fallback
    if run.config["mysql"]["lock"] == "none":
        return [f"[{REPLICA}] needs the global read lock ([mysql] lock): without it no position is the "
                "consistency point"]
    try:
        connection = mysql.connect(settings)
    except EmgBorgError as error:
        found = [str(error)]
    else:
        try:
            found = problems(connection, primary, settings)
            if not found:
                run.notes.extend(describe(connection, primary, settings))
        finally:
            connection.close()
    if not found:
        state["dump_from"] = "replica"
        return []
    return fall_back(run, "; ".join(found)) if run.config[REPLICA]["fallback"] == "primary" else found


def fall_back(run, reason: str) -> list:
    state = run.state(NAME)
    state["dump_from"], state["replica_fallback"] = "primary", reason
    warning = f"the dump is taken on the primary, not the replica ([{REPLICA}] fallback = \"primary\"): {reason}"
    logger.warning("%s", warning)
    run.warnings.append(warning)
    return []


def prepare(run, primary):
    """Before the freeze: connect to the replica, hold its named lock (one run at a time pauses
    it) and wait until it has caught up. The settings the dump connects with: the replica's, or
    the primary's after a fallback."""
    state = run.state(NAME)
    settings = replica_settings(run.config, run.layout)
    max_wait = float(run.config[REPLICA]["max_wait"])
    try:
        connection = state["replica_connection"] = mysql.connect(settings)
        state["replica_settings"] = settings
        with talking_to(settings.describe(), "waiting for it to catch up"):
            return _lock_and_catch_up(connection, primary, settings, max_wait)
    except EmgBorgError as error:
        release(run)
        if run.config[REPLICA]["fallback"] != "primary":
            raise
        fall_back(run, str(error))
        return state["settings"]


def _lock_and_catch_up(connection, primary, settings, max_wait: float):
    """Hold the replica's named lock (one run at a time pauses it), then wait for it to catch up."""
    if query_one(connection, "SELECT GET_LOCK(%s, %s)", (replica_guard.LOCK, max_wait))[0] != 1:
        raise ReplicaUnfit(f"replica {settings.describe()} is paused by another emg-borg run (its lock "
                           f"{replica_guard.LOCK} was not free within {max_wait:g} s)")
    took = catch_up(connection, primary, max_wait, settings.describe())
    logger.info("replica %s caught up with the primary in %.2f s", settings.describe(), took)
    return settings


def pause(run) -> None:
    """Stop the replica's replication, recorded in the ledger first and watched by a guard."""
    state = run.state(NAME)
    if state.get("dump_from") != "replica":
        return
    state["pause"] = Pause(run, state["replica_connection"], state["replica_settings"])


def release(run) -> None:
    """Resume replication if this run paused it, and let go of the replica (idempotent)."""
    state = run.state(NAME)
    pause_, connection = state.pop("pause", None), state.pop("replica_connection", None)
    try:
        if pause_ is not None:
            pause_.close()
    finally:
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()  # also frees the named lock


def dump_source(run) -> dict:
    """The manifest's record of which server was dumped, at which position."""
    state = run.state(NAME)
    if state.get("dump_from") == "replica":
        return {"server": "replica", "replica": state["replica_settings"].describe(),
                "gtid_position": state.get("replica_target"),
                "replication_paused_ms": state.get("replication_paused_ms")}
    source = {"server": "primary"}
    if state.get("replica_fallback"):
        source["replica_fallback"] = state["replica_fallback"]
    return source


class Pause:
    """The replica's replication stopped by this run: recorded in the ledger first, watched by a
    guard process that resumes it if this process dies, resumed by `close()` on every path."""

    def __init__(self, run, connection, settings):
        self.run, self.connection, self.settings = run, connection, settings
        self.entry = run.ledger.add(NAME, KIND, released_by="plugin", server=settings.describe(),
                                    **_connection_fields(settings))
        self.guard, self.stopped = None, None
        try:
            self.guard = _start_guard(settings, run)
            self.entry.update(guard_pid=self.guard.pid, guard_started=start_time(self.guard.pid))
            run.ledger.save()
            with talking_to(settings.describe(), "stopping its replication"), connection.cursor() as cursor:
                cursor.execute("STOP SLAVE")
            self.stopped = time.monotonic()
            logger.info("replication on %s stopped for the consistency point", settings.describe())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Resume replication and forget the pause. If that fails, the guard and the ledger
        entry stay: the guard tries again, and so does the next release."""
        if self.entry is None:
            return
        name = self.settings.describe()
        try:
            resume(self.connection, name)
        except Exception:  # noqa: BLE001 - the held connection may be lost: try a new one
            try:
                with talking_to(name, "resuming its replication"):
                    fresh = mysql.connect(self.settings, connect_timeout=5)
                    try:
                        resume(fresh, name)
                    finally:
                        fresh.close()
            except EmgBorgError as error:
                if self.guard is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self.guard.stdin.close()  # without "resumed": the guard takes over
                raise EmgBorgError(f"replication on {name} is still stopped ({error}); the guard tries again for "
                                   f"{replica_guard.RETRY_SECONDS} s, and the next after-backup, on-error or "
                                   "before-backup resumes it") from None
        if self.stopped is not None:
            self.run.state(NAME)["replication_paused_ms"] = round((time.monotonic() - self.stopped) * 1000, 1)
        if self.guard is not None:
            with contextlib.suppress(OSError, ValueError):
                self.guard.stdin.write(b"resumed\n")
                self.guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.guard.wait(timeout=5)
            self.guard.stdout.close()
        self.run.ledger.remove(self.entry)
        self.entry = None


def resume(connection, name: str) -> None:
    """Replication running again from where it stands, with no UNTIL left: a replica stopped at a
    position (or one thread stopped) is stopped fully and started; a running one is left alone."""
    status = slave_status(connection)
    if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes" \
            and str(status.get("Until_Condition", "None")).lower() == "none":
        return
    with connection.cursor() as cursor:
        cursor.execute("STOP SLAVE")
        cursor.execute("START SLAVE")
    logger.info("replication on %s resumed", name)


def _start_guard(settings, run) -> subprocess.Popen:
    # Long enough for the catch-up, the freeze and the dump's start; then the guard resumes
    # replication even if this process still lives (it would be stuck).
    section, replica = run.config["mysql"], run.config[REPLICA]
    seconds = float(replica["max_wait"]) + float(section["lock_timeout"]) * 2 + float(section["max_freeze"]) + 60
    guard = subprocess.Popen(
        [sys.executable, "-I", replica_guard.__file__, str(os.getpid()), str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # The password goes through the pipe: never argv, environment or disk.
        guard.stdin.write((json.dumps(_connection_fields(settings, password=True)) + "\n").encode())
        guard.stdin.flush()
        ready = _read_ready(guard)
        if ready != "ready":
            raise EmgBorgError(f"the guard that resumes replication on {settings.describe()} did not start "
                               f"({ready or 'no answer'})")
    except BaseException:
        kill_group_if(guard.pid, start_time(guard.pid), signal.SIGKILL)
        guard.wait()
        raise
    return guard


def _read_ready(guard) -> str:
    import select

    if not select.select([guard.stdout], [], [], _GUARD_START_SECONDS)[0]:
        return ""
    return guard.stdout.readline().decode(errors="replace").strip()


def _connection_fields(settings, password=False) -> dict:
    fields = {"host": settings.host, "port": settings.port, "socket": settings.socket, "user": settings.user,
              "database": settings.database}
    return {**fields, "password": settings.password} if password else fields


def reach(connection, target: str, max_wait: float, name: str) -> None:
    """Run the paused replica up to exactly `target` and see it stop there."""
    with connection.cursor() as cursor:
        cursor.execute("START SLAVE UNTIL master_gtid_pos = %s", (target,))
    result = query_one(connection, "SELECT MASTER_GTID_WAIT(%s, %s)", (target, float(max_wait)))[0]
    if result != 0:
        status = slave_status(connection)
        error = status.get("Last_SQL_Error") or status.get("Last_IO_Error")
        raise EmgBorgError(f"replica {name} did not reach the consistency point's position {target} within "
                           f"[{REPLICA}] max_wait ({max_wait:g} s)" + (f": {error}" if error else "")
                           + "; replication was resumed, no archive is made")
    deadline = time.monotonic() + _STOP_SECONDS
    while (status := slave_status(connection)).get("Slave_SQL_Running") != "No":
        if time.monotonic() > deadline:
            raise EmgBorgError(f"replica {name} reached {target} but did not stop there")
        time.sleep(0.01)
    check_at(connection, target, name)


def check_at(connection, target: str, name: str) -> str:
    """The replica must stand exactly at `target`, its SQL thread stopped."""
    position = gtid_position(connection, "gtid_slave_pos")
    if not reached(position, target):
        raise EmgBorgError(f"replica {name} stands at GTID {position}, the consistency point at {target}: "
                           "the dump would not show the database as it was in the freeze")
    if slave_status(connection).get("Slave_SQL_Running") != "No":
        raise EmgBorgError(f"replication on {name} was started by someone else while the dump began")
    return position


def resume_left(run) -> None:
    """Resume replication a run stopped and did not resume (its process was killed): from the
    ledger, with the configured password. Its guard, if still there, is stopped first; a replica
    another run pauses now (its named lock is taken) is left to that run."""
    for entry in run.ledger.of(NAME, KIND):
        if entry.get("guard_pid"):
            kill_group_if(entry["guard_pid"], entry.get("guard_started"), signal.SIGKILL)
        fields = {key: entry.get(key) for key in ("host", "port", "socket", "user", "database")}
        with contextlib.suppress(EmgBorgError):
            layout = run.layout or run.hook.emg_borg_discover_layout(config=run.config)
            fields["password"] = replica_settings(run.config, layout).password
        try:
            replica_guard.resume(fields)
        except Exception as error:  # noqa: BLE001 - PyMySQL's errors: the entry stays for the next release
            raise EmgBorgError(f"cannot resume replication on {entry.get('server')}: {error_text(error)}") from None
        logger.warning("replication on %s was left stopped by an earlier run; resumed", entry.get("server"))
        run.ledger.remove(entry)
