"""The dump taken on a GTID replica at exactly the consistency point (`[mysql.replica]`).

Two real MariaDB servers: the session's primary (binary log on) and a read-only GTID replica of
it started for this module. A writer inserts routelog rows on the primary without pause while
backups run; the dump taken on the replica must end exactly at the message id read on the
primary in the freeze, and the replica must replicate again after every run and every fault.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import TEST_MARK, Emg, borg_cat, borg_list, dump_path, leftovers
from emg_borg.demo.mariadb import MariaDB
from emg_borg.demo.sample import DB_PASSWORD, DB_USER, load_schema
from emg_borg.plugins.mysql.replica_guard import LOCK as REPLICA_LOCK

pytestmark = [pytest.mark.e2e]

FIRST_ID = 5_000_000


@pytest.fixture(scope="module")
def replica(mariadb, tmp_path_factory):
    server = MariaDB(tmp_path_factory.mktemp("replica"), server_id=2, read_only=True)
    try:
        server.start()
        server.replicate_from(mariadb)
        yield server
    finally:
        server.stop()


@pytest.fixture
def healthy(replica, mariadb):
    """The replica replicates, caught up, before and after the test (a test that broke it must
    have seen emg-borg leave it as it found it; this puts it right for the next)."""
    _restore_replication(replica, mariadb)
    yield replica
    _restore_replication(replica, mariadb)


def _restore_replication(replica, primary):
    replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE;")
    replica.wait_caught_up(primary)


def replicating(replica) -> bool:
    status = replica.replica_status()
    return (status.get("Slave_IO_Running"), status.get("Slave_SQL_Running"), status.get("Until_Condition")) == \
        ("Yes", "Yes", "None")


def wait_replicating(replica, seconds=30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if replicating(replica):
            return True
        time.sleep(0.1)
    return False


def replicated_emg(tmp_path, primary, replica, extra="", before="") -> Emg:
    """A sample installation whose database has reached the replica, configured to dump there."""
    emg = Emg(tmp_path, primary, extra_config=before + replica_config(replica, extra))
    replica.wait_caught_up(primary)
    return emg


def replica_config(replica, extra="") -> str:
    return f'[mysql.replica]\nhost = "127.0.0.1"\nport = {replica.port}\n{extra}'


class Writer:
    """Inserts routelog rows on the primary as fast as it can, noting when each commit returned."""

    def __init__(self, primary, database):
        import pymysql

        self.connection = pymysql.connect(host="127.0.0.1", port=primary.port, user=DB_USER, password=DB_PASSWORD,
                                          database=database, autocommit=True)
        self.stop, self.commits, self.next_id = threading.Event(), [], FIRST_ID
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with self.connection.cursor() as cursor:
            while not self.stop.is_set():
                self.next_id += 1
                cursor.execute("INSERT INTO routelog (id, connector, sender, recipient, status) "
                               "VALUES (%s, 'smpp1', '4670', '4671', 1)", (self.next_id,))
                self.commits.append(time.monotonic())

    def __enter__(self):
        self.thread.start()
        while not self.commits:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.connection.close()

    def worst_gap(self, start: float, end: float) -> float:
        times = [t for t in self.commits if start <= t <= end]
        return max((b - a for a, b in zip(times, times[1:])), default=end - start)


def newest_id_in_dump(dump: bytes) -> int:
    ids = [int(i) for block in re.findall(rb"INSERT INTO `routelog` VALUES\s*(.*?);\n", dump, re.S)
           for i in re.findall(rb"\((\d+),", block)]
    return max(ids)


def staged_dump(emg: Emg, manifest: dict) -> bytes:
    return (emg.runtime / "staging" / dump_path(manifest)).read_bytes()


def before_backup(emg: Emg) -> dict:
    emg.emg_borg("before-backup")
    return json.loads((emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text())


def dump_entry(manifest: dict) -> dict:
    (entry,) = manifest["dumps"]
    return entry


def test_dumps_on_the_replica_end_exactly_at_the_message_id_under_load(tmp_path, mariadb, healthy):
    """Six staged runs and one streamed through borgmatic, a writer inserting all along: each
    dump, taken on the replica, ends exactly at the id read on the primary in the freeze; the
    replica replicates again after each run; the manifest says which server and position."""
    emg = replicated_emg(tmp_path, mariadb, healthy)
    ids = []
    with Writer(mariadb, emg.database):
        for _ in range(6):
            manifest = before_backup(emg)
            ids.append(manifest["message_id"])
            try:
                entry = dump_entry(manifest)
                assert entry["server"] == "replica" and entry["replica"].endswith(f"127.0.0.1:{healthy.port}/{emg.database}")
                assert re.fullmatch(r"0-1-\d+", entry["gtid_position"]) and entry["replication_paused_ms"] > 0
                assert newest_id_in_dump(staged_dump(emg, manifest)) == manifest["message_id"] > FIRST_ID
                assert replicating(healthy)
            finally:
                emg.emg_borg("after-backup")
        result = emg.borgmatic_create()
        assert result.returncode == 0
        (archive,) = borg_list(emg.repo)
        manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
        assert dump_entry(manifest)["transfer"] == "stream" and dump_entry(manifest)["server"] == "replica"
        assert newest_id_in_dump(borg_cat(emg.repo, archive, dump_path(manifest))) == manifest["message_id"]
    assert ids == sorted(set(ids)), "the writer went on between the runs"
    assert replicating(healthy)
    assert leftovers(emg) == []


def the_error(result) -> str:
    """The one error line emg-borg printed (and that there is exactly one)."""
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


# mysqldump that waits before it starts, in one process (no child left when it is killed).
SLOW_START = f'exec {sys.executable} -c "import os, sys, time; time.sleep({{seconds}}); os.execv(sys.argv[1], sys.argv[1:])" "$REAL" "$@"'


def wrapper(tmp_path, body: str) -> str:
    """A mysqldump wrapper running `body` (with "$REAL" the real mysqldump)."""
    path = tmp_path / "mysqldump-wrapper"
    path.write_text(f'#!/bin/bash\nREAL={shutil.which("mysqldump")}\n{body}\n')
    path.chmod(0o755)
    return str(path)


def test_the_primary_s_writer_is_not_held_while_the_replica_catches_up(tmp_path, mariadb, healthy):
    """A replica applying two seconds late: the run waits for it before and after the freeze,
    while the writer on the primary goes on; only the freeze holds it, and the dump is still
    exactly at the message id."""
    emg = replicated_emg(tmp_path, mariadb, healthy)
    healthy.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=2; START SLAVE;")
    with Writer(mariadb, emg.database) as writer:
        time.sleep(0.5)
        started = time.monotonic()
        manifest = before_backup(emg)
        ended = time.monotonic()
        end_position = mariadb.sql("SELECT @@gtid_binlog_pos").strip()
        try:
            assert newest_id_in_dump(staged_dump(emg, manifest)) == manifest["message_id"]
            commits = [t for t in writer.commits if started <= t <= ended]
        finally:
            emg.emg_borg("after-backup")
    # The writer committed on the primary while the run waited for the replica after the freeze:
    # transactions past the consistency point's position, before before-backup returned.
    after_point = int(end_position.rpartition("-")[2]) - int(dump_entry(manifest)["gtid_position"].rpartition("-")[2])
    assert after_point > 50 and len(commits) > after_point / 2, (after_point, len(commits))
    print(f"worst INSERT gap {writer.worst_gap(started, ended) * 1000:.0f} ms, freeze window "
          f"{manifest['freeze_window_ms']} ms, run {ended - started:.1f} s, {after_point} commits after the point")
    assert replicating(healthy)
    assert leftovers(emg) == []


UNFIT = {
    # name: (what breaks the replica, what puts it right, the words of the one line)
    "stopped": ("STOP SLAVE", "START SLAVE", "is stopped (IO thread No, SQL thread No)"),
    "writable": ("SET GLOBAL read_only = 0", "SET GLOBAL read_only = 1", "is not read-only"),
}


@pytest.mark.parametrize("fault", sorted(UNFIT))
def test_an_unfit_replica_fails_the_run_with_one_line_or_falls_back_to_the_primary(tmp_path, mariadb, healthy, fault):
    breaks, mends, words = UNFIT[fault]
    emg = replicated_emg(tmp_path, mariadb, healthy)
    healthy.sql(breaks)
    try:
        before = healthy.replica_status()
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 1
        assert words in the_error(result)
        assert not (emg.runtime / "patterns").exists()
        # Left as found: emg-borg does not start a replication the operator stopped.
        assert healthy.replica_status()["Slave_SQL_Running"] == before["Slave_SQL_Running"]
        # A run without the database category takes no dump: the replica is not its concern.
        emg.config_path.write_text(emg.config_path.read_text().replace(
            "[backup]\n", '[backup]\ncategories = ["config", "data"]\n', 1))
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 0, result.stderr
        emg.emg_borg("after-backup")
        emg.write_config(extra=replica_config(healthy, 'fallback = "primary"\n'))
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 0, result.stderr
        assert "the dump is taken on the primary, not the replica" in result.stderr and words in result.stderr
        manifest = json.loads((emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text())
        entry = dump_entry(manifest)
        assert entry["server"] == "primary" and words in entry["replica_fallback"]
        assert any("taken on the primary" in warning for warning in manifest["warnings"])
        assert newest_id_in_dump(staged_dump(emg, manifest)) == manifest["message_id"]
        emg.emg_borg("after-backup")
        assert healthy.replica_status()["Slave_SQL_Running"] == before["Slave_SQL_Running"]
    finally:
        healthy.sql(mends)
    assert leftovers(emg) == []


def test_a_broken_replica_is_named_with_its_error(tmp_path, mariadb, healthy):
    emg = replicated_emg(tmp_path, mariadb, healthy)
    conflict = FIRST_ID - 7
    healthy.sql(f"SET SESSION sql_log_bin = 0; INSERT INTO routelog (id) VALUES ({conflict})", emg.database)
    mariadb.sql(f"INSERT INTO routelog (id) VALUES ({conflict})", emg.database)
    deadline = time.monotonic() + 30
    while healthy.replica_status().get("Slave_SQL_Running") != "No" and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 1
        line = the_error(result)
        assert "is broken (IO thread Yes, SQL thread No)" in line and "Duplicate entry" in line
    finally:
        healthy.sql(f"SET SESSION sql_log_bin = 0; DELETE FROM routelog WHERE id = {conflict}", emg.database)
        healthy.sql("START SLAVE")
    assert leftovers(emg) == []


def test_a_replica_too_far_behind_fails_or_falls_back(tmp_path, mariadb, healthy):
    emg = replicated_emg(tmp_path, mariadb, healthy, "max_wait = 1\n")
    healthy.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=30; START SLAVE;")
    mariadb.sql(f"INSERT INTO routelog (id) VALUES ({FIRST_ID - 3})", emg.database)
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "did not catch up with the primary" in the_error(result) and "max_wait (1 s)" in the_error(result)
    assert replicating(healthy)  # never paused
    emg.write_config(extra=replica_config(healthy, 'max_wait = 1\nfallback = "primary"\n'))
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text())
    assert dump_entry(manifest)["server"] == "primary"
    assert "did not catch up" in dump_entry(manifest)["replica_fallback"]
    emg.emg_borg("after-backup")
    assert replicating(healthy)
    assert leftovers(emg) == []


def test_sigterm_while_waiting_for_the_replica_stops_the_run_even_with_fallback(tmp_path, mariadb, healthy):
    """SIGTERM while before-backup waits for a lagging replica is not a reason to fall back to
    the primary: the run stops (it went on and dumped the primary, exit 0)."""
    emg = replicated_emg(tmp_path, mariadb, healthy, 'max_wait = 30\nfallback = "primary"\n')
    healthy.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=60; START SLAVE;")
    mariadb.sql(f"INSERT INTO routelog (id) VALUES ({FIRST_ID - 5})", emg.database)
    process = start_before_backup(emg)
    try:
        deadline = time.monotonic() + 30
        while not healthy.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT MASTER_GTID_WAIT%'"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "before-backup never waited for the replica"
            time.sleep(0.02)
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    finally:
        stop_if_running(process)
    assert process.returncode != 0, stderr
    assert "interrupted by SIGTERM" in the_error(subprocess.CompletedProcess([], process.returncode, "", stderr))
    assert "taken on the primary" not in stderr
    assert not (emg.runtime / "patterns").exists()
    assert leftovers(emg) == []


def test_a_dump_killed_midway_on_the_replica_fails_the_run_and_replication_runs(tmp_path, mariadb, healthy):
    dump = wrapper(tmp_path, '"$REAL" "$@" | head -c 2000; echo "mysqldump: Lost connection" >&2; exit 3')
    emg = replicated_emg(tmp_path, mariadb, healthy, before=f'[mysql]\nmysqldump = "{dump}"\n\n')
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "failed (exit 3): mysqldump: Lost connection" in the_error(result)
    assert replicating(healthy)
    assert leftovers(emg) == []


def start_before_backup(emg: Emg) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_if_running(process: subprocess.Popen) -> None:
    """A test's own before-backup, killed if a failed assertion left it running."""
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_paused(replica, process, seconds=30) -> None:
    deadline = time.monotonic() + seconds
    while replica.replica_status().get("Slave_SQL_Running") != "No":
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "replication was never paused"
        time.sleep(0.02)


