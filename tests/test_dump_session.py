"""The freeze ends on the dump's own session only.

mysqldump connects through a relay that reports its server thread id; the freeze ends when that
session shows its snapshot has begun, whatever other sessions of the same user do meanwhile (EMG's
portal and monitoring scripts use server.cfg's account, the dump's default user). Where the binary
log is on, the dump's head names its snapshot's position, which must be the freeze's. The relay
leaves nothing behind, also when mysqldump fails or the run is killed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pymysql
import pytest

from conftest import TEST_MARK, Emg, borg, borg_list, leftovers, marked_processes
from emg_borg.demo.sample import DB_PASSWORD, DB_USER
from test_consistency import read_by_borg
from test_faults import fake_bin
from test_streaming import filler

pytestmark = [pytest.mark.e2e]

REAL_MYSQLDUMP = subprocess.run(["which", "mysqldump"], capture_output=True, text=True).stdout.strip()
SNAPSHOT_LINE = r"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^']*)', MASTER_LOG_POS=(\d+);"

WRITER = r"""
import sys, pymysql
socket, database = sys.argv[1:3]
connection = pymysql.connect(unix_socket=socket, user="root", database=database, autocommit=True)
cursor = connection.cursor()
cursor.execute("SELECT MAX(id) FROM routelog")
n = cursor.fetchone()[0]
while True:
    n += 1
    cursor.execute("INSERT INTO routelog (id, connector, sender, recipient, status) VALUES (%s, 'w', '1', '2', 0)", (n,))
"""


class Intruders:
    """Short-lived sessions of the dump's own user, as a portal or monitoring script would open
    them, each doing what an older emg-borg took for mysqldump's start."""

    KINDS = ("show tables", "select as mysqldump does", "open transaction")  # `SELECT /*!40001 SQL_NO_CACHE */`

    def __init__(self, emg: Emg, count: int = 6):
        self.port, self.database = emg.mariadb.port, emg.database
        self.stop, self.sessions, self.errors = threading.Event(), {kind: [] for kind in self.KINDS}, []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(count)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def run(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            kind = self.KINDS[n % len(self.KINDS)]
            n += 1
            try:
                connection = pymysql.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD,
                                             database=self.database, autocommit=True)
            except pymysql.err.MySQLError as error:
                self.errors.append(str(error))
                continue
            try:
                self.sessions[kind].append(connection.thread_id())
                with connection.cursor() as cursor:
                    if kind == "show tables":
                        cursor.execute("SHOW TABLES")
                    elif kind == "select as mysqldump does":
                        cursor.execute("SELECT /*!40001 SQL_NO_CACHE */ COUNT(*) FROM routelog")
                    else:
                        cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                        cursor.execute("SELECT COUNT(*) FROM routelog")
                        time.sleep(0.02)
                        cursor.execute("COMMIT")
                    cursor.fetchall()
            except pymysql.err.MySQLError as error:
                self.errors.append(str(error))
            finally:
                connection.close()

    def ids(self) -> set[int]:
        return {session for sessions in self.sessions.values() for session in sessions}


class GeneralLog:
    """The server's general query log, in a file of the test, while the test runs: which thread
    ran which statements, as the server saw them."""

    def __init__(self, mariadb, path):
        self.mariadb, self.path = mariadb, path

    def __enter__(self):
        self.before = self.mariadb.sql("SELECT @@general_log_file").strip()
        self.mariadb.sql(f"SET GLOBAL general_log_file = '{self.path}'; SET GLOBAL general_log = ON")
        return self

    def __exit__(self, *exc):
        self.mariadb.sql(f"SET GLOBAL general_log = OFF; SET GLOBAL general_log_file = '{self.before}'")

    def threads_running(self, statement: str) -> set[int]:
        found = set()
        for line in self.path.read_text(errors="replace").splitlines():
            match = re.match(r"^(?:\d{6}\s+[\d:]+)?\s+(\d+) Query\t(.*)$", line)
            if match and match.group(2).startswith(statement):
                found.add(int(match.group(1)))
        return found


def highest_id(dump: bytes) -> int:
    ids = [int(i) for block in re.findall(rb"INSERT INTO `routelog` VALUES(.*?);\n", dump, re.S)
           for i in re.findall(rb"\((\d+),", block)]
    return max(ids)


def cycle_by_hooks(emg: Emg) -> tuple[dict, bytes]:
    emg.emg_borg("before-backup")
    try:
        manifest = json.loads(read_by_borg(emg, "emg-borg/manifest.json").read_text())
        dump = read_by_borg(emg, manifest["dumps"][0]["path"]).read_bytes()
    finally:
        emg.emg_borg("after-backup")
    return manifest, dump


def from_archive(emg: Emg, archive: str) -> tuple[dict, bytes]:
    out = emg.tmp / f"extract-{archive}"
    out.mkdir()
    subprocess.run(["borg", "extract", f"{emg.repo}::{archive}", "emg-borg"], cwd=out, check=True)
    manifest = json.loads((out / "emg-borg" / "manifest.json").read_text())
    return manifest, (out / manifest["dumps"][0]["path"]).read_bytes()


