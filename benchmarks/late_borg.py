#!/usr/bin/env python3
"""Benchmark: the disk a streamed dump takes while borg reads it, and a borg that starts late.

    python3 benchmarks/late_borg.py [--rows 300000] [--late 90] [--repeat 3] [--late-repeat 1] [--json] [--save FILE]

Builds, in its own temporary directory, a sample EMG tree (a small live spool: snapshot provider
`none`, the spool does not matter here) and a throwaway MariaDB whose `routelog` has M rows (the
same rows as benchmarks/run.py), then runs `borgmatic create` with borgmatic-example.yaml as it is,
each time into a fresh repository:

    normal       borg reads the dump as soon as borgmatic runs it (R times)
    slow-borg    borg reads it at once but slowly: `compression: lzma,9` added to the example (a
                 stand-in for a slow link to an offsite repository)
    late         a `borg` wrapper first on PATH sleeps L seconds before a `borg create` that is not
                 `--dry-run` (another node holding the repository lock, a cache sync, a slow SSH
                 start), with the server's own net_write_timeout (printed)
    late-staged  the same late borg with `[backup] stream_dumps = "never"` (the dump staged as a file)

For every run: its time, the runtime_dir's real disk use (st_blocks of its files, not crossing
into other file systems) sampled every 50 ms, as extra over what it held before the run; the
archived manifest's dump entry (`buffer_peak_bytes`, `borg_wait_seconds`, `dump_seconds`); the
archived dump extracted and checked against the manifest's size and sha256; mysqldump's own
duration (a logging wrapper) and how long borg took to read the dump (the streamer's status file,
sampled with the disk: opened → ended).

Needs root (runtime_dir must be root's), mariadb-server, borg, borgmatic and emg-borg on PATH.
Cleans up the daemon and the directory it made, also on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (benchmarks/run.py: wrappers, the disk poller, run(), log())
from emg_borg.demo import mariadb, sample  # noqa: E402
from emg_borg.demo.borgmatic import example_config  # noqa: E402

SAMPLE_INTERVAL = 0.05

# First on PATH, before the logging wrappers: `borg create` (not --dry-run) starts late.
LATE_BORG = """#!/bin/sh
late=0
for arg; do
  case "$arg" in create) late=${{BENCH_LATE_SECONDS:-0}};; --dry-run) late=0; break;; esac