def paused_entry(emg: Emg) -> dict:
    (entry,) = [e for e in json.loads((emg.runtime / "ledger.json").read_text())["entries"]
                if e["kind"] == "replica-paused"]
    return entry


@pytest.mark.parametrize("guard", ["guard alive", "guard killed too"])
def test_emg_borg_killed_while_replication_is_paused(tmp_path, mariadb, healthy, guard):
    """SIGKILL of before-backup while the replica is stopped (its mysqldump slow to start): the
    guard resumes replication at once; with the guard killed too, the next release (on-error)
    resumes it from the ledger. Nothing is left behind."""
    dump = wrapper(tmp_path, SLOW_START.format(seconds=8))
    emg = replicated_emg(tmp_path, mariadb, healthy, before=f'[mysql]\nmysqldump = "{dump}"\nlock_timeout = 20\n\n')
    process = start_before_backup(emg)
    try:
        wait_paused(healthy, process)
        entry = paused_entry(emg)
        if guard == "guard killed too":
            os.kill(entry["guard_pid"], signal.SIGKILL)
        process.kill()
        process.wait()
        if guard == "guard alive":
            assert wait_replicating(healthy, 15), healthy.replica_status()
        else:
            time.sleep(1)
            assert not replicating(healthy)
        result = emg.emg_borg("on-error", check=False)
        assert replicating(healthy), (result.stderr, healthy.replica_status())
        assert not (emg.runtime / "ledger.json").exists()
    finally:
        stop_if_running(process)
    assert leftovers(emg) == []


