"""The freeze is bounded: whatever hangs inside the consistency point, the gateway's database
writers are blocked for at most `[mysql] max_freeze` (plus the time to notice), also when
emg-borg itself is stopped and cannot act. A writer inserts a row every few milliseconds; its
longest stall is what the gateway would feel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pymysql
import pytest

from conftest import Emg, leftovers

pytestmark = [pytest.mark.e2e]

MAX_FREEZE = 2
NOTICE = 1.5  # the server's idle-session check and our watchdog's connect, generously


class Writer(threading.Thread):
    """Inserts rows as fast as a busy gateway would and records the longest gap between them."""

    def __init__(self, mariadb, database):
        super().__init__(daemon=True)
        self.connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)
        with self.connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS writer_probe (n BIGINT AUTO_INCREMENT PRIMARY KEY)")
        self.stop, self.longest, self.rows = threading.Event(), 0.0, 0

    def run(self):
        last = time.monotonic()
        with self.connection.cursor() as cursor:
            while not self.stop.is_set():
                cursor.execute("INSERT INTO writer_probe VALUES ()")
                now = time.monotonic()
                self.longest, last, self.rows = max(self.longest, now - last), now, self.rows + 1
                time.sleep(0.005)

    def finish(self) -> float:
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the writer is still blocked"
        self.connection.close()
        return self.longest


class Pid:
    """Signals for a process we did not start ourselves (the hook the script started)."""

    def __init__(self, pid):
        self.pid = pid

    def send_signal(self, signum):
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


def unique_sleep(seconds: int) -> str:
    """A `sleep` command line no other process on this host runs, so the test finds (and kills)
    only its own."""
    return f"sleep {seconds}.{uuid.uuid4().int % 10**6:06d}"


def bounded_emg(tmp_path, mariadb, command):
    return Emg(tmp_path, mariadb, extra_config=f'[mysql]\nmax_freeze = {MAX_FREEZE}\n\n'
                                               f'[seqno]\ncommand = "{command}"\ncommand_timeout = 120\n')


def test_a_hanging_command_inside_the_freeze_is_stopped_at_max_freeze(tmp_path, mariadb):
    sleeper = unique_sleep(60)
    emg = bounded_emg(tmp_path, mariadb, sleeper)
    writer = Writer(mariadb, emg.database)
    writer.start()
    started = time.monotonic()
    result = emg.emg_borg("before-backup", check=False)
    took = time.monotonic() - started
    stall = writer.finish()
    print(f"hanging [seqno] command: before-backup took {took:.2f} s, longest writer stall {stall:.3f} s")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert errors == [f"emg-borg: error: the consistency point passed [mysql] max_freeze ({MAX_FREEZE} s) while "
                      f"reading the message id: the global read lock was released at once and the command stopped; "
                      f"nothing of this run is kept, no archive is made"], result.stderr
    assert stall < MAX_FREEZE + NOTICE, stall
    assert leftovers(emg) == []
    assert subprocess.run(["pgrep", "-f", f"^{sleeper}$"], capture_output=True).stdout == b""  # it was stopped
    # The next backup, with a working command, succeeds.
    emg.write_config("none", f'[mysql]\nmax_freeze = {MAX_FREEZE}\n\n[seqno]\ncommand = "echo 4711"\n')
    manifest = json.loads(emg.emg_borg("before-backup", "--json").stdout)
    assert manifest["message_id"] == 4711 and manifest["warnings"] == []
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_a_hanging_btrfs_snapshot_is_stopped_at_max_freeze(tmp_path, mariadb, btrfs_mount, monkeypatch):
    """The case seen in the field: a snapshot command that hangs (40 s) held every writer."""
    real = shutil.which("btrfs")
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "btrfs").write_text(f'#!/bin/sh\n[ "$1 $2" = "subvolume snapshot" ] && exec sleep 40\nexec {real} "$@"\n')
    (fake / "btrfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg",
              extra_config=f"[mysql]\nmax_freeze = {MAX_FREEZE}\n")
    writer = Writer(mariadb, emg.database)
    writer.start()
    result = emg.emg_borg("before-backup", check=False)
    stall = writer.finish()
    print(f"hanging btrfs snapshot: longest writer stall {stall:.3f} s")
    assert result.returncode == 1
    assert (f"emg-borg: error: the consistency point passed [mysql] max_freeze ({MAX_FREEZE} s) while taking the "
            f"btrfs snapshot") in result.stderr
    assert stall < MAX_FREEZE + NOTICE, stall
    assert leftovers(emg) == [] and not list((btrfs_mount).glob("emg-borg-*"))
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_a_freeze_over_half_its_budget_is_a_warning_in_the_log_and_the_manifest(tmp_path, mariadb):
    emg = bounded_emg(tmp_path, mariadb, "sh -c 'sleep 1.2; echo 99'")
    result = emg.emg_borg("before-backup", "--json")
    manifest = json.loads(result.stdout)
    assert manifest["message_id"] == 99
    [warning] = manifest["warnings"]
    assert warning.startswith("the consistency point took 1.") and f"max_freeze ({MAX_FREEZE} s)" in warning
    assert f"emg-borg: warning: {warning}" in result.stderr
    emg.emg_borg("after-backup")


def test_a_stopped_emg_borg_cannot_hold_the_lock_past_max_freeze(tmp_path, mariadb):
    """SIGSTOP in the freeze: no watchdog of ours can run, so the server must end the lock."""
    sleeper = unique_sleep(60)
    emg = bounded_emg(tmp_path, mariadb, sleeper)
    writer = Writer(mariadb, emg.database)
    writer.start()
    # A backup script drives the hook (as cron would); it dies with it, so its run is a dead one.
    script = tmp_path / "backup.sh"
    script.write_text(f"{sys.executable} -m emg_borg -c {emg.config_path} before-backup\n")
    driver = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = None
    try:
        deadline = time.monotonic() + 30
        while process is None or not subprocess.run(["pgrep", "-P", str(process.pid), "-x", "sleep"],
                                                     capture_output=True).stdout:
            assert time.monotonic() < deadline and driver.poll() is None, "the freeze never began"
            child = subprocess.run(["pgrep", "-P", str(driver.pid)], capture_output=True, text=True).stdout.split()
            process = Pid(int(child[0])) if child else None
            time.sleep(0.01)
        process.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        time.sleep(MAX_FREEZE + NOTICE + 1)  # the writer must be free again by now
        rows_before = writer.rows
        time.sleep(0.5)
        assert writer.rows > rows_before, "writers are still blocked while emg-borg is stopped"
    finally:
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.send_signal(signal.SIGCONT)
        driver.kill()
        driver.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"^{sleeper}$"])
    stall = writer.finish()
    print(f"stopped emg-borg: longest writer stall {stall:.3f} s ({time.monotonic() - stopped_at:.1f} s observed)")
    assert stall < MAX_FREEZE + NOTICE, stall
    # The killed run left its run lock and ledger; the next run releases them and says so.
    emg.write_config("none", '[seqno]\ncommand = "echo 5"\n')
    result = emg.emg_borg("before-backup")
    assert "found leftovers of an earlier run" in result.stderr
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []
