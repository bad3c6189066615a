#!/usr/bin/env python3
"""Benchmark: how long the consistency point is held, by spool size.

Builds a sample EMG tree whose SPOOLDIR is a subvolume of a loop-mounted Btrfs file system,
fills it with N files, loads M rows into the database of a throwaway MariaDB, runs
`emg-borg before-backup` / `after-backup` R times and reports the median `freeze_window_ms`
from the manifest. The window must not grow with the spool or the database.

    python3 benchmarks/freeze_window.py [--files 1000 100000] [--rows 1000 200000] [--repeat 7]

Needs root, loop devices and btrfs-progs, and mariadb-server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emg_borg.demo import mariadb, sample


def sh(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kw)


def measure(work: Path, server, files: int, rows: int, repeat: int) -> dict:
    image, mnt = work / f"btrfs-{files}-{rows}.img", work / f"btrfs-{files}-{rows}"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(1024 * 2**20)
    sh("mkfs.btrfs", "-q", image)
    sh("mount", "-o", "loop", image, mnt)
    try:
        sh("btrfs", "subvolume", "create", mnt / "spool")
        database = f"bench_{files}_{rows}"
        tree = sample.build(work / f"root-{files}-{rows}", db_port=server.port, spooldir=mnt / "spool" / "emg",
                            spool_files=0, database=database)
        sample.load_schema(server, rows=0, database=database)
        if rows:
            server.sql(
                "INSERT INTO routelog (id, connector, sender, recipient, status) "
                f"SELECT seq, 'mgp-in1', '4670', '4671', 0 FROM seq_1_to_{rows}", database,
            )
        started = time.monotonic()
        for i in range(files):
            sub = tree.spooldir / f"q{i // 1000:03d}"
            if i % 1000 == 0:
                sub.mkdir(exist_ok=True)
            (sub / f"entry-{i:06d}.hdb").write_bytes(b"x" * 256)
        fill_seconds = time.monotonic() - started
        config = work / f"config-{files}-{rows}.toml"
        config.write_text(f'[emg]\nemgdir = "{tree.emgdir}"\n[backup]\nruntime_dir = "{work}/runtime-{files}-{rows}"\n'
                          f'[snapshot]\nprovider = "btrfs"\n')
        windows, totals = [], []
        for _ in range(repeat):
            t0 = time.monotonic()
            sh(sys.executable, "-m", "emg_borg", "-q", "-c", config, "before-backup")
            totals.append((time.monotonic() - t0) * 1000)
            manifest = json.loads((work / f"runtime-{files}-{rows}/staging/emg-borg/manifest.json").read_text())
            windows.append(manifest["freeze_window_ms"])
            sh(sys.executable, "-m", "emg_borg", "-q", "-c", config, "after-backup")
        return {
            "spool_files": files, "db_rows": rows, "repeat": repeat,
            "median_freeze_window_ms": round(statistics.median(windows), 1),
            "min_ms": round(min(windows), 1), "max_ms": round(max(windows), 1),
            "median_before_backup_total_ms": round(statistics.median(totals), 1),
            "spool_fill_s": round(fill_seconds, 1),
        }
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop mounts)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="emg-borg-bench-") as tmp:
        work = Path(tmp)
        with mariadb.MariaDB(work / "db") as server:
            print(f"{'spool files':>12} {'db rows':>9} {'median window ms':>17} {'min':>7} {'max':>7} {'before-backup ms':>17}")
            for rows in args.rows:
                for files in args.files:
                    r = measure(work, server, files, rows, args.repeat)
                    print(f"{r['spool_files']:>12} {r['db_rows']:>9} {r['median_freeze_window_ms']:>17} "
                          f"{r['min_ms']:>7} {r['max_ms']:>7} {r['median_before_backup_total_ms']:>17}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