def test_a_lost_held_session_resumes_replication_only_through_the_replica_s_lock(tmp_path, mariadb, healthy):
    """The run's held session on the replica is lost while replication is paused (a network cut,
    a KILL): the replica's lock goes with it, and another run may hold it by then, its own pause
    under way. The failing run must not START SLAVE under that run: it resumes as the guard does,
    through the lock (busy here, so it is left to the guard, which resumes once the lock is free)."""
    import pymysql

    dump = wrapper(tmp_path, SLOW_START.format(seconds=8))
    emg = replicated_emg(tmp_path, mariadb, healthy, before=f'[mysql]\nmysqldump = "{dump}"\nlock_timeout = 20\n\n')
    process = start_before_backup(emg)
    other = pymysql.connect(unix_socket=healthy.socket, user="root", autocommit=True)  # "another run"
    try:
        wait_paused(healthy, process)
        with other.cursor() as cursor:
            cursor.execute(f"KILL CONNECTION {int(paused_entry(emg)['holder'])}")
            cursor.execute("SELECT GET_LOCK(%s, 10)", (REPLICA_LOCK,))
            assert cursor.fetchone()[0] == 1
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "is still stopped (another run holds the replica's lock); the guard keeps trying" in stderr, stderr
        time.sleep(1)
        assert healthy.replica_status()["Slave_SQL_Running"] == "No"  # not started under the other run
        with other.cursor() as cursor:
            cursor.execute("SELECT RELEASE_LOCK(%s)", (REPLICA_LOCK,))
        assert wait_replicating(healthy, 30), healthy.replica_status()  # the guard resumed it
    finally:
        other.close()
        stop_if_running(process)
    emg.emg_borg("on-error", check=False)
    assert replicating(healthy) and not (emg.runtime / "ledger.json").exists()
    assert leftovers(emg) == []


