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
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import Emg, borg_cat, borg_list, dump_path, leftovers, marked_processes
from emg_borg.demo.mariadb import MariaDB
from emg_borg.demo.sample import DB_PASSWORD, DB_USER

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
    emg = Emg(tmp_path, mariadb, extra_config=replica_config(healthy))
    with Writer(mariadb, emg.database) as writer:
        for _ in range(6):
            manifest = before_backup(emg)
            try:
                entry = dump_entry(manifest)
                assert entry["server"] == "replica" and entry["replica"].endswith(f"127.0.0.1:{healthy.port}/{emg.database}")
                assert re.fullmatch(r"0-1-\d+", entry["gtid_position"])
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
    assert replicating(healthy)
    assert leftovers(emg) == []
