#!/usr/bin/env python3
"""Benchmark: what emg-borg costs, each figure a ratio of two things measured in the same run.

    python3 benchmarks/run.py [--files 20000] [--rows 300000] [--repeat 3] [--json]

Builds, in its own temporary directory: a Btrfs file system on a loop file whose subvolume holds a
sample EMG spool of N files (4-28 KiB of random bytes each, ~16 KiB on average), a throwaway
MariaDB whose `routelog` has M rows, and one borg repository per variant per round. Each of R
rounds starts with fresh repositories and runs, interleaved and in rotating order, four variants
of one backup:

    emg-borg    `borgmatic create` with borgmatic-example.yaml as it is (emg-borg's hooks and
                patterns file; `unsafe_skip_path_validation_before_create: true`)
    validating  the same without that line: borgmatic's `borg create --dry-run --list` path pass
    plain       `borgmatic create` without emg-borg: a `before` hook runs the same mysqldump into a
                file, and the same roots are listed as source_directories (live spool, no snapshot)
    plain-skip  plain with `unsafe_skip_path_validation_before_create: true` (the same settings)
    bare        the same mysqldump, then one bare `borg create` of the same paths

three times: a first (full) backup, a second after 1% of the spool files were rewritten, a third
with nothing changed. Then `emg-borg extract --categories config` and `--categories all` of the
newest emg-borg archive, and `before-backup`/`after-backup` of a second EMG tree whose spool is an
empty subvolume (the freeze window's reference). Every figure is the median over the rounds.

borg and emg-borg are called through tiny logging wrappers (on PATH for every variant) so that a
borgmatic run's time can be split into its borg calls, its hooks and borgmatic itself.

Needs root, loop devices, btrfs-progs, mariadb-server, borg, borgmatic and emg-borg on PATH.
Cleans up every mount, loop device and daemon it started, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emg_borg.demo import mariadb, sample  # noqa: E402
from emg_borg.demo.borgmatic import example_config  # noqa: E402

PASSPHRASE = "emg-borg-bench-passphrase"
VARIANTS = ("emg-borg", "validating", "plain", "plain-skip", "bare")
PHASES = ("first", "changed", "unchanged")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(argv, env=None, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def timed(argv, env=None) -> float:
    t0 = time.perf_counter()
    run(argv, env)
    return time.perf_counter() - t0


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- wrappers ------------------------------------------------------------------------------------

WRAPPER = """#!/bin/sh
s=$(date +%s.%N)
{real} "$@"
rc=$?
e=$(date +%s.%N)
printf '%s\\t%s\\t%s\\t%s\\t%s\\n' {name} "$s" "$e" "$rc" "$*" >> "$BENCH_CALL_LOG"
exit $rc
"""


def make_wrappers(bindir: Path) -> None:
    bindir.mkdir()
    for name in ("borg", "emg-borg", "mysqldump"):
        real = shutil.which(name)
        if not real:
            raise SystemExit(f"{name} not on PATH")
        path = bindir / name
        path.write_text(WRAPPER.format(real=shlex.quote(real), name=name))
        path.chmod(0o755)


def bench_env(work: Path, *first_on_path: Path) -> dict:
    """The environment of a benchmark's commands: the logging wrappers (made in work/bin) on PATH,
    after `first_on_path`, their call log work/calls.log, borg's passphrase and base directory,
    and borgmatic's runtime directory in `work` (under a shared /tmp something removed
    /tmp/borgmatic-*/borgmatic/bootstrap mid-run now and then: borg then warns 107, "Backup file
    not found")."""
    make_wrappers(work / "bin")
    (work / "xdg-runtime").mkdir(mode=0o700)
    path = ":".join(str(d) for d in (*first_on_path, work / "bin", os.environ["PATH"]))
    return dict(os.environ, PATH=path, BENCH_CALL_LOG=str(work / "calls.log"), XDG_RUNTIME_DIR=str(work / "xdg-runtime"),
                BORG_BASE_DIR=str(work / "borg-base"), BORG_PASSPHRASE=PASSPHRASE,
                PYTHONPATH=str(Path(__file__).resolve().parent.parent),
                BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes")


def example_yaml(runtime: Path, config: Path, repository: Path) -> str:
    """borgmatic-example.yaml with these paths, and microseconds in its archive names (runs of one
    benchmark can be less than a second apart)."""
    text = example_config(runtime, config, repository, PASSPHRASE)
    return text.replace('archive_name_format: "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S}"',
                        'archive_name_format: "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S.%f}"')


def read_calls(call_log: Path) -> list[dict]:
    calls = []
    if call_log.exists():
        for line in call_log.read_text().splitlines():
            name, start, end, rc, args = (line.split("\t", 4) + [""])[:5]
            calls.append({"name": name, "s": float(end) - float(start), "rc": int(rc), "args": args})
        call_log.unlink()
    return calls


def call_kind(call: dict) -> str:
    words = call["args"].split()
    if call["name"] == "emg-borg":
        for command in ("before-backup", "after-backup", "on-error", "extract", "archives", "--version"):
            if command in words:
                return f"emg-borg {command}"
        return "emg-borg other"
    if call["name"] == "mysqldump":
        return "mysqldump"
    sub = next((w for w in words if not w.startswith("-")), "--version" if "--version" in words else "?")
    if sub == "create" and "--dry-run" in words:
        return "borg create --dry-run (borgmatic path validation)"
    return f"borg {sub}"


def load_routelog(server: mariadb.MariaDB, rows: int) -> None:
    """The sample schema with `rows` rows of traffic in `routelog` (the benchmarks' database)."""
    sample.load_schema(server, rows=0)
    if rows:
        server.sql("INSERT INTO routelog (id, connector, sender, recipient, status) "
                   f"SELECT seq, 'mgp-in1', CONCAT('4670', seq), CONCAT('4671', seq % 9973), seq % 7 FROM seq_1_to_{rows}",
                   sample.DB_NAME)


# --- disk poller (item f) ------------------------------------------------------------------------

class DiskPoller:
    """Peak bytes allocated by regular files under `root`, not crossing into other file systems
    (the snapshot mounts below runtime_dir are not extra disk)."""

    def __init__(self, root: Path, interval: float = 0.01):
        self.root, self.interval, self.peak = Path(root), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _usage(self) -> int:
        try:
            dev = os.stat(self.root).st_dev
        except FileNotFoundError:
            return 0
        total, stack = 0, [str(self.root)]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    for e in entries:
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if st.st_dev != dev:
                            continue
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += st.st_blocks * 512
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        return total

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._usage())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self._usage()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --- the bench -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.mnt = work / "btrfs"
        self.server: mariadb.MariaDB | None = None
        self.env = dict(os.environ)
        self.results: dict = {"rounds": []}

    # setup -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        w, a = self.work, self.args
        self.env = bench_env(w)
        self.call_log = w / "calls.log"
        log("starting MariaDB")
        self.server = mariadb.MariaDB(w / "mariadb")
        self.server.start()
        spool_bytes = a.files * 16 * 1024
        image = w / "btrfs.img"
        self.mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(max(1024 * 2**20, 4 * spool_bytes))
        run(["mkfs.btrfs", "-q", image])
        run(["mount", "-o", "loop", image, self.mnt])
        self.mounted = True
        for sub in ("spool", "spool-ref"):
            run(["btrfs", "subvolume", "create", self.mnt / sub])
        self.tree = sample.build(w / "server", db_port=self.server.port, spooldir=self.mnt / "spool" / "emg", spool_files=0)
        self.ref = sample.build(w / "ref", db_port=self.server.port, spooldir=self.mnt / "spool-ref" / "emg", spool_files=0)
        log(f"loading {a.rows} routelog rows")
        load_routelog(self.server, a.rows)
        log(f"writing {a.files} spool files")
        rng = random.Random(10)
        self.spool_files = []
        for i in range(a.files):
            sub = self.tree.spooldir / f"q{i // 1000:03d}"
            if i % 1000 == 0:
                sub.mkdir(exist_ok=True)
            path = sub / f"entry-{i:06d}.hdb"
            path.write_bytes(os.urandom(rng.randint(4096, 28 * 1024)))
            self.spool_files.append(path)
        run(["sync"])
        self.spool_bytes = sum(p.stat().st_size for p in self.spool_files)

        self.runtime = w / "runtime"
        self.cfg = w / "emg-borg.toml"
        self.cfg.write_text(f'[emg]\nemgdir = "{self.tree.emgdir}"\n[backup]\nruntime_dir = "{self.runtime}"\n'
                            f'[snapshot]\nprovider = "btrfs"\n')
        self.ref_cfg = w / "emg-borg-ref.toml"
        self.ref_cfg.write_text(f'[emg]\nemgdir = "{self.ref.emgdir}"\n[backup]\nruntime_dir = "{w / "runtime-ref"}"\n'
                                f'[snapshot]\nprovider = "btrfs"\n')

        # the roots emg-borg archives, as live paths (for the plain and bare variants)
        run(["emg-borg", "-q", "-c", self.cfg, "before-backup"], self.env)
        try:
            patterns = (self.runtime / "patterns").read_text()
            staged = [p for p in (self.runtime / "staging").rglob("*") if p.is_file()]
        finally:
            run(["emg-borg", "-q", "-c", self.cfg, "after-backup"], self.env)
        self.patterns_text = patterns
        roots = []
        for line in patterns.splitlines():
            if line.startswith("R "):
                root = line[2:].strip()
                if str(self.runtime / "staging") in root:
                    continue  # staged manifest, seqno, dump: the plain variants have their own dump
                if "/./" in root:
                    root = "/" + root.split("/./", 1)[1]
                roots.append(root)
        self.roots = roots
        self.staged_names = [str(p.relative_to(self.runtime / "staging")) for p in staged]
        read_calls(self.call_log)

        # the plain variants' dump: the same mysqldump options emg-borg uses
        self.dump_dir = w / "plain-dump"
        self.dump_dir.mkdir()
        defaults = w / "plain-my.cnf"
        defaults.write_text(f"[client]\nhost=127.0.0.1\nport={self.server.port}\nuser={sample.DB_USER}\n"
                            f"password=\"{sample.DB_PASSWORD}\"\n")
        defaults.chmod(0o600)
        from emg_borg.external.mysql import mysqldump_argv
        self.mysqldump = list(mysqldump_argv(str(w / "bin" / "mysqldump"),
                                             f"--defaults-extra-file={defaults}", sample.DB_NAME))
        self.plain_dump = self.dump_dir / "emg.sql"
        self.dump_cmd = " ".join(shlex.quote(x) for x in self.mysqldump) + " > " + shlex.quote(str(self.plain_dump))

        # borgmatic configurations
        self.yaml = {}
        self.repos = {}
        for variant in ("emg-borg", "validating", "plain", "plain-skip"):
            self.yaml[variant] = w / f"borgmatic-{variant}.yaml"
        log(f"data: {a.files} spool files ({self.spool_bytes / 2**20:.0f} MiB), {a.rows} rows; roots: {' '.join(roots)}")

    def write_configs(self, round_no: int) -> None:
        w = self.work
        for variant in VARIANTS:
            self.repos[variant] = w / f"repo-{round_no}-{variant}"
        for variant in ("emg-borg", "validating"):
            text = example_yaml(self.runtime, self.cfg, self.repos[variant])
            if variant == "validating":
                text = text.replace("unsafe_skip_path_validation_before_create: true", "")
            self.yaml[variant].write_text(text)
        plain = {
            "source_directories": self.roots + [str(self.dump_dir)],
            "repositories": [{"path": str(self.repos["plain"]), "label": "local"}],
            "archive_name_format": "{hostname}-plain-{now:%Y-%m-%dT%H:%M:%S.%f}",
            "encryption_passphrase": PASSPHRASE,
            "commands": [{"before": "action", "when": ["create"], "run": [self.dump_cmd]}],
        }
        self.yaml["plain"].write_text(json.dumps(plain, indent=2) + "\n")  # JSON is YAML
        plain.update(unsafe_skip_path_validation_before_create=True,
                     repositories=[{"path": str(self.repos["plain-skip"]), "label": "local"}])
        self.yaml["plain-skip"].write_text(json.dumps(plain, indent=2) + "\n")
        for variant in VARIANTS:
            run(["borg", "init", "--encryption=repokey-blake2", self.repos[variant]], self.env)
        read_calls(self.call_log)

    # one backup ------------------------------------------------------------------------------------
    def backup(self, variant: str, phase: str, n: int) -> dict:
        out: dict = {}
        if variant == "bare":
            t0 = time.perf_counter()
            with open(self.plain_dump, "wb") as f:
                subprocess.run(self.mysqldump, stdout=f, check=True, env=self.env)
            t1 = time.perf_counter()
            run(["borg", "create", f"{self.repos['bare']}::bare-{phase}-{n}", *self.roots, str(self.dump_dir)], self.env)
            t2 = time.perf_counter()
            out.update(total=t2 - t0, mysqldump=t1 - t0)
        elif variant in ("emg-borg", "validating"):
            poller = DiskPoller(self.runtime)
            t0 = time.perf_counter()
            with poller:
                res = run(["borgmatic", "--config", self.yaml[variant], "create"], self.env)
            out.update(total=time.perf_counter() - t0, runtime_peak_bytes=poller.peak - poller.base,
                       output=res.stdout + res.stderr)
        else:
            t0 = time.perf_counter()
            res = run(["borgmatic", "--config", self.yaml[variant], "create"], self.env)
            out.update(total=time.perf_counter() - t0, output=res.stdout + res.stderr)
        calls = read_calls(self.call_log)
        bad = [c for c in calls if c["rc"] not in (0, 1) and not 100 <= c["rc"] <= 127]  # 1, 1xx: borg warnings
        if bad:
            raise RuntimeError(f"{variant}: a wrapped call failed: {bad}")
        out["warnings"] = [f'{c["args"][:40]} exited {c["rc"]}' for c in calls if c["rc"]]
        if out["warnings"] and not getattr(self, "warned", False):
            self.warned = True
            log(f"{variant} {phase}: borg warning: {out['warnings']}: {out.get('output', '')[-1500:]}")
        kinds: dict = {}
        for c in calls:
            kinds[call_kind(c)] = kinds.get(call_kind(c), 0) + c["s"]
        out["calls"] = kinds
        out.pop("output", None)
        return out

    def round(self, r: int) -> dict:
        self.write_configs(r)
        rec: dict = {"backups": {p: {} for p in PHASES}}
        order = list(VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)])
        rng = random.Random(1000 + r)
        for phase in PHASES:
            if phase == "changed":
                changed = rng.sample(self.spool_files, max(1, len(self.spool_files) // 100))
                for path in changed:
                    path.write_bytes(os.urandom(path.stat().st_size))
                run(["sync"])
            for i, variant in enumerate(order if phase != "changed" else order[::-1]):
                rec["backups"][phase][variant] = self.backup(variant, phase, r)
            log(f"round {r + 1} {phase}: " + ", ".join(f"{v} {rec['backups'][phase][v]['total']:.2f}s" for v in VARIANTS))
        # archives, freeze windows, dump size, growth of the unchanged backup
        listing = json.loads(run(["emg-borg", "-q", "-c", self.cfg, "archives", "--json", "--repository",
                                  self.repos["emg-borg"]], self.env).stdout)
        archives = listing if isinstance(listing, list) else listing.get("archives", listing)
        archives = sorted(archives, key=lambda a: a["name"])
        rec["freeze_window_ms"] = [a["freeze_window_ms"] for a in archives]
        rec["dump_bytes"] = archives[-1]["dump_bytes"]
        newest = run(["borg", "extract", "--stdout", f"{self.repos['emg-borg']}::{archives[-1]['name']}",
                      "emg-borg/manifest.json"], self.env).stdout
        rec["dump_transfer"] = json.loads(newest).get("dump_transfer")
        info = json.loads(run(["borg", "info", "--json", f"{self.repos['emg-borg']}::{archives[-1]['name']}"], self.env).stdout)
        rec["unchanged_growth_bytes"] = info["archives"][0]["stats"]["deduplicated_size"]
        info = json.loads(run(["borg", "info", "--json", f"{self.repos['emg-borg']}::{archives[1]['name']}"], self.env).stdout)
        rec["changed_growth_bytes"] = info["archives"][0]["stats"]["deduplicated_size"]
        # extraction
        rec["extract"] = {}
        for cats in (("config", "all") if r % 2 == 0 else ("all", "config")):
            dest = self.work / f"extract-{cats}"
            t0 = time.perf_counter()
            run(["emg-borg", "-q", "-c", self.cfg, "extract", "--categories", cats, "--repository",
                 self.repos["emg-borg"], "--destination", dest], self.env)
            rec["extract"][cats] = time.perf_counter() - t0
            shutil.rmtree(dest)
        # the reference freeze window (empty spool) and the bare hook costs
        t0 = time.perf_counter()
        run(["emg-borg", "-q", "-c", self.ref_cfg, "before-backup"], self.env)
        t1 = time.perf_counter()
        manifest = json.loads((self.work / "runtime-ref/staging/emg-borg/manifest.json").read_text())
        run(["emg-borg", "-q", "-c", self.ref_cfg, "after-backup"], self.env)
        rec["ref_window_ms"] = manifest["freeze_window_ms"]
        rec["ref_before_backup_s"] = t1 - t0
        # a bare Btrfs snapshot of each spool subvolume (what part of the window grows with the spool)
        rec["snapshot_s"] = {}
        for sub in ("spool", "spool-ref"):
            t0 = time.perf_counter()
            run(["btrfs", "subvolume", "snapshot", "-r", self.mnt / sub, self.mnt / f"{sub}-bench-snap"])
            rec["snapshot_s"][sub] = time.perf_counter() - t0
            run(["btrfs", "subvolume", "delete", self.mnt / f"{sub}-bench-snap"])
        # start-up costs
        rec["startup"] = {name: timed([name, "--version"], self.env) for name in ("emg-borg", "borgmatic", "borg")}
        t0 = time.perf_counter()
        run([sys.executable, "-c", "pass"], self.env)
        rec["startup"]["python"] = time.perf_counter() - t0
        read_calls(self.call_log)
        # free the disk
        for variant in VARIANTS:
            shutil.rmtree(self.repos[variant], ignore_errors=True)
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        return rec

    def cleanup(self) -> None:
        for cfg in (getattr(self, "cfg", None), getattr(self, "ref_cfg", None)):
            if cfg and cfg.exists():
                subprocess.run(["emg-borg", "-q", "-c", str(cfg), "on-error", "--force"], env=self.env, capture_output=True)
        if getattr(self, "mounted", False):
            for _ in range(10):
                if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        if self.server:
            self.server.stop()


# --- summary -------------------------------------------------------------------------------------

def summarize(bench: Bench, rounds: list[dict], elapsed: float) -> dict:
    def t(phase, variant):
        return med([r["backups"][phase][variant]["total"] for r in rounds])

    def ratio_med(f):
        return med([f(r) for r in rounds])

    def tot(r, phase, variant):
        return r["backups"][phase][variant]["total"]

    dump = med([r["dump_bytes"] for r in rounds])
    window = med([w for r in rounds for w in r["freeze_window_ms"]])
    ref_window = med([r["ref_window_ms"] for r in rounds])
    peak = med([r["backups"][p][v]["runtime_peak_bytes"] for r in rounds for p in PHASES for v in ("emg-borg", "validating")])
    transfer = "/".join(sorted({r.get("dump_transfer") or "?" for r in rounds}))
    rows = []

    def row(key, figure, value, ratio, goal, limit, unit=""):
        met = None if limit is None or ratio is None else ratio <= limit
        rows.append({"key": key, "figure": figure, "value": value, "ratio": ratio, "goal": goal, "met": met})

    snap = med([r["snapshot_s"]["spool"] for r in rounds]) * 1000
    snap_ref = med([r["snapshot_s"]["spool-ref"] for r in rounds]) * 1000
    row("a", f"freeze window, {bench.args.files}-file spool vs. empty spool", f"{window:.0f} ms vs {ref_window:.0f} ms",
        window / ref_window if ref_window else None, "(none set)", None)
    row("a", "bare `btrfs subvolume snapshot -r`, same two spools", f"{snap:.0f} ms vs {snap_ref:.0f} ms",
        ratio_med(lambda r: r["snapshot_s"]["spool"] / r["snapshot_s"]["spool-ref"]), "(for comparison)", None)
    for phase, label in (("first", "first (full) backup"), ("changed", "1%-changed backup"), ("unchanged", "unchanged backup")):
        e = t(phase, "emg-borg")
        for other, what, goal, limit in (("plain-skip", "borgmatic plain work, same settings", "≤ 1.05×", 1.05),
                                         ("plain", "borgmatic plain work, borgmatic defaults", "≤ 1.05×", 1.05),
                                         ("bare", "mysqldump + bare borg create", "≤ 1.25×", 1.25)):
            row("b", f"{label}: emg-borg vs. {what}", f"{e:.2f} s vs {t(phase, other):.2f} s",
                ratio_med(lambda r: tot(r, phase, "emg-borg") / tot(r, phase, other)), goal, limit)
    for phase, label in (("first", "first (full) backup"), ("changed", "1%-changed backup"), ("unchanged", "unchanged backup")):
        row("3", f"{label}: emg-borg, path validation skipped vs. on", f"{t(phase, 'emg-borg'):.2f} s vs {t(phase, 'validating'):.2f} s",
            ratio_med(lambda r: tot(r, phase, "emg-borg") / tot(r, phase, "validating")), "(item 3)", None)
    row("c", "1%-changed second backup vs. the first (emg-borg)",
        f"{t('changed', 'emg-borg'):.2f} s vs {t('first', 'emg-borg'):.2f} s",
        ratio_med(lambda r: tot(r, "changed", "emg-borg") / tot(r, "first", "emg-borg")), "≤ 0.5×", 0.5)
    growth = med([r["unchanged_growth_bytes"] for r in rounds])
    row("d", "unchanged backup's repository growth vs. the dump", f"{growth / 1024:.1f} KiB of {dump / 2**20:.1f} MiB",
        ratio_med(lambda r: r["unchanged_growth_bytes"] / r["dump_bytes"]), "< 0.5%", 0.005)
    ec, ea = med([r["extract"]["config"] for r in rounds]), med([r["extract"]["all"] for r in rounds])
    row("e", "extract --categories config vs. all", f"{ec:.2f} s vs {ea:.2f} s",
        ratio_med(lambda r: r["extract"]["config"] / r["extract"]["all"]), "(none set)", None)
    row("f", f"extra disk under runtime_dir while borg runs vs. the dump ({transfer})",
        f"{peak / 2**20:.2f} MiB of {dump / 2**20:.1f} MiB", peak / dump if dump else None, "< 5%", 0.05)

    # where the time goes (item 3): medians per call kind, per variant and phase
    breakdown: dict = {}
    for phase in PHASES:
        for variant in VARIANTS:
            kinds = sorted({k for r in rounds for k in r["backups"][phase][variant]["calls"]})
            entry = {k: med([r["backups"][phase][variant]["calls"].get(k, 0.0) for r in rounds]) for k in kinds}
            entry["total"] = t(phase, variant)
            nested = ("mysqldump",) if variant in ("emg-borg", "validating") else ()  # runs inside before-backup
            if nested and "mysqldump" in entry:
                entry["mysqldump (inside before-backup)"] = entry.pop("mysqldump")
            entry["outside wrapped calls"] = med([
                r["backups"][phase][variant]["total"]
                - sum(v for k, v in r["backups"][phase][variant]["calls"].items() if k not in nested) for r in rounds])
            entry["borg warnings"] = sum(len(r["backups"][phase][variant]["warnings"]) for r in rounds)
            breakdown[f"{phase}/{variant}"] = entry
    startup = {k: med([r["startup"][k] for r in rounds]) for k in rounds[0]["startup"]}
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "disk": run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(bench.work)]).stdout.strip()},
        "versions": {"borg": run(["borg", "--version"], bench.env).stdout.strip(),
                     "borgmatic": run(["borgmatic", "--version"], bench.env).stdout.strip()},
        "data": {"spool_files": bench.args.files, "spool_bytes": bench.spool_bytes, "routelog_rows": bench.args.rows,
                 "dump_bytes": dump, "repeat": len(rounds)},
        "table": rows,
        "breakdown_s": breakdown,
        "startup_s": startup,
        "ref_before_backup_s": med([r["ref_before_backup_s"] for r in rounds]),
        "elapsed_s": elapsed,
        "rounds": rounds,
    }