def test_doctor_and_dry_run_show_the_replica_and_fail_on_a_wrong_one(tmp_path, mariadb, healthy):
    emg = replicated_emg(tmp_path, mariadb, healthy)
    result = emg.emg_borg("doctor", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"the dump is taken on replica emguser@127.0.0.1:{healthy.port}/{emg.database}, replicating from " \
           f"127.0.0.1:{mariadb.port} (server id 1) by GTID, read-only" in out
    assert re.search(r"replica at GTID 0-1-\d+, primary at 0-1-\d+: \d+ transaction\(s\) behind, \d+ s lag", out)
    result = emg.emg_borg("before-backup", "--dry-run", check=False)
    assert result.returncode == 0 and "the dump is taken on replica" in result.stderr
    # The primary named as its own replica, and a server replicating another source.
    emg.write_config(extra=f'[mysql.replica]\nhost = "127.0.0.1"\nport = {mariadb.port}\n')
    result = emg.emg_borg("doctor", check=False)
    assert result.returncode == 1 and "reaches the primary itself" in result.stdout
    third = MariaDB(tmp_path / "third", server_id=3, read_only=True)
    try:
        third.start()
        load_schema(third, rows=0, database=emg.database)  # the database and the EMG user
        emg.write_config(extra=f'[mysql.replica]\nsocket = "{third.socket}"\n')
        result = emg.emg_borg("doctor", check=False)
        assert result.returncode == 1 and "is not a replica (SHOW SLAVE STATUS is empty)" in result.stdout
        third.replicate_from(healthy)
        healthy.wait_caught_up(mariadb)
        third.wait_caught_up(healthy)
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 1
        assert "replicates another source (server id 2 at 127.0.0.1:" in the_error(result)
        assert "not this primary (server id 1)" in the_error(result)
    finally:
        third.stop()
    assert leftovers(emg) == []


def test_the_replica_killed_while_paused_fails_the_run_and_replicates_again_once_back(tmp_path, mariadb, healthy,
                                                                                    monkeypatch):
    """The replica's server dies (SIGKILL) while replication is paused for the run: the run fails
    with one line and leaves nothing; on-error, run at once while it is still down, cannot resume
    it and leaves the guard trying; once the server is back (without starting replication by
    itself), the guard resumes it, before any other emg-borg command runs."""
    dump = wrapper(tmp_path, SLOW_START.format(seconds=4))
    emg = replicated_emg(tmp_path, mariadb, healthy, before=f'[mysql]\nmysqldump = "{dump}"\nlock_timeout = 20\n\n')
    process = start_before_backup(emg)
    try:
        wait_paused(healthy, process)
        os.killpg(healthy.process.pid, signal.SIGKILL)
        healthy.process.wait()
        healthy.process = None
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        lines = [text for text in stderr.splitlines() if "error:" in text]
        # Depending on the moment: lost while bringing it to the position, or mysqldump cannot connect.
        assert re.search(rf"error: (replica emguser@127.0.0.1:{healthy.port}/{emg.database}: Lost connection|"
                         rf"mysqldump's connection to the server failed: .*127.0.0.1:{healthy.port}\): Connection refused)",
                         lines[0]), stderr
        # The replica could not be told to resume: said so, once, with who will.
        assert lines[1:] == [] or (len(lines) == 2 and "is still stopped" in lines[1]
                                   and "the next after-backup, on-error or before-backup resumes it" in lines[1]), stderr
        # borgmatic's on-error follows at once, the replica still down: the ledger entry stays.
        result = emg.emg_borg("on-error", check=False)
        assert "stopped by an earlier run, could not be resumed" in result.stderr, result.stderr
        assert paused_entry(emg)
    finally:
        stop_if_running(process)
        if healthy.process is None:
            with monkeypatch.context() as env:
                env.delenv(TEST_MARK)  # the module's server, not this test's process
                # Not started by the server itself: only emg-borg's resume can make it replicate.
                healthy.extra_args = ("--skip-slave-start",)
                try:
                    healthy.start()
                finally:
                    healthy.extra_args = ()
    status = healthy.replica_status()
    assert wait_replicating(healthy, 60), {key: status.get(key) for key in (
        "Slave_IO_Running", "Slave_SQL_Running", "Until_Condition", "Last_IO_Error", "Last_SQL_Error")}
    emg.emg_borg("on-error", check=False)  # the entry the guard could not remove
    assert not (emg.runtime / "ledger.json").exists()
    assert leftovers(emg) == []


def test_two_installations_sharing_a_replica_take_turns(tmp_path, mariadb, healthy):
    """A pauses the replica (its mysqldump slow to start); B, started meanwhile, sees it paused by
    another run, waits for the replica's lock and then dumps at its own consistency point."""
    slow = wrapper(tmp_path, SLOW_START.format(seconds=3))
    first = replicated_emg(tmp_path / "a", mariadb, healthy, "max_wait = 30\n", before=f'[mysql]\nmysqldump = "{slow}"\n\n')
    second = replicated_emg(tmp_path / "b", mariadb, healthy, "max_wait = 30\n")
    with Writer(mariadb, first.database):
        a = start_before_backup(first)
        try:
            wait_paused(healthy, a)
            b = start_before_backup(second)
            b_out, b_err = b.communicate(timeout=120)
            a_out, a_err = a.communicate(timeout=120)
        finally:
            stop_if_running(a)
        assert a.returncode == 0, a_err
        assert b.returncode == 0, b_err
        for emg in (first, second):
            manifest = json.loads((emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text())
            assert dump_entry(manifest)["server"] == "replica"
            assert newest_id_in_dump(staged_dump(emg, manifest)) == manifest["message_id"]
            emg.emg_borg("after-backup")
    assert replicating(healthy)
    assert leftovers(first) == [] and leftovers(second) == []


def test_a_run_waiting_for_a_killed_one_lets_its_guard_resume_and_dumps_on_the_replica(tmp_path, mariadb, healthy):
    """Two installations sharing the replica: A is SIGKILLed while it has replication paused, and B
    waits for the replica's lock. B does not take A's pause for a stopped replica (it failed so):
    it lets A's guard resume replication, then dumps there at its own consistency point."""
    slow = wrapper(tmp_path, SLOW_START.format(seconds=8))
    first = replicated_emg(tmp_path / "a", mariadb, healthy, before=f'[mysql]\nmysqldump = "{slow}"\nlock_timeout = 20\n\n')
    second = replicated_emg(tmp_path / "b", mariadb, healthy, "max_wait = 30\n")
    a = start_before_backup(first)
    b = None
    try:
        wait_paused(healthy, a)
        b = start_before_backup(second)
        deadline = time.monotonic() + 30
        while not healthy.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT GET_LOCK%'"):
            assert b.poll() is None, b.communicate()
            assert time.monotonic() < deadline, "B never waited for the replica's lock"
            time.sleep(0.02)
        a.kill()
        a.wait()
        _, b_err = b.communicate(timeout=120)
    finally:
        stop_if_running(a)
        if b is not None:
            stop_if_running(b)
    assert b.returncode == 0, b_err
    manifest = json.loads((second.runtime / "staging" / "emg-borg" / "manifest.json").read_text())
    assert dump_entry(manifest)["server"] == "replica"
    assert newest_id_in_dump(staged_dump(second, manifest)) == manifest["message_id"]
    second.emg_borg("after-backup")
    first.emg_borg("on-error", check=False)
    assert replicating(healthy)
    assert leftovers(first) == [] and leftovers(second) == []


def test_a_hung_before_backup_is_taken_over_by_its_guard(tmp_path, mariadb, healthy):
    """before-backup stopped (SIGSTOP) while replication is paused: once the pause has lasted
    longer than it can, the guard ends the hung run's session on the replica and resumes."""
    emg = replicated_emg(tmp_path, mariadb, healthy, "max_wait = 1\n",
                         before=f'[mysql]\nmysqldump = "{wrapper(tmp_path, SLOW_START.format(seconds=2))}"\n'
                                'lock_timeout = 1\nmax_freeze = 1\n\n')
    process = start_before_backup(emg)
    try:
        wait_paused(healthy, process)
        os.kill(process.pid, signal.SIGSTOP)
        # The guard waits max_wait + 2 lock_timeout + max_freeze + 10 = 14 s, then takes over.
        assert wait_replicating(healthy, 60), healthy.replica_status()
        os.kill(process.pid, signal.SIGCONT)
        process.communicate(timeout=60)
        assert process.returncode == 1
    finally:
        stop_if_running(process)
    emg.emg_borg("on-error", check=False)
    assert replicating(healthy)
    assert leftovers(emg) == []


def test_a_replica_that_stops_answering_ends_the_run_instead_of_hanging_it(tmp_path, mariadb, healthy):
    emg = replicated_emg(tmp_path, mariadb, healthy, "max_wait = 1\n",
                         before=f'[mysql]\nmysqldump = "{wrapper(tmp_path, SLOW_START.format(seconds=1))}"\n'
                                'lock_timeout = 2\n\n')
    process = start_before_backup(emg)
    try:
        wait_paused(healthy, process)
        os.killpg(healthy.process.pid, signal.SIGSTOP)
        try:
            _, stderr = process.communicate(timeout=120)  # every replica statement is bounded
        finally:
            os.killpg(healthy.process.pid, signal.SIGCONT)
        assert process.returncode == 1
        assert f"127.0.0.1:{healthy.port}" in [line for line in stderr.splitlines() if "error:" in line][0], stderr
    finally:
        stop_if_running(process)
    emg.emg_borg("on-error", check=False)
    assert wait_replicating(healthy, 60), healthy.replica_status()
    assert leftovers(emg) == []


def test_a_replica_promoted_after_a_killed_run_is_not_made_to_replicate_again(tmp_path, mariadb, healthy):
    emg = replicated_emg(tmp_path, mariadb, healthy,
                         before=f'[mysql]\nmysqldump = "{wrapper(tmp_path, SLOW_START.format(seconds=8))}"\n'
                                'lock_timeout = 20\n\n')
    process = start_before_backup(emg)
    try:
        wait_paused(healthy, process)
        os.kill(paused_entry(emg)["guard_pid"], signal.SIGKILL)
        process.kill()
        process.wait()
        healthy.sql("STOP SLAVE; SET GLOBAL read_only = 0")  # the operator promotes it
        result = emg.emg_borg("on-error", check=False)
        assert "is no longer a read-only replica of server id 1 (promoted?): left as it is" in result.stderr
        assert healthy.replica_status()["Slave_SQL_Running"] == "No"
        assert not (emg.runtime / "ledger.json").exists()
    finally:
        stop_if_running(process)
        healthy.sql("SET GLOBAL read_only = 1")
    assert leftovers(emg) == []


def test_a_replica_whose_data_differs_from_the_primary_fails_the_run(tmp_path, mariadb, healthy):
    """A row written on the replica itself (not replicated): at the position its newest id is not
    the primary's, and the run fails rather than archive a dump of another database."""
    emg = replicated_emg(tmp_path, mariadb, healthy)
    stray = FIRST_ID * 10
    healthy.sql(f"SET SESSION sql_log_bin = 0; INSERT INTO routelog (id) VALUES ({stray})", emg.database)
    try:
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 1
        line = the_error(result)
        assert f"gives message id {stray}, the primary gave" in line and "the replica's data differs" in line
    finally:
        healthy.sql(f"SET SESSION sql_log_bin = 0; DELETE FROM routelog WHERE id = {stray}", emg.database)
    assert replicating(healthy)
    assert leftovers(emg) == []


def test_a_replica_user_with_the_documented_privileges_dumps_there(tmp_path, mariadb, healthy):
    """A dedicated user on the replica with the privileges the README lists dumps there; without
    PROCESS (the dump's transaction is seen in information_schema.INNODB_TRX) the preflight names
    it, before replication is paused, instead of the run failing after the freeze."""
    password = "replica-" + os.urandom(6).hex()
    password_file = tmp_path / "replica-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    emg = replicated_emg(tmp_path, mariadb, healthy, f'user = "emgreplica"\npassword_file = "{password_file}"\n')
    # On the replica only (not replicated): the set-up the README describes.
    healthy.sql("SET SESSION sql_log_bin = 0;"
                f"CREATE USER 'emgreplica'@'127.0.0.1' IDENTIFIED BY '{password}';"
                f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{emg.database}`.* TO 'emgreplica'@'127.0.0.1';"
                "GRANT PROCESS, SLAVE MONITOR, REPLICATION SLAVE ADMIN ON *.* TO 'emgreplica'@'127.0.0.1';")
    try:
        manifest = before_backup(emg)
        try:
            assert dump_entry(manifest)["server"] == "replica"
            assert dump_entry(manifest)["replica"].startswith("emgreplica@")
            assert newest_id_in_dump(staged_dump(emg, manifest)) == manifest["message_id"]
        finally:
            emg.emg_borg("after-backup")
        healthy.sql("SET SESSION sql_log_bin = 0; REVOKE PROCESS ON *.* FROM 'emgreplica'@'127.0.0.1';")
        result = emg.emg_borg("before-backup", check=False)
        assert result.returncode == 1
        assert "the user lacks PROCESS" in the_error(result)
        assert not (emg.runtime / "patterns").exists()
    finally:
        healthy.sql("SET SESSION sql_log_bin = 0; DROP USER 'emgreplica'@'127.0.0.1';")
    assert replicating(healthy)
    assert leftovers(emg) == []


@pytest.mark.parametrize("config, words", [
    ('[mysql.replica]\nfallback = "primary"\n', ":{line}: mysql.replica: names no server"),
    ('[mysql]\nlock = "none"\n\n[mysql.replica]\nport = 3306\n', ":{line}: mysql.lock: \"none\" cannot go with"),
])
def test_a_replica_table_that_cannot_work_is_a_configuration_error(tmp_path, mariadb, config, words):
    emg = Emg(tmp_path, mariadb, extra_config=config)
    line = next(number for number, text in enumerate(emg.config_path.read_text().splitlines(), 1)
                if text.startswith("[mysql.replica]" if "names no server" in words else "lock ="))
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 2
    assert words.format(line=line) in the_error(result)
    assert not (emg.runtime / "patterns").exists()
