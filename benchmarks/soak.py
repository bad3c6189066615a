#!/usr/bin/env python3
"""Soak run: consecutive backups through real borgmatic under a busy writer, one fault per cycle.

    python3 benchmarks/soak.py [--cycles 100] [--seed 1] [--rows 80000] [--json] [--records FILE]
    python3 benchmarks/soak.py --report FILE     # the table again from the records of a run

Builds, in its own temporary directory (prefix `emgsoak-`, removed with its mounts and daemon,
also on failure): a Btrfs file system on a loop file whose subvolume holds the sample EMG spool
(so snapshots are real), a throwaway MariaDB whose `routelog` has N rows (a few MB of dump), one
borg repository, and borgmatic-example.yaml with its paths substituted (the README's
integration: hooks at the `configuration` level, `read_special: true`, the dump streamed).

A writer thread inserts into `routelog` all along (each row a new, higher id: the message id the
[seqno] query reads), timing every INSERT. Each cycle draws one fault from a seeded list, runs
`borgmatic create`, and records:

  - the outcome: success, or failure with its cause (the `emg-borg: error:` line shortened, or
    borgmatic's exit and last line), and whether that was the expected outcome for the fault;
  - leftovers once the run has ended and emg-borg released it: mounts under runtime_dir, Btrfs
    snapshots, processes of the run (found by a mark in their environment: emg-borg streamers,
    mysqldump, borg), files left in runtime_dir (FIFOs, staging files, the lock), sessions of the
    dump's user. A SIGKILLed borgmatic cannot release anything: its leftovers are judged after
    the NEXT cycle, whose before-backup must recover the stale lock and ledger;
  - every new archive of a successful cycle checked with `emg-borg verify` (exit code), and its
    dump's newest routelog id compared with the manifest's message id (they must be equal).

Faults are injected with wrappers first on PATH (`borg`, `mysqldump`), which read the cycle's
fault from a control file; real borg and mysqldump do the work otherwise.

Needs root, loop devices, btrfs-progs, mariadb-server, borg, borgmatic and emg-borg on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emg_borg.demo import mariadb, sample  # noqa: E402
from emg_borg.demo.borgmatic import example_config  # noqa: E402
from benchmarks.run import log, run  # noqa: E402  (the benchmark's logging and command helpers)

PASSPHRASE = "emg-borg-soak-passphrase"
MARK = "EMG_BORG_SOAK_MARK"
STAGING_TMPFS = "3m"  # above the buffer's bound while borg keeps up (~2 MiB), below the dump

# fault: (share, expected outcome, what it does)
FAULTS = {
    "none": (40, "success", "nothing: a healthy run"),
    "borg-fails-before-reading": (7, "failure", "borg create exits 2 at once"),
    "borg-fails-after-reading": (7, "failure", "borg create reads everything into a scratch repository, then exits 2"),
    "borg-starts-late": (8, "success", "borg create sleeps 10-20 s before the real borg (net_write_timeout 10 s)"),
    "retries": (8, "success", "`retries: 2`; the first borg create reads 1 MB of the dump and exits 2"),
    "borgmatic-sigkilled": (8, "failure", "borgmatic SIGKILLed at a random moment; the next cycle recovers"),
    "mysqldump-killed": (7, "failure", "mysqldump SIGKILLed after 2 MB"),
    "staging-disk-full": (7, "failure", f"runtime_dir on a {STAGING_TMPFS} tmpfs, borg 15 s late: the buffer hits ENOSPC"),
    "second-reader": (8, "failure", "a process outside borgmatic opens the dump's pipe and reads 300 kB"),
}

BORG_WRAPPER = r"""#!/bin/bash
# the soak's borg: the cycle's fault for `borg create` (not borgmatic's --dry-run), else real borg
REAL={real}
FAULT=$(cat {control} 2>/dev/null)
case " $* " in *" create "*) case " $* " in *" --dry-run "*) ;; *)
  n=$(( $(cat {work}/attempts 2>/dev/null || echo 0) + 1 )); echo $n > {work}/attempts
  case "$FAULT" in
    borg-fails-before-reading) echo "Remote: connection closed by remote host" >&2; exit 2;;
    borg-fails-after-reading)
      rm -rf {work}/scratch.borg; "$REAL" init -e none {work}/scratch.borg >/dev/null 2>&1
      set -- $(printf '%s\n' "$@" | sed 's#^{repo}::#{work}/scratch.borg::#')
      "$REAL" "$@" >/dev/null 2>&1; echo "Remote: connection closed by remote host" >&2; exit 2;;
    borg-starts-late) sleep $(cat {work}/late_seconds);;
    staging-disk-full) sleep 15;;
    retries) if [ "$n" = 1 ]; then head -c 1000000 {dump} >/dev/null; echo "Connection closed" >&2; exit 2; fi;;
    second-reader) touch {work}/borg-ready; sleep 3;;
  esac;; esac;; esac
