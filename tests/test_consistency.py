"""The consistency point under load.

A writer inserts row N into a table and then writes N to a file in the spool, in a loop, while
backups run. At every consistency point the highest N in the dump and the N in the spool file
must differ by at most 1 (the writer may be between its insert and its file write when the
lock is taken). With the consistency point switched off (`[mysql] lock = "none"`) the same
check fails, which shows the check can see the difference.

Some points are taken by full borgmatic backups and read back from the archive, as a restore
sees them. The others are bare hook cycles: `before-backup`; the dump and the spool file read
where borg reads them (the paths the patterns file gives borg: the staging area and the
snapshot view); `after-backup`. A cycle is the same consistency point without borgmatic's and
borg's own start-up and copying, which the archived points cover.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Emg, borg, borg_list, dump_path, leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.loop, pytest.mark.slow]

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


def read_by_borg(emg: Emg, archive_path: str) -> Path:
    """The file borg archives at `archive_path`, by the root lines of the patterns file that
    before-backup wrote: `R <dir>/./<path>` stores <dir>/<path> as <path>, `R /<path>` as <path>."""
    best = None
    for line in (emg.runtime / "patterns").read_text().splitlines():
        if not line.startswith("R "):
            continue
        root = line[2:]
        base, _, stored = root.rpartition("/./") if "/./" in root else ("", "", root.lstrip("/"))
        if archive_path == stored or archive_path.startswith(stored + "/"):
            if best is None or len(stored) > len(best[1]):
                best = (base, stored)
    assert best is not None, f"no root in the patterns file archives {archive_path}"
    return Path(best[0] + "/" + archive_path)


def point_by_hooks(emg: Emg, counter_path: str) -> tuple[int, int, dict]:
    emg.emg_borg("before-backup")
    try:
        manifest = json.loads(read_by_borg(emg, "emg-borg/manifest.json").read_text())
        in_dump = dump_max(read_by_borg(emg, dump_path(manifest)).read_bytes())
        in_spool = int(read_by_borg(emg, counter_path).read_text())
    finally:
        emg.emg_borg("after-backup")
    return in_dump, in_spool, manifest


def point_from_archive(emg: Emg, archive: str, counter_path: str) -> tuple[int, int, dict]:
    out = emg.tmp / f"extract-{archive}"
    out.mkdir()
    result = subprocess.run(["borg", "extract", f"{emg.repo}::{archive}", "emg-borg", counter_path], cwd=out,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "emg-borg" / "manifest.json").read_text())
    in_dump = dump_max((out / dump_path(manifest)).read_bytes())
    in_spool = int((out / counter_path).read_text())
    return in_dump, in_spool, manifest


def points_under_load(emg: Emg, kinds: str) -> list[tuple[str, int, int, dict]]:
    """One consistency point per letter of `kinds`, in order: `b` a borgmatic backup, `h` a
    hook cycle; each (kind, highest N in the dump, N in the spool file, manifest)."""
    emg.mariadb.sql("CREATE TABLE loadtest (n BIGINT PRIMARY KEY) ENGINE=InnoDB", emg.database)
    counter = emg.tree.spooldir / "counter"
    counter.write_text("0\n")
    counter_path = str(counter).lstrip("/")
    borg("init", "--encryption=repokey-blake2", str(emg.repo))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, emg.mariadb.socket, emg.database, str(counter)])
    by_hooks = []
    try:
        time.sleep(0.3)
        for kind in kinds:
            if kind == "b":
                emg.borgmatic_create()
            else:
                by_hooks.append(point_by_hooks(emg, counter_path))
            assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait()
    archives = borg_list(emg.repo)  # oldest first
    assert len(archives) == kinds.count("b"), archives
    by_borgmatic = [point_from_archive(emg, archive, counter_path) for archive in archives]
    return [(kind, *(by_borgmatic if kind == "b" else by_hooks).pop(0)) for kind in kinds]


def test_dump_and_spool_agree_at_8_points_under_load(tmp_path, mariadb, btrfs_mount):
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg")
    kinds = "bhhh" * 2  # 2 archives, 6 hook cycles
    results = points_under_load(emg, kinds)
    assert [kind for kind, *_ in results] == list(kinds)
    differences = [in_dump - in_spool for _, in_dump, in_spool, _ in results]
    print("dump minus spool per point:", list(zip(kinds, differences)))
    assert all(0 <= d <= 1 for d in differences), differences
    assert all(m["consistency_lock"] == "held" for *_, m in results)
    in_dump = [n for _, n, _, _ in results]
    assert in_dump[0] > 0 and in_dump == sorted(set(in_dump)), in_dump  # the writer ran on through all points
    assert leftovers(emg) == []


def test_without_the_consistency_point_dump_and_spool_diverge(tmp_path, mariadb, btrfs_mount):
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg",
              extra_config='[mysql]\nlock = "none"\n')
    kinds = "bhhbhh"
    results = points_under_load(emg, kinds)
    differences = [in_dump - in_spool for _, in_dump, in_spool, _ in results]
    print("dump minus spool per point:", list(zip(kinds, differences)))
    # Seen both in the archives and at the hook cycles: neither way of reading hides it.
    assert any(abs(d) > 1 for kind, d in zip(kinds, differences) if kind == "b"), differences
    assert any(abs(d) > 1 for kind, d in zip(kinds, differences) if kind == "h"), differences
    assert all(m["consistency_lock"] == "none" for *_, m in results)
    assert leftovers(emg) == []
