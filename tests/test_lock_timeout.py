"""The global read lock is bounded by [mysql] lock_timeout: a long-running query in the way makes
before-backup fail (lock = "required") or go on unlocked with a warning (lock = "best-effort"),
and the waiting FLUSH TABLES WITH READ LOCK never stays behind to block EMG's writers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pymysql
import pytest

from conftest import claimed_binlog, leftovers
from emg_borg.external import mysql
from emg_borg.plugins.mysql import lock
from emg_borg.plugins.mysql.settings import NAME

pytestmark = pytest.mark.e2e

LONG = 60  # seconds the blocking query would run; the test kills it once it has served

# 1.5, not 1: emg-borg also sets the server's lock_wait_timeout, to the timeout rounded up (2 s),
# so its own watchdog (1.5 s) always ends the wait and the message is the watchdog's ("waited
# 1.5 s"). The two races an earlier watchdog had (a KILL QUERY landing in emg-borg's next
# statement; the kill noted only after KILL returned) are gone: lock.Watchdog marks itself fired
# before it sends the KILL, and stop() waits for the KILL to finish.
TIMEOUT = "1.5"


class LongQuery:
    """A long-running write, which FLUSH TABLES WITH READ LOCK must wait for; running (seen in
    the server's process list) when the constructor returns."""

    def __init__(self, mariadb, database):
        self.mariadb = mariadb
        self.connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)
        self.id = self.connection.thread_id()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        deadline = time.monotonic() + 10
        while "User sleep" not in mariadb.sql(f"SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = {self.id}"):
            assert self.thread.is_alive() and time.monotonic() < deadline, "the long query did not start"
            time.sleep(0.05)

    def _run(self):
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(f"UPDATE routelog SET status = status + SLEEP({LONG}) ORDER BY id LIMIT 1")
        except pymysql.err.OperationalError:
            pass  # killed by stop()
        finally:
            self.connection.close()

    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self):
        if self.thread.is_alive():
            self.mariadb.sql(f"KILL QUERY {self.id}")
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def insert_takes(mariadb, database) -> float:
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO routelog (id) VALUES (99999)")
    connection.close()
    return time.monotonic() - started


def test_required_lock_times_out_cleanly(emg, mariadb):
    emg.write_config("none", f"[mysql]\nlock_timeout = {TIMEOUT}\n")
    blocker = LongQuery(mariadb, emg.database)
    try:
        started = time.monotonic()
        result = emg.emg_borg("before-backup", check=False)
        elapsed = time.monotonic() - started
        assert blocker.running()
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
        assert len(errors) == 1 and "cannot take a global read lock" in errors[0] and f"waited {TIMEOUT} s" in errors[0]
        assert 'lock = "best-effort"' in errors[0]
        assert elapsed < 5
        # The killed FLUSH does not linger: writers go on while the long query still runs.
        assert insert_takes(mariadb, emg.database) < 1
        assert blocker.running()
    finally:
        blocker.stop()
    assert leftovers(emg) == []


def test_best_effort_goes_on_unlocked_and_says_so(emg, mariadb):
    emg.write_config("none", f'[mysql]\nlock_timeout = {TIMEOUT}\nlock = "best-effort"\n')
    blocker = LongQuery(mariadb, emg.database)
    try:
        result = emg.emg_borg("before-backup", "--json")
        assert blocker.running()  # the lock was refused because of it, not taken after it ended
    finally:
        blocker.stop()
    assert "warning: no global read lock" in result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["consistency_lock"] == "failed, unlocked (best-effort)"
    assert claimed_binlog(manifest) == {}  # no binlog position is claimed without the lock
    emg.emg_borg("after-backup")
    # With nothing in the way the lock is held and the binlog position recorded (which shows the
    # check above would see one).
    locked = json.loads(emg.emg_borg("before-backup", "--json").stdout)
    assert locked["consistency_lock"] == "held" and claimed_binlog(locked)
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_sigterm_while_waiting_for_the_lock_stops_a_best_effort_run(emg, mariadb):
    """SIGTERM while FLUSH TABLES WITH READ LOCK waits is not a lock that could not be had: the
    run stops instead of going on unlocked."""
    emg.write_config("none", '[mysql]\nlock_timeout = 30\nlock = "best-effort"\n')
    blocker = LongQuery(mariadb, emg.database)
    try:
        process = subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while "FLUSH" not in mariadb.sql("SELECT INFO FROM information_schema.PROCESSLIST "
                                             "WHERE INFO LIKE 'FLUSH TABLES WITH READ LOCK%'"):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "before-backup never waited for the lock"
                time.sleep(0.02)
            process.terminate()
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        # No FLUSH is left waiting on the server: writers go on while the long query still runs.
        assert insert_takes(mariadb, emg.database) < 1
        assert blocker.running()
    finally:
        blocker.stop()
    assert process.returncode != 0, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], stderr
    assert "going on unlocked" not in stderr
    assert not (emg.runtime / "patterns").exists()
    assert leftovers(emg) == []