done
[ "$late" != 0 ] && sleep "$late"
exec {logged} "$@"
"""


class Sampler(bench.DiskPoller):
    """The disk poller of run.py every 50 ms, also keeping the newest content of each streamer's
    status file (they are gone when the run ends)."""

    def __init__(self, root: Path):
        super().__init__(root, SAMPLE_INTERVAL)
        self.samples, self.statuses = 0, {}

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._usage())
            self.samples += 1
            for path in (self.root / "streams").glob("*.status.json"):
                try:
                    self.statuses[path.name] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue  # being rewritten
            time.sleep(self.interval)


class LateBorgBench:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.server: mariadb.MariaDB | None = None
        self.env = dict(os.environ)

    def setup(self) -> None:
        w, a = self.work, self.args
        late = w / "late-bin"
        late.mkdir()
        (late / "borg").write_text(LATE_BORG.format(logged=shlex.quote(str(w / "bin" / "borg"))))
        (late / "borg").chmod(0o755)
        self.env = bench.bench_env(w, late)
        self.call_log = w / "calls.log"
        bench.log("starting MariaDB")
        self.server = mariadb.MariaDB(w / "mariadb")
        self.server.start()
        self.net_write_timeout = int(self.server.sql("SELECT @@GLOBAL.net_write_timeout").strip())
        self.tree = sample.build(w / "server", db_port=self.server.port, spool_files=20)
        bench.log(f"loading {a.rows} routelog rows")
        bench.load_routelog(self.server, a.rows)
        self.runtime = w / "runtime"
        self.cfg = {}
        for name, extra in (("stream", ""), ("staged", 'stream_dumps = "never"\n')):
            self.cfg[name] = w / f"emg-borg-{name}.toml"
            self.cfg[name].write_text(f'[emg]\nemgdir = "{self.tree.emgdir}"\n[backup]\nruntime_dir = "{self.runtime}"\n'
                                      f'{extra}[snapshot]\nprovider = "none"\n')

    def backup(self, case: str, n: int) -> dict:
        staged = case == "late-staged"
        repo = self.work / f"repo-{case}-{n}"
        yaml = self.work / f"borgmatic-{case}.yaml"
        text = example_config(self.runtime, self.cfg["staged" if staged else "stream"], repo, bench.PASSPHRASE)
        yaml.write_text(text + ("compression: lzma,9\n" if case == "slow-borg" else ""))
        bench.run(["borg", "init", "--encryption=repokey-blake2", repo], self.env)
        bench.read_calls(self.call_log)
        env = dict(self.env, BENCH_LATE_SECONDS=str(self.args.late if case.startswith("late") else 0))
        sampler = Sampler(self.runtime)
        t0 = time.perf_counter()
        with sampler:
            result = bench.run(["borgmatic", "--config", yaml, "create"], env, check=False)
        total = time.perf_counter() - t0
        calls = bench.read_calls(self.call_log)
        if result.returncode != 0:
            raise RuntimeError(f"{case}: borgmatic create exited {result.returncode}:\n{result.stderr[-3000:]}")
        [archive] = bench.run(["borg", "list", "--short", repo], self.env).stdout.split()
        manifest = json.loads(bench.run(["borg", "extract", "--stdout", f"{repo}::{archive}", "emg-borg/manifest.json"],
                                        self.env).stdout)
        [entry] = manifest["dumps"]
        digest, size = hashlib.sha256(), 0
        with subprocess.Popen(["borg", "extract", "--stdout", f"{repo}::{archive}", entry["path"]],
                              stdout=subprocess.PIPE, env=self.env) as extract:
            for block in iter(lambda: extract.stdout.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        if extract.returncode != 0:
            raise RuntimeError(f"{case}: borg extract of {entry['path']} exited {extract.returncode}")
        status = next((s for s in sampler.statuses.values() if s.get("label") != "the manifest"), {})
        borg_read = (status["ended"] - status["opened"]) if "ended" in status and "opened" in status else None
        mysqldump = [c["s"] for c in calls if c["name"] == "mysqldump"]
        creates = [c["s"] for c in calls if bench.call_kind(c) == "borg create"]
        shutil.rmtree(repo)
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        out = {
            "case": case, "total_s": total, "dump_bytes": entry["bytes"], "transfer": manifest.get("dump_transfer"),
            "whole": size == entry["bytes"] and digest.hexdigest() == entry["sha256"],
            "archived_bytes": size, "buffer_peak_bytes": entry.get("buffer_peak_bytes"),
            "borg_wait_s": entry.get("borg_wait_seconds"), "dump_s": manifest.get("dump_seconds"),
            "extra_disk_bytes": sampler.peak - sampler.base, "samples": sampler.samples,
            "mysqldump_s": mysqldump[0] if mysqldump else None, "borg_create_s": creates[0] if creates else None,
            "borg_read_s": borg_read, "warnings": [c["args"][:40] for c in calls if c["rc"]],
        }
        bench.log(f"{case} {n + 1}: {total:.1f} s, dump {size / 2**20:.1f} MiB whole={out['whole']}, "
                  f"extra disk {out['extra_disk_bytes'] / 2**20:.2f} MiB, buffer peak "
                  f"{(out['buffer_peak_bytes'] or 0) / 2**20:.2f} MiB, dump_seconds {out['dump_s']}")
        return out

    def cleanup(self) -> None:
        for cfg in getattr(self, "cfg", {}).values():
            subprocess.run(["emg-borg", "-q", "-c", str(cfg), "on-error", "--force"], env=self.env, capture_output=True)
        if self.server:
            self.server.stop()


def mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.2f} MiB"


def pct(value, of) -> str:
    return "-" if value is None or not of else f"{100 * value / of:.2f}%"


def sec(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_table(s: dict) -> None:
    print(f"emg-borg late-borg benchmark: {s['rows']} routelog rows, borg late by {s['late_s']} s, "
          f"server net_write_timeout {s['net_write_timeout_s']} s; {s['versions']}")
    print(f"command: {s['command']}")
    columns = ("run", "total", "ok/whole", "dump", "buffer_peak", "% dump", "extra disk (50 ms)", "% dump",
               "borg_wait", "dump_seconds", "mysqldump", "borg read", "borg create")
    print("  ".join(columns))
    for r in s["runs"]:
        print("  ".join((
            f"{r['case']:<11}", sec(r["total_s"]), "yes/" + ("yes" if r["whole"] else "NO"),
            f"{r['dump_bytes'] / 2**20:.1f} MiB ({r['transfer']})", mib(r["buffer_peak_bytes"]),
            pct(r["buffer_peak_bytes"], r["dump_bytes"]), f"{mib(r['extra_disk_bytes'])} ({r['samples']} samples)",
            pct(r["extra_disk_bytes"], r["dump_bytes"]), sec(r["borg_wait_s"]), sec(r["dump_s"]),
            sec(r["mysqldump_s"]), sec(r["borg_read_s"]), sec(r["borg_create_s"]))))
    print(f"benchmark took {s['elapsed_s'] / 60:.1f} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300000, help="routelog rows (default %(default)s)")
    parser.add_argument("--late", type=float, default=90, help="seconds borg create starts late (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="normal runs (default %(default)s)")
    parser.add_argument("--late-repeat", type=int, default=1, help="runs of slow-borg and each late case (default %(default)s)")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON document to FILE")
    args = bench.start(parser, "runtime_dir must be root's")
    started = time.perf_counter()
    # The prefix must not name emg-borg: the test suite counts such mounts and files as its own.
    with tempfile.TemporaryDirectory(prefix="emgbench-late-") as tmp:
        work = LateBorgBench(Path(tmp), args)
        try:
            work.setup()
            runs = [work.backup("normal", n) for n in range(args.repeat)]
            for case in ("slow-borg", "late", "late-staged"):
                runs += [work.backup(case, n) for n in range(args.late_repeat)]
            summary = {
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "rows": args.rows,
                "late_s": args.late, "net_write_timeout_s": work.net_write_timeout,
                "versions": ", ".join(bench.run([name, "--version"], work.env).stdout.strip().splitlines()[0]
                                      for name in ("borg", "borgmatic")),
                "runs": runs, "elapsed_s": time.perf_counter() - started,
            }
        finally:
            work.cleanup()
    return bench.output(summary, args, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