def fmt_ratio(key, ratio):
    if ratio is None:
        return "-"
    return f"{ratio * 100:.2f}%" if key in ("d", "f") else f"{ratio:.2f}×"


def print_table(s: dict) -> None:
    d = s["data"]
    print(f"emg-borg benchmark: {d['spool_files']} spool files ({d['spool_bytes'] / 2**20:.0f} MiB on Btrfs), "
          f"{d['routelog_rows']} routelog rows (dump {d['dump_bytes'] / 2**20:.1f} MiB), median of {d['repeat']} rounds")
    m = s["machine"]
    print(f"machine: {m['nproc']} cores, kernel {m['kernel']}, {m['disk']}; {s['versions']['borg']}, {s['versions']['borgmatic'].splitlines()[0]}")
    w = max(len(r["figure"]) for r in s["table"])
    print(f"{'':2}{'figure':<{w}}  {'value':<28}{'ratio':>8}  {'goal':<18}met?")
    for r in s["table"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['key']:<2}{r['figure']:<{w}}  {r['value']:<28}{fmt_ratio(r['key'], r['ratio']):>8}  {r['goal']:<18}{met}")
    print("\nwhere a run's time goes (median seconds; 'outside wrapped calls' = borgmatic's own Python, "
          "or the bench's process start-up for bare):")
    for name, entry in s["breakdown_s"].items():
        parts = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items() if k != "total")
        print(f"  {name:<20} total {entry['total']:.2f}: {parts}")
    print("start-up (--version): " + ", ".join(f"{k} {v:.3f} s" for k, v in s["startup_s"].items())
          + f"; before-backup of an empty spool {s['ref_before_backup_s']:.2f} s")
    print(f"benchmark took {s['elapsed_s'] / 60:.1f} min")


def start(parser: argparse.ArgumentParser, root_for: str) -> argparse.Namespace:
    """The arguments (with --json); exits 2 unless root; SIGTERM then cleans up like Ctrl-C does
    (the caller's finally)."""
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(f"run as root ({root_for})", file=sys.stderr)
        raise SystemExit(2)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return args


def output(summary: dict, args, print_table) -> int:
    """A benchmark's end: the summary written to --save FILE (when the benchmark has it), then
    printed as JSON (--json) or as its table."""
    if getattr(args, "save", None):
        Path(args.save).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_table(summary)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000, help="spool files (default %(default)s)")
    parser.add_argument("--rows", type=int, default=300000, help="routelog rows (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians (default %(default)s)")
    args = start(parser, "loop mounts, Btrfs snapshots")
    started = time.perf_counter()
    # The prefix must not contain "emg-borg": the test suite, which may run at the same time on
    # this machine, counts every mount whose path names emg-borg as its own leftover.
    with tempfile.TemporaryDirectory(prefix="emgbench-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.setup()
            rounds = []
            for r in range(args.repeat):
                rounds.append(bench.round(r))
            summary = summarize(bench, rounds, time.perf_counter() - started)
        finally:
            bench.cleanup()
    return output(summary, args, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
