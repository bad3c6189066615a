"""The consistency point under load.

A writer inserts row N into a table and then writes N to a file in the spool, in a loop, while
borgmatic runs backups. In every archive the highest N in the dump and the N in the spool file
must differ by at most 1 (the writer may be between its insert and its file write when the
lock is taken). With the consistency point switched off (`[mysql] lock = "none"`) the same
check fails, which shows the check can see the difference.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from conftest import Emg, borg_cat, borg_list, leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.loop]

WRITER = r"""
import os, sys, pymysql
socket, database, counter = sys.argv[1:4]
connection = pymysql.connect(unix_socket=socket, user="root", database=database, autocommit=True)
cursor = connection.cursor()
n = 0
while True:
    n += 1
    cursor.execute("INSERT INTO loadtest (n) VALUES (%s)", (n,))
    tmp = counter + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{n}\n")
    os.replace(tmp, counter)
"""


def dump_max(dump: bytes) -> int:
    # mariadb-dump writes one row per line after "INSERT INTO `loadtest` VALUES".
    values = [int(v) for block in re.findall(r"INSERT INTO `loadtest` VALUES(.*?);\n", dump.decode(), re.S)
              for v in re.findall(r"\((\d+)\)", block)]
    return max(values) if values else 0


def backups_under_load(emg: Emg, count: int) -> list[tuple[int, int, dict]]:
    emg.mariadb.sql("CREATE TABLE loadtest (n BIGINT PRIMARY KEY) ENGINE=InnoDB", emg.database)
    counter = emg.tree.spooldir / "counter"
    counter.write_text("0\n")
    emg.init_repo()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, emg.mariadb.socket, emg.database, str(counter)])
    results = []
    try:
        time.sleep(0.3)
        for _ in range(count):
            emg.borgmatic_create()
            assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait()
    spool = str(emg.tree.spooldir).lstrip("/")
    for archive in borg_list(emg.repo):
        manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
        in_dump = dump_max(borg_cat(emg.repo, archive, manifest["dumps"][0]["path"]))
        in_spool = int(borg_cat(emg.repo, archive, f"{spool}/counter"))
        results.append((in_dump, in_spool, manifest))
    return results


def test_dump_and_spool_agree_in_20_backups_under_load(tmp_path, mariadb, btrfs_mount):
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg")
    results = backups_under_load(emg, 20)
    assert len(results) == 20
    differences = [in_dump - in_spool for in_dump, in_spool, _ in results]
    print("dump minus spool per archive:", differences)
    assert all(0 <= d <= 1 for d in differences), differences
    assert all(m["consistency_lock"] == "held" for _, _, m in results)
    assert results[-1][0] > results[0][0] > 0  # the writer really ran during the backups
    assert leftovers(emg) == []


def test_without_the_consistency_point_dump_and_spool_diverge(tmp_path, mariadb, btrfs_mount):
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg",
              extra_config='[mysql]\nlock = "none"\n')
    results = backups_under_load(emg, 5)
    differences = [in_dump - in_spool for in_dump, in_spool, _ in results]
    print("dump minus spool per archive:", differences)
    assert any(abs(d) > 1 for d in differences), differences
    assert all(m["consistency_lock"] == "none" for _, _, m in results)
