"""The replica's replication stopped by a run (`Pause`), and resumed on every path.

By this process (`Pause.close`), by a guard process (`replica_guard.py`) if this one dies or
hangs while replication is paused, and from the ledger by the next emg-borg command that releases
(`resume_left`). Each resumes only what its run paused: the ledger entry and the guard know the
pausing session (it holds the replica's named lock), the server's start and the primary's id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time

from emg_borg.core.proc import kill_group_if, start_time
from emg_borg.errors import EmgBorgError
from emg_borg.plugins.mysql import replica_guard
from emg_borg.plugins.mysql.replica_state import error_text, slave_status, talking_to
from emg_borg.plugins.mysql.settings import NAME, REPLICA, replica_settings

logger = logging.getLogger(__name__)

KIND = "replica-paused"
FACTS = ("holder", "server_started", "primary_server_id")  # what identifies a run's pause
_GUARD_START_SECONDS = 10
GUARD_MARGIN = 10  # seconds past the longest the pause can last, before the guard takes over


class Pause:
    """The replica's replication stopped by this run: recorded in the ledger first, watched by a
    guard process that resumes it if this process dies, resumed by `close()` on every path."""

    def __init__(self, run, connection, settings):
        self.run, self.connection, self.settings = run, connection, settings
        self.entry = self.guard = self.stopped = None
        with talking_to(settings.describe(), "recording the pause"), connection.cursor() as cursor:
            # What the guard and a later release need to resume only what this run paused.
            facts = {"holder": connection.thread_id(), "server_started": replica_guard.server_started(cursor),
                     "primary_server_id": run.state(NAME)["primary_server_id"]}
        self.entry = run.ledger.add(NAME, KIND, released_by="plugin", server=settings.describe(),
                                    **_connection_fields(settings), **facts)
        try:
            self.guard = _start_guard(settings, run, facts)
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
        except Exception:  # noqa: BLE001 - the held connection may be lost: resume as the guard does
            # Not a bare START SLAVE on a new connection: with the held session gone, so is the
            # replica's lock, and another run may hold it now, its own pause under way. The
            # guard's way takes the lock first (BUSY while another run holds it).
            try:
                with talking_to(name, "resuming its replication"):
                    outcome = replica_guard.resume({**_connection_fields(self.settings, password=True),
                                                    **{k: self.entry[k] for k in FACTS}})
            except (EmgBorgError, OSError) as error:  # talking_to names PyMySQL's errors
                outcome = str(error)
            if outcome == replica_guard.LEFT:
                logger.warning("%s is no longer a read-only replica of the primary (promoted?): left as it is", name)
            elif outcome != replica_guard.RESUMED:
                if self.guard is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self.guard.stdin.close()  # without "resumed": the guard takes over
                why = "another run holds the replica's lock" if outcome == replica_guard.BUSY else outcome
                raise EmgBorgError(f"replication on {name} is still stopped ({why}); the guard keeps trying, and "
                                   "the next after-backup, on-error or before-backup resumes it") from None
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


def _start_guard(settings, run, facts: dict) -> subprocess.Popen:
    # Long enough for the catch-up, the freeze and the dump's start; then the guard resumes
    # replication even if this process still lives (it would be stuck).
    section, replica = run.config["mysql"], run.config[REPLICA]
    max_wait = float(replica["max_wait"])
    seconds = max_wait + float(section["lock_timeout"]) * 2 + float(section["max_freeze"]) + GUARD_MARGIN
    # Retried that long: a run that took the replica's lock meanwhile gives it up within max_wait.
    retry = max_wait + 60
    guard = subprocess.Popen(
        [sys.executable, "-I", replica_guard.__file__, str(os.getpid()), str(seconds), str(retry)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # The password goes through the pipe: never argv, environment or disk.
        guard.stdin.write((json.dumps({**_connection_fields(settings, password=True), **facts}) + "\n").encode())
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
    if not select.select([guard.stdout], [], [], _GUARD_START_SECONDS)[0]:
        return ""
    return guard.stdout.readline().decode(errors="replace").strip()


def _connection_fields(settings, password=False) -> dict:
    fields = {"host": settings.host, "port": settings.port, "socket": settings.socket, "user": settings.user,
              "database": settings.database}
    return {**fields, "password": settings.password} if password else fields


def resume_left(run) -> None:
    """Resume replication a run stopped and did not resume (its process was killed): from the
    ledger, with the configured password. A replica that cannot be reached, or that another run
    holds now, keeps its entry (a warning: the next release tries again) and its guard, which
    goes on trying meanwhile (on-error runs at once, often while the replica is still away); one
    that is no longer a read-only replica of that primary (promoted) is left alone. Once it is
    resumed or left alone, the guard, if still there, is stopped."""
    for entry in run.ledger.of(NAME, KIND):
        fields = dict(entry)
        with contextlib.suppress(EmgBorgError):
            layout = run.layout or run.hook.emg_borg_discover_layout(config=run.config)
            fields["password"] = replica_settings(run.config, layout).password
        server = entry.get("server")
        try:
            outcome = replica_guard.resume(fields)
        except Exception as error:  # noqa: BLE001 - PyMySQL's errors: tried again at the next release
            logger.warning("replication on %s, stopped by an earlier run, could not be resumed (%s); the next "
                           "release tries again", server, error_text(error))
            continue
        if outcome == replica_guard.BUSY:
            logger.warning("replication on %s, stopped by an earlier run, is not resumed yet: another emg-borg run "
                           "holds the replica; the next release tries again", server)
            continue
        if entry.get("guard_pid"):
            kill_group_if(entry["guard_pid"], entry.get("guard_started"), signal.SIGKILL)
        if outcome == replica_guard.LEFT:
            logger.warning("%s, stopped by an earlier run, is no longer a read-only replica of server id %s "
                           "(promoted?): left as it is", server, entry.get("primary_server_id"))
        else:
            logger.warning("replication on %s was left stopped by an earlier run; resumed", server)
        run.ledger.remove(entry)