@pytest.mark.slow
def test_other_sessions_of_the_dump_user_never_end_the_freeze(emg, mariadb, tmp_path):
    """6 consistency points (2 borgmatic backups with a streamed dump, 4 hook cycles with a
    staged one) under a busy writer, while sessions of the dump's user keep running `SHOW
    TABLES`, mysqldump's own `SELECT /*!40001 SQL_NO_CACHE */` and open transactions: every
    dump's newest id is the message id read in the freeze, and the manifest names the dump's own
    session, which the server's log shows ran the dump."""
    kinds = "bhh" * 2
    # Traffic enough that counting it takes a while, as a portal's report would: a session of the
    # dump's user stays visible with `SELECT /*!40001 SQL_NO_CACHE */ COUNT(*)` for some ms.
    mariadb.sql("INSERT INTO routelog (id, connector, sender, recipient, status) SELECT 10000 + seq, 'old', '1', '2', 0 "
                "FROM seq_1_to_100000", emg.database)
    borg("init", "--encryption=repokey-blake2", str(emg.repo))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, mariadb.socket, emg.database])
    points = []
    try:
        with GeneralLog(mariadb, tmp_path / "general.log") as log, Intruders(emg) as intruders:
            time.sleep(0.3)
            for kind in kinds:
                if kind == "b":
                    emg.borgmatic_create()
                else:
                    points.append(("h", *cycle_by_hooks(emg)))
                assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait()
    archives = borg_list(emg.repo)
    assert len(archives) == 2
    points += [("b", *from_archive(emg, archive)) for archive in archives]
    print("proofs:", collections.Counter(m["dumps"][0]["dump_snapshot"]["proof"] for _, m, _ in points))
    print("intruding sessions:", {kind: len(ids) for kind, ids in intruders.sessions.items()})
    dumps = log.threads_running("SAVEPOINT sp")  # mysqldump's sessions
    assert all(intruders.sessions.values()) and not intruders.errors, (intruders.errors[:3], intruders.sessions.keys())
    assert not dumps & intruders.ids()

    # The dump shows the database as it was when the message id was read, at every point.
    assert [(kind, highest_id(dump) - manifest["message_id"]) for kind, manifest, dump in points
            if highest_id(dump) != manifest["message_id"]] == []
    for kind, manifest, dump in points:
        [entry] = manifest["dumps"]
        assert kind == "h" or entry["transfer"] == "stream"
        snapshot = entry["dump_snapshot"]
        assert snapshot["session"] in dumps, (snapshot, sorted(dumps))
        # Seen on the dump's own session; or the whole dump ran inside the freeze (a small dump
        # on a busy machine), which proves it all the same.
        assert snapshot["proof"].endswith("seen on the dump's session") or snapshot["proof"] in (
            "the dump ended inside the freeze", "the dump was complete inside the freeze"), snapshot
        # The binary log is on: the dump's own snapshot position is the freeze's.
        assert (snapshot["binlog_file"], snapshot["binlog_position"]) == (entry["binlog_file"], entry["binlog_position"])
        found = re.search(SNAPSHOT_LINE, dump.decode(errors="replace"), re.M)
        assert found and (found.group(1), int(found.group(2))) == (entry["binlog_file"], entry["binlog_position"])
    assert leftovers(emg) == []


FAKE_DUMP_ELSEWHERE = """
# A dump tool that proves a snapshot on the session emg-borg watches, and dumps from another one
# begun after the freeze: it connects through the relay (the socket emg-borg passes it) and opens
# a transaction there; a row written once the lock is gone, then the real dump, directly.
for a; do case $a in --socket=*) relay=${{a#--socket=}};; esac; done
MYSQL_PWD='{password}' mariadb --no-defaults --protocol=socket --socket="$relay" -u{user} {database} \\
  -e "START TRANSACTION WITH CONSISTENT SNAPSHOT; SELECT COUNT(*) FROM routelog; SELECT SLEEP(1)" >/dev/null &
mariadb --no-defaults --socket={socket} -uroot {database} \\
  -e "INSERT INTO routelog (id, connector, sender, recipient, status) VALUES (999999, 'late', '1', '2', 0)"
wait
for a; do shift; case $a in --socket=*) set -- "$@" "--socket={socket}";; *) set -- "$@" "$a";; esac; done
exec {mysqldump} "$@"
"""


def dump_elsewhere(emg: Emg, tmp_path, monkeypatch) -> None:
    body = FAKE_DUMP_ELSEWHERE.format(password=DB_PASSWORD, user=DB_USER, database=emg.database,
                                      socket=emg.mariadb.socket, mysqldump=REAL_MYSQLDUMP)
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, {'mysqldump': body})}{os.pathsep}{os.environ['PATH']}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("emg-borg: error:")]


