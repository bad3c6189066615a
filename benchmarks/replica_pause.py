#!/usr/bin/env python3
"""Benchmark: what the replica path costs each server, per run (issue 15).

    python3 benchmarks/replica_pause.py [--cycles 20] [--rows 100000] [--json]

Builds, in its own temporary directory (removed with the daemons it started, also on failure), a
sample EMG tree, a throwaway primary (binary log on) with `routelog` of N rows and a read-only GTID
replica of it. A busy writer inserts into routelog on the primary all along (one INSERT every
~20 ms, each timed). Then, alternating, C hook cycles (`before-backup`, `after-backup`; the dump
staged) dumping on the primary and C dumping on the replica (`[mysql.replica]`). Reported, as
median and worst over the cycles: the freeze window (`freeze_window_ms`), the writer's worst
INSERT during the cycle, and for the replica the time its replication stood still
(`replication_paused_ms`) and the whole before-backup.

Needs root, mariadb-server and emg-borg (this checkout) on PATH, and PyMySQL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.real_size import busy_writer, stalls  # noqa: E402
from benchmarks.run import load_routelog, log  # noqa: E402
from emg_borg.demo import mariadb, sample  # noqa: E402


def cycle(config: Path, runtime: Path, writer) -> dict:
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "emg_borg", "-q", "-c", str(config), "before-backup"], check=True)
    took = time.monotonic() - began
    manifest = json.loads((runtime / "staging" / "emg-borg" / "manifest.json").read_text())
    subprocess.run([sys.executable, "-m", "emg_borg", "-q", "-c", str(config), "after-backup"], check=True)
    (dump,) = manifest["dumps"]
    return {"server": dump["server"], "freeze_ms": manifest["freeze_window_ms"],
            "paused_ms": dump.get("replication_paused_ms"), "before_backup_s": took,
            "worst_insert_ms": (stalls(writer, began, began + took)["worst_insert_s"] or 0) * 1000}


def summary(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):8.1f} {max(values):8.1f}" if values else "       -        -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emgbench-replica-"))
    primary = mariadb.MariaDB(work / "primary")
    replica = mariadb.MariaDB(work / "replica", server_id=2, read_only=True)
    try:
        primary.start()
        replica.start().replicate_from(primary)
        tree = sample.build(work / "root", db_port=primary.port)
        load_routelog(primary, args.rows)
        replica.wait_caught_up(primary, timeout=600)
        configs = {}
        for server in ("primary", "replica"):
            runtime = work / f"runtime-{server}"
            text = f'[emg]\nemgdir = "{tree.emgdir}"\n\n[backup]\nruntime_dir = "{runtime}"\n\n[snapshot]\nprovider = "none"\n'
            if server == "replica":
                text += f'\n[mysql.replica]\nhost = "127.0.0.1"\nport = {replica.port}\n'
            (work / f"{server}.toml").write_text(text)
            configs[server] = (work / f"{server}.toml", runtime)
        results = []
        with busy_writer(primary) as writer:
            time.sleep(2)
            for number in range(args.cycles):
                for server in ("primary", "replica"):
                    results.append(cycle(*configs[server], writer))
                log(f"cycle {number + 1}/{args.cycles}: {results[-2]} {results[-1]}")
        if args.json:
            print(json.dumps(results, indent=1))
            return 0
        print(f"{args.cycles} cycles each, routelog {args.rows} rows, a writer inserting every ~20 ms on the primary")
        print(f"{'(ms; median, worst)':34} {'primary':>17} {'replica':>17}")
        for key, label in (("freeze_ms", "freeze window"), ("worst_insert_ms", "writer's worst INSERT"),
                           ("paused_ms", "replication paused"), ("before_backup_s", "before-backup (s)")):
            row = [summary([r[key] for r in results if r["server"] == server]) for server in ("primary", "replica")]
            print(f"{label:34} {row[0]:>17} {row[1]:>17}")
        return 0
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