exec "$REAL" "$@"
"""

MYSQLDUMP_WRAPPER = r"""#!/bin/bash
REAL={real}
if [ "$(cat {control} 2>/dev/null)" = mysqldump-killed ]; then
  "$REAL" "$@" | head -c 2000000; kill -9 $$
fi
exec "$REAL" "$@"
"""


def mounts_under(path: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(str(path) + "/"):
                found.append(target)
    return found


def marked_processes(mark: str) -> list[str]:
    """Processes whose environment carries the mark: what a run started, wherever reparented."""
    needle = f"\0{MARK}={mark}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = b"\0" + f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if needle + b"\0" in environ or environ.endswith(needle):
            found.append(f"process {entry.name}: {cmdline[:100]}")
    return found


def shorten(line: str, limit: int = 110) -> str:
    return line if len(line) <= limit else line[:limit - 1] + "…"


def cause_of(line: str, work: Path) -> str:
    """A failure's cause, comparable across cycles: paths, pids, sizes and names made generic."""
    line = line.replace(str(work), "…")
    line = re.sub(r"emg-\d{4}-\d\d-\d\dT[\d:.]+", "ARCHIVE", line)
    line = re.sub(r"\d+", "N", line)
    return shorten(line, 140)


class Writer(threading.Thread):
    """Inserts into routelog with ever higher ids, timing each INSERT (the EMG server's view of a
    freeze: its writes wait while the global read lock is held)."""

    def __init__(self, server: mariadb.MariaDB, first_id: int):
        super().__init__(daemon=True)
        import pymysql
        self.connection = pymysql.connect(unix_socket=server.socket, user="root", database=sample.DB_NAME,
                                          autocommit=True)
        self.next_id, self.stop = first_id, threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[tuple[float, float]] = []  # (monotonic start, seconds)
        self.errors: list[str] = []

    def run(self):
        with self.connection.cursor() as cursor:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    cursor.execute("INSERT INTO routelog (id, connector, sender, recipient, status) "
                                   "VALUES (%s, 'mgp-in1', '46700000000', '46711111111', 0)", (self.next_id,))
                    self.next_id += 1
                except Exception as error:  # noqa: BLE001 - a writer error is a result, not a crash
                    self.errors.append(f"{type(error).__name__}: {error}")
                with self.lock:
                    self.latencies.append((started, time.monotonic() - started))
                time.sleep(0.02)

    def worst_between(self, start: float, end: float) -> float:
        with self.lock:
            return max((s for t, s in self.latencies if start <= t <= end), default=0.0)


