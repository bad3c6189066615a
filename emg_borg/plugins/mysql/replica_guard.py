"""Resumes a replica's replication when the before-backup that stopped it dies (or hangs) first.

`python -I replica_guard.py PARENT SECONDS RETRY`, in a session of its own. It reads one JSON
line on stdin, how to reach the replica and what the pausing run recorded (the password comes this
way: never in argv, environment or on disk), connects once to prove it can, and writes `ready`.
Then it waits:

- `resumed` on stdin: before-backup resumed replication itself; the guard exits;
- end of file on stdin (before-backup died, even by SIGKILL), or SECONDS passed (before-backup
  hangs): the guard resumes replication (`resume`), trying for RETRY seconds, and exits.

`resume` is also what the next emg-borg release runs for a pause left in the ledger. Only PyMySQL
and the standard library; started by its path.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

LOCK = "emg_borg.replica"  # held by a run from before its pause until it resumed replication
TIMEOUT = 30  # seconds any statement may take here: a replica that stops answering must not hang us
RESUMED, BUSY, LEFT = "resumed", "busy", "left alone"


def say(line: str) -> None:
    try:
        os.write(1, (line + "\n").encode())
    except OSError:
        pass


def connect(fields: dict, timeout: float = TIMEOUT):
    import pymysql

    kwargs = dict(user=fields.get("user") or "", password=fields.get("password") or "", connect_timeout=5,
                  read_timeout=timeout, write_timeout=timeout, autocommit=True)
    if fields.get("socket"):
        kwargs["unix_socket"] = fields["socket"]
    else:
        kwargs.update(host=fields.get("host") or "localhost", port=fields.get("port") or 3306)
    return pymysql.connect(**kwargs)


def server_started(cursor) -> float:
    """When the server started (seconds since the epoch): a connection id means one session only
    within one server lifetime."""
    cursor.execute("SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                   "WHERE VARIABLE_NAME = 'UPTIME'")
    return float(cursor.fetchone()[0])


def _one(cursor, sql, args=None):
    cursor.execute(sql, args)
    return cursor.fetchone()


def resume(fields: dict) -> str:
    """Resume the replication a run paused, as `fields` record it (connection, `holder`: the
    pausing session's id, `server_started`, `primary_server_id`). RESUMED: it runs (again); BUSY:
    another run holds the replica's lock, try later; LEFT: no longer a read-only replica of that
    primary (promoted?), so left as it is."""
    connection = connect(fields)
    try:
        with connection.cursor() as cursor:
            holder = _one(cursor, "SELECT IS_USED_LOCK(%s)", (LOCK,))[0]
            same_server = abs(server_started(cursor) - float(fields.get("server_started") or 0)) < 5
            if holder is not None and same_server and holder == fields.get("holder"):
                try:  # the pausing session is still there (its process hangs): end it
                    cursor.execute(f"KILL CONNECTION {int(holder)}")
                except Exception:  # noqa: BLE001 - gone meanwhile
                    pass
            if _one(cursor, "SELECT GET_LOCK(%s, 5)", (LOCK,))[0] != 1:
                return BUSY
            try:
                cursor.execute("SHOW SLAVE STATUS")
                row = cursor.fetchone()
                status = dict(zip([c[0] for c in cursor.description], row)) if row else {}
                read_only = _one(cursor, "SELECT @@read_only")[0]
                source = int(status.get("Master_Server_Id") or 0)
                if not status or int(read_only) != 1 or source not in (0, int(fields.get("primary_server_id") or 0)):
                    return LEFT
                running = status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"
                if not (running and str(status.get("Until_Condition", "None")).lower() == "none"):
                    cursor.execute("STOP SLAVE")
                    cursor.execute("START SLAVE")
                return RESUMED
            finally:
                cursor.execute("SELECT RELEASE_LOCK(%s)", (LOCK,))
    finally:
        connection.close()


def main(parent: int, seconds: float, retry: float) -> int:
    line = sys.stdin.buffer.readline()
    try:
        fields = json.loads(line)
        connect(fields).close()
    except Exception as error:  # noqa: BLE001 - told to the parent, which then does not pause
        say(f"error {type(error).__name__}: {error}".replace("\n", " "))
        return 1
    say("ready")
    deadline = time.monotonic() + seconds
    pending = b""
    while time.monotonic() < deadline:
        if select.select([sys.stdin.buffer], [], [], min(1.0, max(0.0, deadline - time.monotonic())))[0]:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                break  # the parent is gone
            pending += chunk
            if b"resumed" in pending:
                return 0
    give_up = time.monotonic() + retry
    while True:
        try:
            if resume(fields) != BUSY:
                return 0
        except Exception:  # noqa: BLE001 - the replica may be restarting: try again
            pass
        if time.monotonic() > give_up:
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
