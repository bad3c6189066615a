#!/usr/bin/env python3
"""Benchmark: restic as the backup tool, and whether its parent snapshot sees an unchanged spool.

    python3 benchmarks/restic_unchanged.py [--files 20000] [--rows 300000] [--json]

Builds, in its own temporary directory: a Btrfs file system on a loop file whose subvolume holds a
sample EMG spool of N files (4-28 KiB of random bytes each, as benchmarks/run.py), a throwaway
MariaDB whose `routelog` has M rows, and a local restic repository. Then three hook cycles
(`before-backup`, `restic backup --tag emg-borg --json --files-from-verbatim RUNTIME/restic-files`,
`after-backup`) with `[backup] tool = "restic"` and the btrfs provider: a first (full) backup,
one after 1% of the spool files were rewritten, one with nothing changed. Reported per cycle:
restic's `files_new`, `files_changed`, `files_unmodified`, `total_files_processed`, the seconds
of the whole cycle and of `restic backup` alone.

Needs root, loop devices, btrfs-progs, mariadb-server, restic and emg-borg on PATH. Cleans up
every mount, loop device and daemon it started, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import load_routelog, log, run  # noqa: E402
from emg_borg.demo import mariadb, sample  # noqa: E402

PASSWORD = "emg-borg-bench-restic-password"


def spool(tree, files: int) -> list[Path]:
    rng = random.Random(10)
    written = []
    for i in range(files):
        sub = tree.spooldir / f"q{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"entry-{i:06d}.hdb"
        path.write_bytes(os.urandom(rng.randint(4096, 28 * 1024)))
        written.append(path)
    return written


def cycle(config: Path, runtime: Path, env: dict) -> dict:
    started = time.perf_counter()
    run(["emg-borg", "-q", "-c", config, "before-backup"], env)
    try:
        restic_started = time.perf_counter()
        out = run(["restic", "backup", "--tag", "emg-borg", "--json", "--files-from-verbatim",
                   runtime / "restic-files"], env).stdout
        restic_seconds = time.perf_counter() - restic_started
    except BaseException:
        run(["emg-borg", "-q", "-c", config, "on-error"], env, check=False)
        raise
    run(["emg-borg", "-q", "-c", config, "after-backup"], env)
    summary = json.loads(out.strip().splitlines()[-1])
    keys = ("files_new", "files_changed", "files_unmodified", "total_files_processed")
    return {**{k: summary[k] for k in keys}, "cycle_s": round(time.perf_counter() - started, 2),
            "restic_backup_s": round(restic_seconds, 2)}


def measure(work: Path, files: int, rows: int) -> dict:
    server = mariadb.MariaDB(work / "mariadb")
    mnt, image, mounted = work / "btrfs", work / "btrfs.img", False
    try:
        server.start()
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(max(1024 * 2**20, 4 * files * 16 * 1024))
        run(["mkfs.btrfs", "-q", image])
        run(["mount", "-o", "loop", image, mnt])
        mounted = True
        run(["btrfs", "subvolume", "create", mnt / "spool"])
        tree = sample.build(work / "server", db_port=server.port, spooldir=mnt / "spool" / "emg", spool_files=0)
        log(f"loading {rows} routelog rows, writing {files} spool files")
        load_routelog(server, rows)
        written = spool(tree, files)
        run(["sync"])
        runtime, config = work / "runtime", work / "emg-borg.toml"
        config.write_text(f'[emg]\nemgdir = "{tree.emgdir}"\n[backup]\nruntime_dir = "{runtime}"\ntool = "restic"\n'
                          f'[snapshot]\nprovider = "btrfs"\n')
        password = work / "restic-password"
        password.write_text(PASSWORD + "\n")
        env = {**os.environ, "RESTIC_REPOSITORY": str(work / "repo.restic"), "RESTIC_PASSWORD_FILE": str(password),
               "RESTIC_CACHE_DIR": str(work / "restic-cache")}
        run(["restic", "init"], env)
        results = {"restic": run(["restic", "version"]).stdout.strip(), "files": files, "rows": rows}
        log("first backup")
        results["first"] = cycle(config, runtime, env)
        for path in random.Random(11).sample(written, max(1, files // 100)):
            path.write_bytes(os.urandom(path.stat().st_size))
        log("after 1% of the spool files were rewritten")
        results["changed"] = cycle(config, runtime, env)
        log("nothing changed")
        results["unchanged"] = cycle(config, runtime, env)
        results["spool_files"] = sum(1 for p in tree.spooldir.rglob("*") if p.is_file() and p.name != "seqno")
        return results
    finally:
        server.stop()
        if mounted:  # the snapshot mounts below runtime_dir went with after-backup or on-error
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for line in subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rows", type=int, default=300000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for command in ("restic", "emg-borg", "mkfs.btrfs"):
        if not shutil.which(command):
            raise SystemExit(f"{command} not on PATH")
    work = Path(tempfile.mkdtemp(prefix="emgbench-restic-"))
    try:
        results = measure(work, args.files, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{results['restic']}; {results['files']} spool files, {results['rows']} routelog rows")
    print(f"{'backup':<10} {'new':>7} {'changed':>8} {'unmodified':>11} {'processed':>10} {'restic s':>9} {'cycle s':>8}")
    for phase in ("first", "changed", "unchanged"):
        r = results[phase]
        print(f"{phase:<10} {r['files_new']:>7} {r['files_changed']:>8} {r['files_unmodified']:>11} "
              f"{r['total_files_processed']:>10} {r['restic_backup_s']:>9} {r['cycle_s']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