class LockRun:
    """What `lock.global_read_lock` reads of a run, with the session on the test's server."""

    def __init__(self, mariadb, database, lock_timeout, mode="required"):
        self.config = {"mysql": {"lock": mode, "lock_timeout": lock_timeout, "max_freeze": 5}}
        settings = mysql.Connection(None, None, mariadb.socket, "root", database)
        self.plugin_state = {NAME: {"settings": settings, "connection": mysql.connect(settings)}}
        self.lock_state, self.freeze_deadline, self.freeze_window_ms = "not used", None, None
        self.step, self.warnings = "taking the consistency point", []

    def state(self, plugin):
        return self.plugin_state.setdefault(plugin, {})

    def query(self, statement):
        with self.state(NAME)["connection"].cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()


def flush_waiting(mariadb) -> bool:
    return "FLUSH" in mariadb.sql("SELECT INFO FROM information_schema.PROCESSLIST "
                                  "WHERE INFO LIKE 'FLUSH TABLES WITH READ LOCK%'")


def watchdog_connects_late(monkeypatch, before):
    """The watchdog's KILL comes late, after `before()` (as on a loaded server, where its own
    connection takes a while)."""
    connect = mysql.connect

    def late(*args, **kwargs):
        if threading.current_thread().name.startswith("emg-borg kill"):
            before()
        return connect(*args, **kwargs)

    monkeypatch.setattr(mysql, "connect", late)


def wait_until(condition, what):
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_lock_had_as_the_watchdog_fires_counts_in_the_freeze_from_the_lock(emg, mariadb, monkeypatch):
    """The long query ends just as the watchdog fires: the FLUSH gets the lock while the
    watchdog's KILL QUERY is on its way, and stopping the watchdog waits for that KILL (which
    finds the session idle: MariaDB ignores it). The lock is held all that time: the freeze
    counts from the lock, not from when the watchdog was stopped (and max_freeze with it)."""
    blocker = LongQuery(mariadb, emg.database)

    def lock_had_meanwhile():
        blocker.stop()
        wait_until(lambda: not flush_waiting(mariadb), "FLUSH still waits")
        time.sleep(0.5)

    watchdog_connects_late(monkeypatch, lock_had_meanwhile)
    run = LockRun(mariadb, emg.database, 1.2)  # the server's own lock_wait_timeout: 2 s
    try:
        with lock.global_read_lock(run):
            assert run.lock_state == "held"
            assert run.state(NAME)["binlog"] is not None
            assert run.query("SELECT 1") == ((1,),)
    finally:
        blocker.stop()
        lock.close(run)
    assert run.freeze_window_ms >= 500


def test_no_watchdog_outlives_an_interrupted_wait_for_the_lock(monkeypatch):
    """SIGINT (KeyboardInterrupt) while the FLUSH waits: its watchdog is stopped, and never
    sends a KILL later (nor runs inside PyMySQL while the interpreter exits)."""

    class Interrupting:
        def thread_id(self):
            return 1

        def cursor(self):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, statement, args=None):
            if statement.startswith("FLUSH"):
                raise KeyboardInterrupt

        def close(self):
            pass

    run = LockRun.__new__(LockRun)
    run.config = {"mysql": {"lock": "required", "lock_timeout": 30, "max_freeze": 5}}
    run.plugin_state = {NAME: {"settings": mysql.Connection(None, None, "/nonexistent.sock", "root", "emg"),
                               "connection": Interrupting()}}
    kills = []
    monkeypatch.setattr(mysql, "connect", lambda *args, **kwargs: kills.append(args))
    with pytest.raises(KeyboardInterrupt):
        with lock.global_read_lock(run):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("emg-borg kill")] and kills == []