@pytest.mark.parametrize("transfer", ["staged", "stream", "stream, checked mid-dump"])
def test_a_dump_whose_snapshot_is_not_the_freezes_fails_the_run(transfer, emg, mariadb, tmp_path, monkeypatch):
    """A dump tool that proves a snapshot on the session emg-borg watches but dumps from another:
    the binlog position at the top of its dump differs from the freeze's, and the run fails with
    one line naming both. Streamed, the check is made on the dump's first 64 KiB, before borg can
    see the end of the dump; mid-dump when the dump is larger."""
    if transfer == "stream, checked mid-dump":
        filler(mariadb, emg.database)
    dump_elsewhere(emg, tmp_path, monkeypatch)
    if transfer == "staged":
        result = emg.emg_borg("before-backup", check=False)
        output = result.stderr
    else:
        result = emg.borgmatic_create(check=False)
        output = result.stdout + result.stderr
        assert borg_list(emg.repo) == []  # no archive
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    assert transfer == "staged" or line.endswith("; borg was stopped, no archive was made"), line
    found = re.search(r"the dump's snapshot is at binlog position (\S+):(\d+), the consistency point's at "
                      r"(\S+):(\d+): the dump does not show the database as it was in the freeze", line)
    assert found, output
    assert found.group(1) == found.group(3) and int(found.group(2)) > int(found.group(4))
    emg.emg_borg("on-error")
    assert leftovers(emg) == []
    # The next run, with the real mysqldump, succeeds.
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    emg.borgmatic_create()
    assert leftovers(emg) == []


def relays() -> list[str]:
    return [p for p in marked_processes(os.environ[TEST_MARK], exclude=(os.getpid(),)) if "mysql/relay.py" in p]


@pytest.mark.parametrize("how", ["fails before connecting", "fails after connecting"])
def test_the_relay_leaves_nothing_when_mysqldump_fails(how, emg, tmp_path, monkeypatch):
    body = ('echo "mysqldump: Got error: 2002: cannot connect" >&2; exit 2' if how == "fails before connecting"
            else f'exec {REAL_MYSQLDUMP} "$@" no_such_table')
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, {'mysqldump': body})}{os.pathsep}{os.environ['PATH']}")
    for staged in (True, False):
        result = (emg.emg_borg("before-backup", check=False) if staged
                  else emg.borgmatic_create(check=False))
        assert result.returncode != 0
        [line] = error_lines(result.stderr)
        assert f"mysqldump of {emg.database} failed" in line, result.stderr
        emg.emg_borg("on-error")
        assert leftovers(emg) == []
        assert relays() == []


def test_a_relay_whose_before_backup_is_killed_ends_by_itself(emg, tmp_path, monkeypatch):
    """before-backup is SIGKILLed while the relay waits for a mysqldump that never connects (a
    streamed one: the ledger lets on-error stop it)."""
    sleep = f"sleep 600.{uuid.uuid4().int % 10**6:06d}"
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, {'mysqldump': sleep})}{os.pathsep}{os.environ['PATH']}")
    emg.write_config(extra='[mysql]\nlock_timeout = 120\nmax_freeze = 120\n')
    hook = subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup",
                             "--borgmatic-config", str(emg.borgmatic_config())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (relays() and any(sleep in p for p in marked_processes(os.environ[TEST_MARK]))):
            assert hook.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        hook.send_signal(signal.SIGKILL)
        hook.wait()
    deadline = time.monotonic() + 10
    while relays():
        assert time.monotonic() < deadline, relays()
        time.sleep(0.05)
    assert not list(emg.runtime.glob("staging/relay.*"))
    emg.emg_borg("on-error")  # stops the waiting mysqldump
    assert leftovers(emg) == []


@pytest.mark.parametrize("staged", [True, False], ids=["staged", "streamed"])
def test_a_server_that_stops_answering_mid_dump_ends_the_run(staged, emg):
    """mysqldump has no read timeout of its own: the relay ends a connection that passed no byte
    either way for [mysql] stall_timeout, so neither before-backup nor borg waits for ever. The
    server is silent here because each row of the dump's SELECT sleeps (`--where`), as a stopped
    or hung server (a replica's host SIGSTOPped mid-dump) would be."""
    emg.write_config(extra='[mysql]\nstall_timeout = 1\ndump_options = ["--where=SLEEP(3) = 0"]\n')
    result = emg.emg_borg("before-backup", check=False) if staged else emg.borgmatic_create(check=False)
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    if staged:  # before-backup waits for the dump, and learns from the relay why it ended
        assert f"mysqldump of {emg.database} stopped: the server " in line, result.stderr
        assert line.endswith("passed no byte for 1 s ([mysql] stall_timeout)"), result.stderr
    else:  # the streamer sees mysqldump fail, and stops borg: no archive
        assert f"mysqldump of {emg.database} failed" in line and "Lost connection" in line, result.stderr
        assert borg_list(emg.repo) == []
    emg.emg_borg("on-error")
    assert leftovers(emg, settle=6) == []  # the server's sleeping session ends at its next row
    assert relays() == []
