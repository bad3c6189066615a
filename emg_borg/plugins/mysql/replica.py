"""The dump taken on a GTID replica at exactly the consistency point (`[mysql.replica]`).

Before the freeze the replica is checked (`problems`), waits until it has applied what the
primary had logged (bounded by `max_wait`), and its replication is stopped (`pause`): MariaDB
stops a replica at a GTID position only from a standstill (`START SLAVE UNTIL master_gtid_pos`
needs both threads stopped). In the freeze the primary's `@@gtid_binlog_pos` is read: under the
global read lock it cannot move, so it is the consistency point's position. After the freeze the
replica runs up to exactly that position and stops (`reach`); mysqldump's transaction begins
there, proven by the replica's `@@gtid_slave_pos` equal to it before and after; replication is
resumed at once (`resume`). The primary pays only the freeze.

Replication is always resumed, and only what this run paused (`replica_pause.py`).
"""

from __future__ import annotations

import contextlib
import logging
import time

from emg_borg.core.signals import Interrupted
from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql import replica_guard
from emg_borg.plugins.mysql.replica_pause import Pause, resume_left  # noqa: F401 - resume_left for the hooks
from emg_borg.plugins.mysql.message_id import node_query
from emg_borg.plugins.mysql.replica_state import (behind, describe, gtid_position, problems, reached,
                                                  slave_status, talking_to)
from emg_borg.plugins.mysql.settings import NAME, REPLICA, query_one, replica_settings

logger = logging.getLogger(__name__)

_STOP_SECONDS = 10  # for the replica's threads to stop once it reached the position
_RETRY_SECONDS = 1  # between looks at a replica another run left paused (its guard resumes it)


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
    check_config(run.config)  # a configuration error is never a fallback
    settings = replica_settings(run.config, run.layout)
    try:
        connection = connect(settings, run.config)
    except EmgBorgError as error:
        found = [str(error)]
    else:
        try:
            with talking_to(settings.describe(), "checking it"):
                found = problems(connection, primary, settings)
                if not found:
                    run.notes.extend(describe(connection, primary, settings))
        except EmgBorgError as error:
            found = [str(error)]
        finally:
            connection.close()
    if not found:
        state["dump_from"] = "replica"
        return []
    return fall_back(run, "; ".join(found)) if run.config[REPLICA]["fallback"] == "primary" else found


def check_config(config) -> None:
    """What the configuration alone makes impossible: one line naming the file and line."""
    section = config[REPLICA]
    if not (section["host"] or section["port"] or section["socket"]):
        raise config.error(REPLICA, None, "names no server: set host (and port) or socket of the replica; "
                           "without them it would reach the primary")
    if config["mysql"]["lock"] == "none":
        raise config.error("mysql", "lock", f"\"none\" cannot go with [{REPLICA}]: without the global read lock "
                           "no position is the consistency point")


def connect(settings, config):
    """A replica connection whose every statement is bounded: the longest server-side wait
    (`GET_LOCK`, `MASTER_GTID_WAIT`) is `max_wait`, so a replica that stops answering ends it."""
    return mysql.connect(settings, read_timeout=float(config[REPLICA]["max_wait"]) + 10)


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
        connection = state["replica_connection"] = connect(settings, run.config)
        state["replica_settings"] = settings
        with talking_to(settings.describe(), "waiting for it to catch up"):
            return _lock_and_catch_up(state, connection, primary, settings, max_wait)
    except EmgBorgError as error:
        release(run)
        if run.config[REPLICA]["fallback"] != "primary" or isinstance(error, Interrupted):
            raise  # SIGTERM stops the run: no reason to dump the primary instead
        fall_back(run, str(error))
        return state["settings"]


def _lock_and_catch_up(state, connection, primary, settings, max_wait: float):
    """Hold the replica's named lock (one run at a time pauses it), then wait for it to catch up."""
    state["primary_server_id"] = int(query_one(primary, "SELECT @@server_id")[0])
    deadline, waited = time.monotonic() + max_wait, False
    while True:
        waited = waited or query_one(connection, "SELECT IS_USED_LOCK(%s)", (replica_guard.LOCK,))[0] is not None
        left = max(0.0, deadline - time.monotonic())
        if query_one(connection, "SELECT GET_LOCK(%s, %s)", (replica_guard.LOCK, left))[0] != 1:
            raise ReplicaUnfit(f"replica {settings.describe()} is paused by another emg-borg run (its lock "
                               f"{replica_guard.LOCK} was not free within {max_wait:g} s)")
        # Checked again under the lock: the preflight may have seen it paused by another run, or it
        # may have changed since.
        found = problems(connection, primary, settings)
        # The run waited for may have been killed with replication paused: its guard resumes it
        # within seconds, but needs this lock to do so.
        paused = waited and _left_paused(slave_status(connection))
        if not found and not paused:
            break
        if not paused or time.monotonic() + _RETRY_SECONDS > deadline:
            raise ReplicaUnfit("; ".join(found) or f"replication on {settings.describe()} was left running only up "
                               f"to a position (START SLAVE UNTIL) by another run for {max_wait:g} s")
        query_one(connection, "SELECT RELEASE_LOCK(%s)", (replica_guard.LOCK,))
        time.sleep(_RETRY_SECONDS)
    took = catch_up(connection, primary, max_wait, settings.describe())
    logger.info("replica %s caught up with the primary in %.2f s", settings.describe(), took)
    return settings


def _left_paused(status: dict) -> bool:
    """Stopped as a pause leaves it (a thread stopped without an error), running up to a position
    (`START SLAVE UNTIL`), or just resumed (the IO thread still connecting to the primary)."""
    if status.get("Last_SQL_Error") or status.get("Last_IO_Error"):
        return False
    return bool({"No", "Connecting"} & {status.get("Slave_IO_Running"), status.get("Slave_SQL_Running")}) \
        or str(status.get("Until_Condition", "None")).lower() != "none"


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


def check_message_id(run, connection, name: str) -> None:
    """At the position, the replica must show the message id read on the primary in the freeze:
    a replica that filters tables or was written to gives another answer."""
    if run.message_id is None or run.message_id_source != "query":
        return
    query, args, _, _ = node_query(run.config, run.layout.node_id)
    row = query_one(connection, query, args)
    seen = row[0] if row else None
    if seen is None or int(seen) != run.message_id:
        raise EmgBorgError(f"replica {name} at the consistency point's position gives message id {seen}, the primary "
                           f"gave {run.message_id} in the freeze: the replica's data differs from the primary's "
                           "(filtered tables, or writes made on the replica); no archive is made")


def check_at(connection, target: str, name: str) -> str:
    """The replica must stand exactly at `target`, its SQL thread stopped."""
    position = gtid_position(connection, "gtid_slave_pos")
    if not reached(position, target):
        raise EmgBorgError(f"replica {name} stands at GTID {position}, the consistency point at {target}: "
                           "the dump would not show the database as it was in the freeze")
    if slave_status(connection).get("Slave_SQL_Running") != "No":
        raise EmgBorgError(f"replication on {name} was started by someone else while the dump began")
    return position
