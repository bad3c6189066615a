"""Fault injection: each step of a backup fails in turn, for each provider this machine runs for
real here (none, Btrfs). After every failure: a non-zero exit, one error line naming the step and
the cause, nothing left behind (snapshot, mount, staging file, run lock), no lock held in the
database (another connection writes at once), and the next backup succeeds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pymysql
import pytest

from conftest import Emg, leftovers

pytestmark = [pytest.mark.e2e]

REAL_MYSQLDUMP = shutil.which("mysqldump") or "mysqldump"
REAL_BTRFS = shutil.which("btrfs") or "btrfs"
REAL_MOUNT = shutil.which("mount") or "mount"

# step -> (fake commands on PATH, extra configuration, the words the one error line must hold)
FAULTS = {
    "server.cfg": ({}, None, "server.cfg"),
    "run lock": ({}, None, "another emg-borg backup is running"),
    "connect": ({}, "[mysql]\nport = 1\n", "preflight check failed: cannot connect to MySQL"),
    "message id": ({}, '[seqno]\ncommand = "false"\n', "[seqno] command (false) failed (exit 1)"),
    "seqno garbage": ({}, '[seqno]\ncommand = "echo many"\n', "printed 'many', not a message id"),
    "dump start": ({"mysqldump": "echo 'mysqldump: Got error: 1045' >&2; exit 2"}, None,
                   "mysqldump of {db} failed (exit 2): mysqldump: Got error: 1045"),
    "dump midway": ({"mysqldump": f'{REAL_MYSQLDUMP} "$@" | head -c 2000; echo "mysqldump: lost connection" >&2; '
                                  f'exit 3'}, None, "mysqldump of {db} failed (exit 3): mysqldump: lost connection"),
    "dump without completion": ({"mysqldump": f'{REAL_MYSQLDUMP} "$@" | head -n -2'}, None,
                                "mysqldump of {db} is incomplete: no '-- Dump completed' line at its end"),
    "staging disk full": ({}, None, "Got errno 28 on write (no space left on device where the dump is staged"),
    "snapshot": ({"btrfs": f'[ "$1 $2" = "subvolume snapshot" ] && {{ echo "ERROR: cannot snapshot: Read-only '
                           f'file system" >&2; exit 1; }}; exec {REAL_BTRFS} "$@"'}, None,
                 "cannot snapshot: Read-only file system"),
    "mount": ({"mount": f'case "$*" in *bind*) echo "mount: permission denied" >&2; exit 32;; esac; '
                        f'exec {REAL_MOUNT} "$@"'}, None, "mount: permission denied"),
}
BTRFS_ONLY = {"snapshot", "mount"}
SLEEP = f"sleep 30.{uuid.uuid4().int % 10**6:06d}"  # no other process on this host sleeps this long
SLOW_DUMP = {"mysqldump": f'{REAL_MYSQLDUMP} "$@"; exec {SLEEP}'}  # dumps, then hangs before it exits


def fake_bin(tmp_path, fakes: dict) -> str:
    directory = tmp_path / "fake-bin"
    directory.mkdir(exist_ok=True)
    for name, body in fakes.items():
        (directory / name).write_text(f"#!/bin/bash\n{body}\n")
        (directory / name).chmod(0o755)
    return str(directory)


def database_is_writable(mariadb, database) -> bool:
    """Another connection can write at once: no global read lock is left behind."""
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = 2")
            cursor.execute("CREATE TABLE IF NOT EXISTS fault_probe (n INT)")
            cursor.execute("INSERT INTO fault_probe VALUES (1)")
        return True
    except pymysql.err.OperationalError:
        return False
    finally:
        connection.close()


@pytest.fixture(params=["none", "btrfs"])
def provider(request):
    return request.param


@pytest.mark.parametrize("step", sorted(FAULTS))
def test_each_failing_step_leaves_nothing_and_the_next_backup_works(step, provider, tmp_path, mariadb, monkeypatch,
                                                                    request):
    if step in BTRFS_ONLY and provider != "btrfs":
        pytest.skip("a step of the btrfs provider only")
    spooldir = None
    if provider == "btrfs":
        spooldir = request.getfixturevalue("btrfs_mount") / "spool" / "emg"
    fakes, extra, words = FAULTS[step]
    emg = Emg(tmp_path, mariadb, provider=provider, spooldir=spooldir, extra_config=extra or "")
    words = words.format(db=emg.database)
    cleanup = []
    if fakes:
        monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, fakes)}{os.pathsep}{os.environ['PATH']}")
    if step == "server.cfg":
        good = emg.tree.server_cfg.read_text()
        emg.tree.server_cfg.write_text(good + "\nCONNECTOR broken <\nX=1\n")
        cleanup.append(lambda: emg.tree.server_cfg.write_text(good))
    if step == "run lock":
        holder = subprocess.Popen(["sleep", "60"])
        emg.runtime.mkdir(mode=0o700)
        (emg.runtime / "lock").write_text(f'{{"pid": {holder.pid}, "run_id": "other", "started": "now"}}')
        cleanup += [lambda: (holder.kill(), holder.wait()), lambda: (emg.runtime / "lock").unlink()]
    if step == "staging disk full":
        mariadb.sql("CREATE TABLE filler (b LONGBLOB); INSERT INTO filler VALUES (REPEAT('x', 400000))", emg.database)
        emg.runtime.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(emg.runtime)], check=True)
        cleanup.append(lambda: subprocess.run(["umount", str(emg.runtime)], check=True))
    try:
        result = emg.emg_borg("before-backup", check=False)
        # What the test itself set up (another run's lock holder, the tiny tmpfs) goes first, so
        # that what remains is what emg-borg left.
        if step == "staging disk full":
            assert [m for m in subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True)
                    .stdout.split() if m.startswith(f"{emg.runtime}/")] == []  # nothing mounted below it
    finally:
        for undo in reversed(cleanup):
            undo()
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode in (1, 2), result.stderr
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    own = [p for p in leftovers(emg) if p != str(emg.runtime)]  # the test made runtime_dir for some steps
    assert own == [], own
    assert not list(tmp_path.glob("btrfs/emg-borg-*"))  # no snapshot at the file system's top level
    assert database_is_writable(mariadb, emg.database)
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1] if fakes else os.environ["PATH"])
    emg.write_config(provider)
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def wait_for_child(parent: int, name: str, timeout=30) -> None:
    deadline = time.monotonic() + timeout
    while not subprocess.run(["pgrep", "-P", str(parent), "-x", name], capture_output=True).stdout:
        assert time.monotonic() < deadline, f"{name} never started"
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("where", ["freeze", "dump wait"])
def test_a_signal_in_the_freeze_or_the_dump_wait_releases_everything(where, signum, provider, tmp_path, mariadb,
                                                                     monkeypatch, request):
    spooldir = request.getfixturevalue("btrfs_mount") / "spool" / "emg" if provider == "btrfs" else None
    if where == "freeze":
        emg = Emg(tmp_path, mariadb, provider=provider, spooldir=spooldir,
                  extra_config=f'[seqno]\ncommand = "{SLEEP}"\ncommand_timeout = 60\n')
    else:
        monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, SLOW_DUMP)}{os.pathsep}{os.environ['PATH']}")
        emg = Emg(tmp_path, mariadb, provider=provider, spooldir=spooldir)
    process = subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_child(process.pid, "sleep")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        subprocess.run(["pkill", "-KILL", "-f", f"^{SLEEP}$"])
    name = signal.Signals(signum).name
    assert process.returncode == 1, stderr
    assert ("interrupted" in stderr) and (name in stderr or signum == signal.SIGINT), stderr
    assert leftovers(emg) == []
    assert database_is_writable(mariadb, emg.database)


@pytest.mark.parametrize("where", ["freeze", "dump wait"])
def test_sigkill_leaves_what_the_next_run_removes_and_names(where, provider, tmp_path, mariadb, monkeypatch, request):
    spooldir = request.getfixturevalue("btrfs_mount") / "spool" / "emg" if provider == "btrfs" else None
    emg = Emg(tmp_path, mariadb, provider=provider, spooldir=spooldir,
              extra_config=f'[seqno]\ncommand = "{SLEEP}"\ncommand_timeout = 60\n' if where == "freeze" else "")
    if where == "dump wait":
        monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, SLOW_DUMP)}{os.pathsep}{os.environ['PATH']}")
    script = tmp_path / "backup.sh"  # a driving script that dies with the hook: the run's owner is gone
    script.write_text(f"{sys.executable} -m emg_borg -c {emg.config_path} before-backup\n")
    driver = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            children = subprocess.run(["pgrep", "-P", str(driver.pid)], capture_output=True, text=True).stdout.split()
            # In the dump wait the fake mysqldump has dumped and then become `sleep`.
            if children and subprocess.run(["pgrep", "-P", children[0], "-x", "sleep"], capture_output=True).stdout:
                break
            assert time.monotonic() < deadline, "the step was never reached"
            time.sleep(0.01)
        os.kill(int(children[0]), signal.SIGKILL)
        driver.kill()
    finally:
        driver.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"^{SLEEP}$"])
    assert (emg.runtime / "ledger.json").exists()  # what the killed run recorded
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1] if where == "dump wait"
                       else os.environ["PATH"])
    emg.write_config(provider)
    result = emg.emg_borg("before-backup")
    assert "found leftovers of an earlier run" in result.stderr and "releasing them" in result.stderr
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []
    assert database_is_writable(mariadb, emg.database)