class Soak:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.rng = random.Random(args.seed)
        self.mnt, self.runtime, self.repo = work / "btrfs", work / "runtime", work / "repo.borg"
        self.server: mariadb.MariaDB | None = None
        self.writer: Writer | None = None
        self.mounted = False
        self.durations: list[float] = []

    # setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        w = self.work
        bindir = w / "bin"
        bindir.mkdir()
        self.control = w / "fault"
        self.dump_fifo = self.runtime / "staging" / "emg-borg" / "dumps" / "mysql" / f"{sample.DB_NAME}.sql"
        for name, text in (("borg", BORG_WRAPPER), ("mysqldump", MYSQLDUMP_WRAPPER)):
            real = shutil.which(name)
            if not real:
                raise SystemExit(f"{name} not on PATH")
            (bindir / name).write_text(text.format(real=real, control=self.control, work=w, repo=self.repo,
                                                   dump=self.dump_fifo))
            (bindir / name).chmod(0o755)
        (w / "xdg-runtime").mkdir(mode=0o700)
        self.env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", XDG_RUNTIME_DIR=str(w / "xdg-runtime"),
                        BORG_PASSPHRASE=PASSPHRASE, BORG_BASE_DIR=str(w / "borg-base"),
                        PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        log("starting MariaDB")
        self.server = mariadb.MariaDB(w / "mariadb")
        self.server.start()
        image = w / "btrfs.img"
        self.mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(512 * 2**20)
        run(["mkfs.btrfs", "-q", image])
        run(["mount", "-o", "loop", image, self.mnt])
        self.mounted = True
        run(["btrfs", "subvolume", "create", self.mnt / "spool"])
        self.tree = sample.build(w / "server", db_port=self.server.port, spooldir=self.mnt / "spool" / "emg")
        sample.load_schema(self.server, rows=0)
        rows = self.args.rows
        self.server.sql("INSERT INTO routelog (id, connector, sender, recipient, status) SELECT seq, 'mgp-in1', "
                        f"CONCAT('4670', seq), CONCAT('4671', seq % 9973), seq % 7 FROM seq_1_to_{rows}", sample.DB_NAME)
        self.runtime.mkdir(mode=0o700)
        self.cfg = w / "emg-borg.toml"
        self.cfg.write_text(f'[emg]\nemgdir = "{self.tree.emgdir}"\n[backup]\nruntime_dir = "{self.runtime}"\n'
                            '[snapshot]\nprovider = "btrfs"\n')
        self.yaml = w / "borgmatic.yaml"
        self.yaml.write_text(example_config(self.runtime, self.cfg, self.repo, PASSPHRASE).replace(
            'archive_name_format: "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S}"',
            'archive_name_format: "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S.%f}"'))  # cycles < 1 s apart
        self.yaml_retries = w / "borgmatic-retries.yaml"
        self.yaml_retries.write_text(self.yaml.read_text() + "\nretries: 2\nretry_wait: 0\n")
        run(["borg", "init", "--encryption=repokey-blake2", self.repo], self.env)
        self.writer = Writer(self.server, rows + 1)
        self.writer.start()
        log(f"ready: {rows} routelog rows, writer running; {self.args.cycles} cycles, seed {self.args.seed}")

    def cleanup(self) -> None:
        if self.writer:
            self.writer.stop.set()
            self.writer.join(timeout=10)
        if getattr(self, "cfg", None) and self.cfg.exists():
            subprocess.run(["emg-borg", "-q", "-c", str(self.cfg), "on-error", "--force"], env=self.env,
                           capture_output=True)
        for target in sorted(mounts_under(self.work), key=len, reverse=True):
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)
        if self.server:
            self.server.stop()

    # one cycle ---------------------------------------------------------------------------------
    def draw(self, previous: str | None) -> str:
        names = list(FAULTS)
        while True:
            fault = self.rng.choices(names, weights=[FAULTS[n][0] for n in names])[0]
            # a tmpfs mounted on runtime_dir would hide what a SIGKILLed run left for recovery
            if self.args.only and fault not in self.args.only.split(","):
                continue
            if not (previous == "borgmatic-sigkilled" and fault == "staging-disk-full"):
                return fault

    def archives(self) -> list[str]:
        return run(["borg", "list", "--short", self.repo], self.env).stdout.split()

    def cycle(self, n: int, fault: str) -> dict:
        w = self.work
        for name in ("attempts", "borg-ready"):
            (w / name).unlink(missing_ok=True)
        (w / "late_seconds").write_text(str(self.rng.randint(10, 20)))
        self.control.write_text(fault)
        mark = uuid.uuid4().hex
        env = dict(self.env, **{MARK: mark})
        before = set(self.archives())
        rec: dict = {"cycle": n, "fault": fault, "expected": FAULTS[fault][1]}
        tmpfs = fault == "staging-disk-full"
        if tmpfs:
            run(["mount", "-t", "tmpfs", "-o", f"size={STAGING_TMPFS},mode=0700", "emgsoak-staging", self.runtime])
        lowered = fault in ("borg-starts-late", "staging-disk-full")
        if lowered:
            self.server.sql("SET GLOBAL net_write_timeout = 10")
        config = self.yaml_retries if fault == "retries" else self.yaml
        started = time.monotonic()
        try:
            borgmatic = subprocess.Popen(["borgmatic", "--config", str(config), "create"], env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if fault == "borgmatic-sigkilled":
                typical = sorted(self.durations)[len(self.durations) // 2] if self.durations else 8.0
                at = self.rng.uniform(0.05, 0.95) * typical
                try:
                    borgmatic.wait(timeout=at)
                    rec["expected"] = "success"  # it finished before the kill: nothing was killed
                except subprocess.TimeoutExpired:
                    borgmatic.kill()
                    rec["killed_after_s"] = round(at, 1)
            elif fault == "second-reader":
                threading.Thread(target=self.second_reader, args=(borgmatic, rec), daemon=True).start()
            stdout, stderr = borgmatic.communicate(timeout=900)
            elapsed = time.monotonic() - started
            if fault == "borgmatic-sigkilled":
                # the orphans (borg, streamers) end by themselves once borgmatic is gone
                deadline = time.monotonic() + 60
                while marked_processes(mark) and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            if lowered:
                self.server.sql("SET GLOBAL net_write_timeout = 60")
        rec["seconds"] = round(elapsed, 1)
        rec["exit"] = borgmatic.returncode
        errors = [line for line in stderr.splitlines() if line.startswith("emg-borg: error:")]
        if borgmatic.returncode == 0:
            rec["outcome"], rec["cause"] = "success", None
            if fault == "none":
                self.durations.append(elapsed)
        else:
            rec["outcome"] = "failure"
            if borgmatic.returncode == -signal.SIGKILL and fault == "borgmatic-sigkilled":
                rec["cause"] = "borgmatic SIGKILLed"
            elif errors:
                rec["cause"] = cause_of(errors[0], w)
            elif failed := re.search(r"Command '(borg [a-z-]+).*' returned non-zero exit status (\d+)", stderr):
                rec["cause"] = f"borgmatic exit {borgmatic.returncode}: {failed[1]} exited {failed[2]}"
            else:
                last = [line for line in (stderr + stdout).splitlines() if line.strip()][-1:] or [""]
                rec["cause"] = cause_of(f"borgmatic exit {borgmatic.returncode}: {last[0]}", w)
            rec["error_lines"] = len(errors)
            rec["stderr_tail"] = (stderr or "")[-1500:]
        rec["expected_ok"] = rec["outcome"] == rec["expected"]
        rec["writer_worst_s"] = round(self.writer.worst_between(started - 0.1, time.monotonic()), 3)
        rec["leftovers_now"] = self.leftovers(mark)
        if tmpfs:
            run(["umount", self.runtime])
        new = [a for a in self.archives() if a not in before]
        rec["new_archives"] = new
        # every new archive is checked; only a success's count as "a success with a bad dump"
        rec["checks"] = [self.check(a) for a in new] if rec["outcome"] == "success" else []
        rec["failure_archive_checks"] = [self.check(a) for a in new] if rec["outcome"] == "failure" else []
        return rec

    def second_reader(self, borgmatic: subprocess.Popen, rec: dict) -> None:
        ready = self.work / "borg-ready"
        while not ready.exists() and borgmatic.poll() is None:
            time.sleep(0.05)
        if borgmatic.poll() is not None:
            return
        taken = 0
        try:
            fd = os.open(self.dump_fifo, os.O_RDONLY)  # blocks until the streamer opens its end
            try:
                while taken < 300_000 and (data := os.read(fd, 65536)):
                    taken += len(data)
            finally:
                os.close(fd)
        except OSError as error:
            rec["second_reader_error"] = str(error)
        rec["second_reader_bytes"] = taken

    def leftovers(self, mark: str, settle: float = 3.0) -> list[str]:
        deadline = time.monotonic() + settle
        while True:
            found = [f"mount {m}" for m in mounts_under(self.runtime)]
            found += [f"file {p.relative_to(self.runtime)}" for p in self.runtime.rglob("*")] if self.runtime.exists() else []
            listed = run(["btrfs", "subvolume", "list", self.mnt]).stdout.splitlines()
            found += [f"subvolume {line.split(' path ', 1)[-1]}" for line in listed
                      if not line.endswith(" path spool")]
            found += marked_processes(mark)
            sessions = self.server.sql(f"SELECT id, command, state FROM information_schema.processlist "
                                       f"WHERE user = '{sample.DB_USER}'").split("\n")
            found += [f"session {s}" for s in sessions if s.strip()]
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.3)

    def check(self, archive: str) -> dict:
        verify = run(["emg-borg", "-q", "-c", self.cfg, "verify", "--repository", self.repo, "--archive", archive],
                     self.env, check=False)
        out = {"archive": archive, "verify_exit": verify.returncode,
               "verify_line": shorten((verify.stdout + verify.stderr).strip().splitlines()[-1:][0]
                                      if (verify.stdout + verify.stderr).strip() else "")}
        got = run(["borg", "extract", "--stdout", f"{self.repo}::{archive}", "emg-borg/manifest.json"], self.env,
                  check=False)
        try:
            manifest = json.loads(got.stdout)
        except ValueError:  # no manifest, or a broken one: what did borg store?
            items = run(["borg", "list", "--format", "{type} {size} {path}{NL}", f"{self.repo}::{archive}", "emg-borg"],
                        self.env, check=False).stdout.splitlines()
            out.update(manifest=False, dump_ok=False, emg_borg_items=items)
            return out
        [entry] = manifest["dumps"]
        dump = subprocess.run(["borg", "extract", "--stdout", f"{self.repo}::{archive}", entry["path"]],
                              env=self.env, capture_output=True).stdout
        # MariaDB's mysqldump writes each row of an extended INSERT on its own line
        start = dump.find(b"LOCK TABLES `routelog` WRITE;")
        section = dump[start:dump.find(b"UNLOCK TABLES;", start)] if start >= 0 else b""
        ids = [int(i) for i in re.findall(rb"^\((\d+),'mgp-in1'", section, re.MULTILINE)]
        newest = max(ids) if ids else None
        out.update(message_id=manifest.get("message_id"), dump_newest_id=newest, dump_bytes=len(dump),
                   manifest_bytes=entry.get("bytes"))
        out["dump_ok"] = (verify.returncode == 0 and len(dump) == entry.get("bytes")
                          and newest == manifest.get("message_id"))
        return out


# --- report ----------------------------------------------------------------------------------------

def summarize(records: list[dict], meta: dict) -> dict:
    # A SIGKILLed cycle's leftovers are those after the next cycle (its before-backup recovers them).
    for i, rec in enumerate(records):
        if rec["fault"] == "borgmatic-sigkilled":
            rec["leftovers_after_kill"] = rec["leftovers_now"]
            later = records[i + 1]["leftovers_now"] if i + 1 < len(records) else rec["leftovers_now"]
            rec["leftovers"] = later + [p for p in rec["leftovers_now"] if p.startswith("process")]
        else:
            rec["leftovers"] = rec["leftovers_now"]
    per: dict = {}
    for fault in FAULTS:
        rs = [r for r in records if r["fault"] == fault]
        if not rs:
            continue
        causes: dict = {}
        for r in rs:
            if r["outcome"] == "failure":
                causes[r["cause"]] = causes.get(r["cause"], 0) + 1
        checks = [c for r in rs for c in r["checks"]]
        per[fault] = {
            "expected": FAULTS[fault][1], "what": FAULTS[fault][2], "cycles": len(rs),
            "successes": sum(r["outcome"] == "success" for r in rs),
            "failures": sum(r["outcome"] == "failure" for r in rs),
            "failures_by_cause": causes,
            "unexpected": sum(not r["expected_ok"] for r in rs),
            "cycles_with_leftovers": sum(bool(r["leftovers"]) for r in rs),
            "verified": len(checks), "verify_ok": sum(c["verify_exit"] == 0 for c in checks),
            "dump_id_equal": sum(c.get("manifest", True) and c["dump_newest_id"] == c["message_id"] for c in checks),
            "bad_dump_successes": sum(not c["dump_ok"] for c in checks),
            "archives_left_by_failures": sum(len(r["new_archives"]) for r in rs if r["outcome"] == "failure"),
            "failure_archives_verify_ok": sum(c["dump_ok"] for r in rs for c in r["failure_archive_checks"]),
            "one_error_line": sum(r.get("error_lines") == 1 for r in rs if r["outcome"] == "failure"),
            "worst_writer_stall_s": max(r["writer_worst_s"] for r in rs),
            "median_seconds": sorted(r["seconds"] for r in rs)[len(rs) // 2],
        }
    keys = ("cycles", "successes", "failures", "unexpected", "cycles_with_leftovers", "verified", "verify_ok",
            "dump_id_equal", "bad_dump_successes", "archives_left_by_failures", "failure_archives_verify_ok",
            "one_error_line")
    totals = {k: sum(p[k] for p in per.values()) for k in keys}
    totals["worst_writer_stall_s"] = max(p["worst_writer_stall_s"] for p in per.values())
    return {"command": " ".join(["python3"] + sys.argv), **meta, "per_fault": per, "totals": totals,
            "cycles": records}


def versions(env) -> dict:
    return {name: run([name, "--version"], env).stdout.strip().splitlines()[0] for name in ("borg", "borgmatic", "emg-borg")}


def print_table(s: dict) -> None:
    t = s["totals"]
    writer = (f"; routelog {s['routelog_rows_at_start']} rows + {s['rows_written']} written during the run "
              f"({s['writer_inserts']} INSERTs, {len(s['writer_errors'])} failed)" if "rows_written" in s else "")
    print(f"soak: {t['cycles']} cycles, seed {s['seed']}, {s['elapsed_s'] / 60:.0f} min; {s['versions']['borg']}, "
          f"borgmatic {s['versions']['borgmatic']}{writer}\n")
    print("| fault | expected | cycles | successes | failures by cause | unexpected | leftovers | verify OK | "
          "dump id = message id | worst writer stall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fault, p in s["per_fault"].items():
        causes = "; ".join(f"{n}× `{c}`" for c, n in p["failures_by_cause"].items()) or "-"
        print(f"| {fault} | {p['expected']} | {p['cycles']} | {p['successes']} | {causes} | {p['unexpected']} | "
              f"{p['cycles_with_leftovers']} | {p['verify_ok']}/{p['verified']} | {p['dump_id_equal']}/{p['verified']} | "
              f"{p['worst_writer_stall_s']:.2f} s |")
    print(f"| **total** | | {t['cycles']} | {t['successes']} | {t['failures']} | {t['unexpected']} | "
          f"{t['cycles_with_leftovers']} | {t['verify_ok']}/{t['verified']} | {t['dump_id_equal']}/{t['verified']} | "
          f"{t['worst_writer_stall_s']:.2f} s |")
    print(f"\nunexpected outcomes: {t['unexpected']}; successes with a bad dump: {t['bad_dump_successes']}; "
          f"failures with exactly one emg-borg error line: {t['one_error_line']}/{t['failures']}; "
          f"archives left by failed cycles: {t['archives_left_by_failures']} (whole and verified: "
          f"{t['failure_archives_verify_ok']})")
    for r in s["cycles"]:
        if not r["expected_ok"] or r["leftovers"] or any(not c["dump_ok"] for c in r["checks"]):
            print(f"  cycle {r['cycle']} {r['fault']}: {r['outcome']} ({r.get('cause')}); "
                  f"leftovers {r['leftovers'][:4]}; checks {[c for c in r['checks'] if not c['dump_ok']]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=80000, help="routelog rows at the start (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    parser.add_argument("--only", metavar="FAULT,...", help="draw only these faults (for debugging)")
    parser.add_argument("--records", metavar="FILE", help="also append each cycle's record to FILE as it ends")
    parser.add_argument("--report", metavar="FILE", help="only print the table of the records in FILE")
    args = parser.parse_args()
    if args.report:  # the table again from the records of a run (also of one cut short)
        with open(args.report) as f:
            records = [json.loads(line) for line in f if line.strip()]
        print_table(summarize(records, {"seed": args.seed, "versions": versions(os.environ), "routelog_rows_at_start":
                                        args.rows, "elapsed_s": sum(r["seconds"] for r in records)}))
        return 0
    if os.geteuid() != 0:
        print("run as root (loop mounts, Btrfs snapshots)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    # The prefix must not contain "emg-borg": the test suite counts such mounts as its own leftovers.
    with tempfile.TemporaryDirectory(prefix="emgsoak-") as tmp:
        soak = Soak(Path(tmp), args)
        records: list[dict] = []
        try:
            soak.setup()
            previous = None
            for n in range(1, args.cycles + 1):
                fault = soak.draw(previous)
                log(f"cycle {n}: {fault}")
                rec = soak.cycle(n, fault)
                records.append(rec)
                if args.records:
                    with open(args.records, "a") as f:
                        f.write(json.dumps(rec, default=str) + "\n")
                log(f"cycle {n} {fault}: {rec['outcome']} ({rec['seconds']} s){' ' + rec['cause'] if rec['cause'] else ''}"
                    f"{'' if rec['expected_ok'] else ' UNEXPECTED'}; leftovers {len(rec['leftovers_now'])}; "
                    f"checks {[c['dump_ok'] for c in rec['checks']]}; archives left by a failure "
                    f"{[(c['archive'], c['dump_ok'], c.get('emg_borg_items')) for c in rec['failure_archive_checks']]}; "
                    f"stall {rec['writer_worst_s']} s")
                previous = fault
            writer = soak.writer
            summary = summarize(records, {
                "seed": args.seed, "versions": versions(soak.env), "routelog_rows_at_start": args.rows,
                "rows_written": writer.next_id - args.rows - 1, "writer_inserts": len(writer.latencies),
                "writer_errors": writer.errors[:5], "elapsed_s": round(time.monotonic() - started)})
        finally:
            soak.cleanup()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
