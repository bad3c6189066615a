"""Resumes a replica's replication when the before-backup that stopped it dies first.

`python -I replica_guard.py PARENT SECONDS`, in a session of its own. It reads one JSON line on
stdin, how to reach the replica (the password comes this way: never in argv, environment or on
disk), connects once to prove it can, and writes `ready`. Then it waits:

- `resumed` on stdin: before-backup resumed replication itself; the guard exits;
- end of file on stdin (before-backup died, even by SIGKILL), or SECONDS passed (before-backup is
  stuck): the guard resumes replication (`STOP SLAVE` then `START SLAVE` unless both threads run
  with no UNTIL), trying for RETRY_SECONDS, and exits.

It first takes the replica's named lock `emg_borg.replica` (what each run holds while it pauses
the replica): if another run holds it, that run is in charge of the replica and resumes it
itself. Only PyMySQL and the standard library; started by its path.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

LOCK = "emg_borg.replica"
RETRY_SECONDS = 60


def say(line: str) -> None:
    try:
        os.write(1, (line + "\n").encode())
    except OSError:
        pass


def connect(fields: dict):
    import pymysql

    kwargs = dict(user=fields.get("user") or "", password=fields.get("password") or "", connect_timeout=5,
                  autocommit=True)
    if fields.get("socket"):
        kwargs["unix_socket"] = fields["socket"]
    else:
        kwargs.update(host=fields.get("host") or "localhost", port=fields.get("port") or 3306)
    return pymysql.connect(**kwargs)


def resume(fields: dict) -> bool:
    """True when replication runs again (or another run is in charge of it)."""
    connection = connect(fields)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 5)", (LOCK,))
            if cursor.fetchone()[0] != 1:
                return True  # another run pauses the replica and will resume it
            cursor.execute("SHOW SLAVE STATUS")
            row = cursor.fetchone()
            status = dict(zip([c[0] for c in cursor.description], row)) if row else {}
            running = status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"
            if not (running and str(status.get("Until_Condition", "None")).lower() == "none"):
                cursor.execute("STOP SLAVE")
                cursor.execute("START SLAVE")
            cursor.execute("SELECT RELEASE_LOCK(%s)", (LOCK,))
        return True
    finally:
        connection.close()


def main(parent: int, seconds: float) -> int:
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
    give_up = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            if resume(fields):
                return 0
        except Exception:  # noqa: BLE001 - the replica may be restarting: try again
            pass
        if time.monotonic() > give_up:
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2])))
