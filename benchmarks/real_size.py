#!/usr/bin/env python3
"""Benchmark: emg-borg at real database size, a `routelog` of millions of rows (issue 15, item 5).

    python3 benchmarks/real_size.py [--rows 1000000,10000000] [--replica] [--buffer-pool 1G] [--json] [--save FILE]
    python3 benchmarks/real_size.py --rows 100000                  # a quick smoke run
    python3 benchmarks/real_size.py --report FILE                  # the table again from a --save

Builds, in its own temporary directory (prefix `emgbench-real-`, removed with the daemons it
started, also on failure): a sample EMG tree (a small live spool, snapshot provider `none`: this
benchmark is about the database; benchmarks/run.py measures the snapshot), a throwaway MariaDB
(the primary, binary log on) and, with `--replica`, a second one (server id 2, read-only), made a
GTID replica of the primary before the first row, so that it replicates the rows as they are
generated (as a real replica would have). Then, for each size, smallest first, growing the same
table:

  rows       `routelog` grown to N rows by INSERT ... SELECT doubling (at most 1,000,000 rows a
             statement; the last step copies only what the exact count lacks). Every column is
             computed from the new row's id through CRC32/MD5 (8 connectors, MSISDN or named
             senders, random recipients, a status mix, a timestamp that grows with the id): no
             row repeats another, so compression and deduplication are not flattered.
  split      where the time goes: mysqldump (emg-borg's options) > /dev/null, the server's read
             rate; mysqldump > a file; `borg create` of that file alone into a new repository
             (borg's chunking, compression, encryption, writing) and again with the files cache
             off (chunking and hashing only, nothing new stored); `mysqldump | borg create -` (a
             plain pipe: streaming without emg-borg) and the same with emg-borg's DumpBuffer in
             between, used as the streamer uses it; the file through the DumpBuffer alone (into
             `cat`) vs. through `cat | cat`.
  backups    `borgmatic create` with borgmatic-example.yaml as emg-borg ships it (dump streamed),
             into one new repository: `first` with a busy writer inserting into routelog all along
             (one INSERT every ~20 ms; its worst INSERT and its worst gap between commits, and
             the run's `freeze_window_ms`), `appended` (the writer's rows since), `unchanged`,
             `spread` (after an UPDATE of 1% of the rows, spread over the table) and `newest`
             (after an UPDATE of the newest 1%: delivery reports of recent traffic).
  replica    with --replica: `first` again into a new repository, dumped from the replica
             (`[mysql.replica] socket`), the writer on the primary.
  restore    the newest archive's dump extracted with `borg extract --stdout` and loaded with
             `mysql --batch emg < dump` (what `emg-borg restore` runs) into a fresh MariaDB with
             the primary's settings (binary log on).

Each figure is one measurement (the machine's load average is recorded next to it). Needs root
(runtime_dir must be root's), mariadb-server, borg, borgmatic and emg-borg on PATH, and PyMySQL.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import bench_env, call_kind, example_yaml, log, output, read_calls, run, start  # noqa: E402
from benchmarks.soak import Writer  # noqa: E402  (the soak's busy writer: timed INSERTs into routelog)
from emg_borg.core.dump_buffer import CHUNK, DumpBuffer  # noqa: E402
from emg_borg.core.named_pipe import write_all  # noqa: E402
from emg_borg.core.streamer import F_SETPIPE_SZ  # noqa: E402
from emg_borg.demo import mariadb, sample  # noqa: E402
from emg_borg.external.mysql import mysqldump_argv  # noqa: E402

DB = sample.DB_NAME
MiB = 2**20
COLUMNS = "(id, connector, sender, recipient, status, created)"
CONNECTORS = ("mgp-in1", "smpp-in1", "smpp-in2", "http-in1", "smpp-out1", "smpp-out2", "ucp-out1", "mgp-out1")
SENDER_NAMES = ("BANKID", "Klarna", "PostNord", "SJ", "Kivra", "DHL", "Apotek", "Vardguiden", "Skatteverket",
                "Telia", "Tele2", "ICA")
STATUSES = (0,) * 44 + (1, 1, 3, 5, 5, 8)  # 88% delivered
SEED_ROWS = 1024
ROWS_A_STATEMENT = 1_000_000
BACKUPS = ("first", "appended", "unchanged", "spread", "newest")
WRITER_LEAD = 5.0  # seconds the writer runs before the backup: its stalls without a backup


def row_values(new_id: str) -> str:
    """The columns of a new row whose id is the SQL expression `new_id`, each drawn from a hash of
    the id: about 70 bytes of dump a row that lz4 shrinks to a third, not to nothing."""
    i = f"({new_id})"

    def pick(salt: str, choices) -> str:
        quoted = ", ".join(f"'{c}'" if isinstance(c, str) else str(c) for c in choices)
        return f"ELT(1 + CRC32(CONCAT('{salt}', {i})) % {len(choices)}, {quoted})"

    return (f"{i}, {pick('c', CONNECTORS)}, "
            f"IF(CRC32(CONCAT('a', {i})) % 10 < 3, {pick('b', SENDER_NAMES)}, "
            f"CONCAT('4670', LPAD(CRC32(CONCAT('s', {i})) % 2000000, 7, '0'))), "
            f"CONCAT('467', {pick('p', ('0', '2', '3', '6', '9'))}, "
            f"LPAD(CONV(SUBSTR(MD5({i}), 1, 8), 16, 10) % 10000000, 7, '0')), "
            f"{pick('t', STATUSES)}, "
            f"FROM_UNIXTIME(1764547200 + FLOOR({i} * 0.26) + CRC32(CONCAT('j', {i})) % 7)")  # ~10M rows a month


def sql(server: mariadb.MariaDB, statement: str) -> str:
    """`statement` on the `emg` database; a failure says the server's error."""
    try:
        return server.sql(statement, DB)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{statement[:300]}: {error.stderr.strip()}") from None


def count_rows(server: mariadb.MariaDB) -> tuple[int, int]:
    count, highest = sql(server, "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM routelog").split()
    return int(count), int(highest)


def grow_routelog(server: mariadb.MariaDB, target: int) -> int:
    """Grow routelog (ids 1..n without gaps) to exactly `target` rows; the statements run."""
    have, highest = count_rows(server)
    if have != highest:
        raise RuntimeError(f"routelog ids have gaps ({have} rows, highest id {highest}): cannot double it")
    statements = 0
    if have == 0:
        have = min(target, SEED_ROWS)
        sql(server, f"INSERT INTO routelog {COLUMNS} SELECT {row_values('seq')} FROM seq_1_to_{have}")
        statements += 1
    while have < target:
        step = min(have, target - have)
        for low in range(0, step, ROWS_A_STATEMENT):
            high = min(step, low + ROWS_A_STATEMENT)
            sql(server, f"INSERT INTO routelog {COLUMNS} SELECT {row_values(f'id + {have}')} FROM routelog "
                        f"WHERE id > {low} AND id <= {high}")
            statements += 1
        have += step
    return statements


def update_rows(server: mariadb.MariaDB, where: str) -> int:
    """Flip the status of the rows `where` selects (a delivery report's change); how many."""
    out = sql(server, f"UPDATE routelog SET status = IF(status = 0, 5, 0) WHERE {where}; SELECT ROW_COUNT();")
    return int(out.split()[-1])


def table_bytes(server: mariadb.MariaDB) -> int:
    sql(server, "ANALYZE TABLE routelog")  # the statistics information_schema reports
    return int(server.sql("SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                          f"WHERE TABLE_SCHEMA = '{DB}' AND TABLE_NAME = 'routelog'").strip())


@contextlib.contextmanager
def busy_writer(server: mariadb.MariaDB):
    """The soak's writer, inserting above the highest id, for the duration of the block."""
    writer = Writer(server, count_rows(server)[1] + 1)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop.set()
        writer.join()
        writer.connection.close()


def stalls(writer: Writer, begin: float, end: float) -> dict:
    """The writer's worst INSERT and worst gap between two commits (sleep included) in [begin, end]."""
    with writer.lock:
        inserts = [(t, s) for t, s in writer.latencies if begin <= t <= end]
    commits = sorted(t + s for t, s in inserts)
    return {"inserts": len(inserts), "worst_insert_s": max((s for _, s in inserts), default=None),
            "worst_gap_s": max((b - a for a, b in zip(commits, commits[1:])), default=None),
            "errors": len(writer.errors)}


def timed_to(argv, out, env=None, stdin=None) -> float:
    """Seconds `argv` takes writing into `out` (a path)."""
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run([str(a) for a in argv], stdout=f, stdin=stdin, env=env, check=True)
    return time.perf_counter() - t0


def through_buffer(source_argv, sink_argv, buffer_path: Path, env=None) -> float:
    """Seconds for `source_argv | (emg-borg's DumpBuffer) | sink_argv`, the buffer used the way the
    streamer uses it: a drain thread reads the producer's pipe (enlarged to one read, as the
    streamer does) into the buffer file, hashing it; this thread serves the buffer into the sink's
    pipe, punching out what was read."""
    t0 = time.perf_counter()
    with subprocess.Popen([str(a) for a in source_argv], stdout=subprocess.PIPE) as source, \
            subprocess.Popen([str(a) for a in sink_argv], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             env=env) as sink:
        fcntl.fcntl(source.stdout.fileno(), F_SETPIPE_SZ, CHUNK)
        buffer = DumpBuffer(str(buffer_path), keep=False)
        drained = threading.Thread(target=lambda: buffer.finish(
            None if buffer.drain(source.stdout.fileno(), threading.Event()) else buffer.error))
        drained.start()
        buffer.start_reader()
        while (data := buffer.next_chunk(0.5)) != b"":
            if buffer.error:
                raise RuntimeError(buffer.error)
            if data:
                write_all(sink.stdin.fileno(), data)
                buffer.passed(len(data))
        drained.join()
        buffer.close()
        sink.stdin.close()
    if source.returncode or sink.returncode:
        raise RuntimeError(f"{source_argv[0]} exited {source.returncode}, {sink_argv[0]} exited {sink.returncode}")
    return time.perf_counter() - t0


class RealSize:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.primary: mariadb.MariaDB | None = None
        self.replica: mariadb.MariaDB | None = None
        self.scratch: mariadb.MariaDB | None = None
        self.configs: list[Path] = []
        self.env = dict(os.environ)

    # set-up --------------------------------------------------------------------------------------
    def setup(self) -> None:
        w, a = self.work, self.args
        self.env = bench_env(w)
        self.call_log = w / "calls.log"
        log(f"disk before: {df(w)}")
        self.primary = mariadb.MariaDB(w / "primary", server_id=1, buffer_pool=a.buffer_pool).start()
        self.facts = {"replica_setup": None}
        if a.replica:
            # Before the first row: the replica then applies the generation as it happens.
            self.replica = mariadb.MariaDB(w / "replica", server_id=2, read_only=True, buffer_pool=a.buffer_pool).start()
            self.replica.replicate_from(self.primary)
            self.facts["replica_setup"] = "replicate_from(primary) before the schema and the first row"
        sample.load_schema(self.primary, rows=0)
        tree = sample.build(w / "server", db_port=self.primary.port, spool_files=20)
        self.runtime = w / "runtime"
        self.cfg = self.config("emg-borg.toml", "")
        self.replica_cfg = None
        if self.replica:
            self.replica_cfg = self.config("emg-borg-replica.toml", f'[mysql.replica]\nsocket = "{self.replica.socket}"\n')
            checked = run(["emg-borg", "-c", self.replica_cfg, "config", "validate"], self.env, check=False)
            if checked.returncode != 0:
                self.facts["replica_missing"] = (checked.stdout + checked.stderr).strip().splitlines()[-1]
                log(f"the replica column is missing: emg-borg refuses [mysql.replica]: {self.facts['replica_missing']}")
                self.replica_cfg = None
        defaults = w / "my.cnf"  # the plain mysqldump of the split: emg-borg's user, options, server
        defaults.write_text(f"[client]\nhost=127.0.0.1\nport={self.primary.port}\nuser={sample.DB_USER}\n"
                            f"password=\"{sample.DB_PASSWORD}\"\nprotocol=tcp\n")
        defaults.chmod(0o600)
        self.mysqldump = mysqldump_argv(shutil.which("mysqldump"), f"--defaults-extra-file={defaults}", DB)
        self.facts.update(tree=str(tree.emgdir), mariadb=self.primary.sql("SELECT VERSION()").strip(),
                          buffer_pool=a.buffer_pool)

    def config(self, name: str, extra: str) -> Path:
        path = self.work / name
        path.write_text(f'[emg]\nemgdir = "{self.work / "server/etc/emg"}"\n[backup]\nruntime_dir = "{self.runtime}"\n'
                        f'[snapshot]\nprovider = "none"\n{extra}')
        self.configs.append(path)
        return path

    def borgmatic_yaml(self, name: str, config: Path) -> tuple[Path, Path]:
        repo, yaml = self.work / f"repo-{name}", self.work / f"borgmatic-{name}.yaml"
        yaml.write_text(example_yaml(self.runtime, config, repo))
        run(["borg", "init", "--encryption=repokey-blake2", repo], self.env)
        return yaml, repo

    # one size ------------------------------------------------------------------------------------
    def size(self, rows: int) -> dict:
        rec: dict = {"rows": rows}
        log(f"growing routelog to {rows} rows")
        t0 = time.perf_counter()
        rec["statements"] = grow_routelog(self.primary, rows)
        rec["generate_s"] = time.perf_counter() - t0
        if self.replica:
            t1 = time.perf_counter()
            self.replica.wait_caught_up(self.primary, timeout=3600)
            rec["replica_caught_up_after_s"] = time.perf_counter() - t1
        rec["table_bytes"] = table_bytes(self.primary)
        rec["load_after_generate"] = os.getloadavg()[0]
        log(f"{rows} rows in {rec['generate_s']:.1f} s ({rec['statements']} statements), table "
            f"{rec['table_bytes'] / MiB:.0f} MiB; {df(self.work)}")
        rec["split"] = self.split(rows)
        rec["backups"] = self.backups(rows)
        if self.replica_cfg:
            rec["replica"] = self.replica_backup(rows)
        newest = rec["backups"]["newest"]
        rec["restore"] = self.restore(newest["repo"], newest["archive"], newest["dump"])
        for name in ("primary", "replica", "bare", "pipe", "buffered"):
            shutil.rmtree(self.work / f"repo-{name}-{rows}", ignore_errors=True)
        shutil.rmtree(self.work / "borg-base", ignore_errors=True)
        return rec

    def split(self, rows: int) -> dict:
        """Where a backup's time goes, each step alone."""
        w, env, out = self.work, self.env, {}
        staged = w / "staged.sql"
        out["mysqldump_null_s"] = timed_to(self.mysqldump, os.devnull)
        out["mysqldump_file_s"] = timed_to(self.mysqldump, staged)
        out["dump_bytes"] = staged.stat().st_size
        log(f"split {rows}: mysqldump > /dev/null {out['mysqldump_null_s']:.1f} s, > file {out['mysqldump_file_s']:.1f} s "
            f"({out['dump_bytes'] / MiB:.0f} MiB)")
        repo = w / f"repo-bare-{rows}"
        run(["borg", "init", "--encryption=repokey-blake2", repo], env)
        t0 = time.perf_counter()
        run(["borg", "create", f"{repo}::file", staged], env)
        out["borg_create_file_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(["borg", "create", "--files-cache=disabled", f"{repo}::again", staged], env)
        out["borg_create_again_s"] = time.perf_counter() - t0
        out["repo_bytes"] = archive_stats(env, repo, "file")["deduplicated_size"]
        pipe_repo = w / f"repo-pipe-{rows}"
        run(["borg", "init", "--encryption=repokey-blake2", pipe_repo], env)
        t0 = time.perf_counter()
        with subprocess.Popen([str(a) for a in self.mysqldump], stdout=subprocess.PIPE) as dump:
            run(["borg", "create", f"{pipe_repo}::pipe", "-"], env, stdin=dump.stdout)
        out["pipe_s"] = time.perf_counter() - t0
        if dump.returncode != 0:
            raise RuntimeError(f"mysqldump | borg create -: mysqldump exited {dump.returncode}")
        buffered_repo = w / f"repo-buffered-{rows}"
        run(["borg", "init", "--encryption=repokey-blake2", buffered_repo], env)
        out["pipe_buffered_s"] = through_buffer(self.mysqldump, ["borg", "create", f"{buffered_repo}::pipe", "-"],
                                                w / "buffer", env)
        out["dump_buffer_s"] = through_buffer(["cat", staged], ["cat"], w / "buffer")
        out["cat_s"] = timed_to(["sh", "-c", 'cat "$1" | cat', "sh", staged], os.devnull)
        out["load"] = os.getloadavg()[0]
        log(f"split {rows}: borg create of the file {out['borg_create_file_s']:.1f} s, again {out['borg_create_again_s']:.1f} s, "
            f"pipe {out['pipe_s']:.1f} s, through the DumpBuffer {out['pipe_buffered_s']:.1f} s, DumpBuffer {out['dump_buffer_s']:.1f} s vs cat {out['cat_s']:.1f} s")
        staged.unlink()
        read_calls(self.call_log)
        return out

    def backup(self, yaml: Path, repo: Path, label: str, writer: Writer | None = None) -> dict:
        read_calls(self.call_log)
        t0 = time.monotonic()
        run(["borgmatic", "--config", yaml, "create"], self.env)
        seconds = time.monotonic() - t0
        calls = read_calls(self.call_log)
        kinds: dict = {}
        for c in calls:
            kinds[call_kind(c)] = kinds.get(call_kind(c), 0.0) + c["s"]
        archive = run(["borg", "list", "--short", "--last", "1", repo], self.env).stdout.strip()
        manifest = json.loads(run(["borg", "extract", "--stdout", f"{repo}::{archive}", "emg-borg/manifest.json"],
                                  self.env).stdout)
        [dump] = manifest["dumps"]
        out = {"seconds": seconds, "repo": str(repo), "archive": archive, "dump": dump,
               "growth_bytes": archive_stats(self.env, repo, archive)["deduplicated_size"],
               "freeze_window_ms": manifest.get("freeze_window_ms"), "dump_seconds": manifest.get("dump_seconds"),
               "dump_transfer": manifest.get("dump_transfer"), "dumped_from": dump.get("server"),
               "calls_s": kinds, "warnings": [f"{c['name']} {c['args'][:30]} exited {c['rc']}" for c in calls if c["rc"]],
               "load": os.getloadavg()[0]}
        if writer:
            out["writer"] = stalls(writer, t0, t0 + seconds)
            out["writer_before"] = stalls(writer, t0 - WRITER_LEAD, t0)
        log(f"{label}: {seconds:.1f} s, dump {dump['bytes'] / MiB:.0f} MiB, grew the repository by "
            f"{out['growth_bytes'] / MiB:.2f} MiB, freeze {out['freeze_window_ms']} ms"
            + (f", worst INSERT {out['writer']['worst_insert_s'] * 1000:.0f} ms" if writer else ""))
        return out

    def backups(self, rows: int) -> dict:
        yaml, repo = self.borgmatic_yaml(f"primary-{rows}", self.cfg)
        out = {}
        before = count_rows(self.primary)[0]
        with busy_writer(self.primary) as writer:
            time.sleep(WRITER_LEAD)
            out["first"] = self.backup(yaml, repo, f"{rows} first", writer)
        out["appended_rows"] = count_rows(self.primary)[0] - before
        out["appended"] = self.backup(yaml, repo, f"{rows} appended")
        out["unchanged"] = self.backup(yaml, repo, f"{rows} unchanged")
        t0 = time.perf_counter()
        out["spread_rows"] = update_rows(self.primary, f"CRC32(CONCAT('u{rows}-', id)) % 100 = 0")
        out["spread_update_s"] = time.perf_counter() - t0
        out["spread"] = self.backup(yaml, repo, f"{rows} spread 1%")
        total, highest = count_rows(self.primary)
        out["newest_rows"] = update_rows(self.primary, f"id > {highest - total // 100}")
        out["newest"] = self.backup(yaml, repo, f"{rows} newest 1%")
        return out

    def replica_backup(self, rows: int) -> dict:
        self.replica.wait_caught_up(self.primary, timeout=3600)
        yaml, repo = self.borgmatic_yaml(f"replica-{rows}", self.replica_cfg)
        with busy_writer(self.primary) as writer:
            time.sleep(WRITER_LEAD)
            out = self.backup(yaml, repo, f"{rows} from the replica", writer)
        out["replica_sql_running"] = self.replica.replica_status().get("Slave_SQL_Running")
        return out

    def restore(self, repo: str, archive: str, dump: dict) -> dict:
        path = self.work / "restore.sql"
        out = {"extract_s": timed_to(["borg", "extract", "--stdout", f"{repo}::{archive}", dump["path"]], path, self.env)}
        t0 = time.perf_counter()
        self.scratch = mariadb.MariaDB(self.work / "scratch", buffer_pool=self.args.buffer_pool).start()
        out["server_start_s"] = time.perf_counter() - t0
        try:
            self.scratch.sql(f"CREATE DATABASE {DB}")
            with open(path, "rb") as f:
                out["load_s"] = timed_to([shutil.which("mysql"), "--no-defaults", f"--socket={self.scratch.socket}",
                                          "--user=root", "--batch", DB], os.devnull, stdin=f)
            out["rows"] = count_rows(self.scratch)[0]
            out["load"] = os.getloadavg()[0]
        finally:
            self.scratch.stop()
            self.scratch = None
            shutil.rmtree(self.work / "scratch", ignore_errors=True)
            path.unlink()
        log(f"restore: extract {out['extract_s']:.1f} s, load {out['load_s']:.1f} s ({out['rows']} rows)")
        return out

    def cleanup(self) -> None:
        for cfg in self.configs:
            subprocess.run(["emg-borg", "-q", "-c", str(cfg), "on-error", "--force"], env=self.env, capture_output=True,
                           check=False)
        for server in (self.scratch, self.replica, self.primary):
            if server:
                server.stop()


def archive_stats(env: dict, repo: Path, archive: str) -> dict:
    return json.loads(run(["borg", "info", "--json", f"{repo}::{archive}"], env).stdout)["archives"][0]["stats"]


def df(path: Path) -> str:
    return run(["df", "-h", "--output=avail,target", str(path)]).stdout.split("\n")[1].strip() + " free"


# --- summary ---------------------------------------------------------------------------------------

def rate(nbytes, seconds):
    return nbytes / MiB / seconds if nbytes and seconds else None


def ms(seconds):
    return None if seconds is None else seconds * 1000


def inside(b: dict, kind: str):
    return b["calls_s"].get(kind)


# Calls made inside others: the streamed mysqldump (started by before-backup, read by borg
# create) and after-backup's look-up of the run's archive (borg list, borg extract of its manifest).
NESTED = ("mysqldump", "borg list", "borg extract")


def outside(b: dict):
    return b["seconds"] - sum(v for k, v in b["calls_s"].items() if k not in NESTED)


def figures(replica: bool) -> list[tuple]:
    """(section or None, figure, unit, value of a size's record)."""
    first = lambda r: r["backups"]["first"]  # noqa: E731
    dump = lambda r: first(r)["dump"]["bytes"]  # noqa: E731
    rows = [
        ("data", None, None, None),
        (None, "routelog rows", "rows", lambda r: r["rows"]),
        (None, "generation: INSERT … SELECT doubling", "s", lambda r: r["generate_s"]),
        (None, "routelog on disk (data + index)", "MiB", lambda r: r["table_bytes"] / MiB),
        (None, "dump (mysqldump, emg-borg's options)", "MiB", lambda r: dump(r) / MiB),
        ("nightly backup on the primary: `borgmatic create`, first archive of a new repository, busy writer", None, None, None),
        (None, "run time", "s", lambda r: first(r)["seconds"]),
        (None, "throughput (dump / run time)", "MiB/s", lambda r: rate(dump(r), first(r)["seconds"])),
        (None, "dump_seconds (manifest: mysqldump start to drained)", "s", lambda r: first(r)["dump_seconds"]),
        (None, "freeze_window_ms (manifest)", "ms", lambda r: first(r)["freeze_window_ms"]),
        (None, "writer's worst INSERT during the run", "ms", lambda r: ms(first(r)["writer"]["worst_insert_s"])),
        (None, "writer's worst INSERT in the 5 s before it", "ms", lambda r: ms(first(r)["writer_before"]["worst_insert_s"])),
        (None, "writer's worst gap between commits during the run", "ms", lambda r: ms(first(r)["writer"]["worst_gap_s"])),
        (None, "writer's INSERTs during the run (failed)", "", lambda r: f"{first(r)['writer']['inserts']} ({first(r)['writer']['errors']})"),
        (None, "repository after it (compressed, deduplicated)", "MiB", lambda r: first(r)["growth_bytes"] / MiB),
        ("later backups into the same repository: run time, repository growth", None, None, None),
        (None, "appended: the writer's rows since (count)", "rows", lambda r: r["backups"]["appended_rows"]),
        (None, "appended: run time", "s", lambda r: r["backups"]["appended"]["seconds"]),
        (None, "appended: growth", "MiB", lambda r: r["backups"]["appended"]["growth_bytes"] / MiB),
        (None, "unchanged: run time", "s", lambda r: r["backups"]["unchanged"]["seconds"]),
        (None, "unchanged: growth", "KiB", lambda r: r["backups"]["unchanged"]["growth_bytes"] / 1024),
        (None, "1% spread: the UPDATE (rows changed)", "s", lambda r: f"{r['backups']['spread_update_s']:.1f} ({r['backups']['spread_rows']})"),
        (None, "1% spread: run time", "s", lambda r: r["backups"]["spread"]["seconds"]),
        (None, "1% spread: growth", "MiB", lambda r: r["backups"]["spread"]["growth_bytes"] / MiB),
        (None, "1% spread: growth vs. the first archive", "%", lambda r: 100 * r["backups"]["spread"]["growth_bytes"] / first(r)["growth_bytes"]),
        (None, "1% newest (rows changed): growth", "MiB", lambda r: r["backups"]["newest"]["growth_bytes"] / MiB),
        (None, "1% newest: run time", "s", lambda r: r["backups"]["newest"]["seconds"]),
    ]
    if replica:
        rep = lambda r: r.get("replica")  # noqa: E731
        rows += [
            ("from the replica ([mysql.replica]): first archive of a new repository, busy writer on the primary", None, None, None),
            (None, "replica caught up after the generation", "s", lambda r: r.get("replica_caught_up_after_s")),
            (None, "run time", "s", lambda r: rep(r) and rep(r)["seconds"]),
            (None, "throughput (dump / run time)", "MiB/s", lambda r: rep(r) and rate(rep(r)["dump"]["bytes"], rep(r)["seconds"])),
            (None, "freeze_window_ms (manifest)", "ms", lambda r: rep(r) and rep(r)["freeze_window_ms"]),
            (None, "primary: writer's worst INSERT during the run", "ms", lambda r: rep(r) and ms(rep(r)["writer"]["worst_insert_s"])),
            (None, "primary: writer's worst gap between commits", "ms", lambda r: rep(r) and ms(rep(r)["writer"]["worst_gap_s"])),
            (None, "dumped from (manifest: the dump's server)", "", lambda r: rep(r) and rep(r)["dumped_from"]),
            (None, "replica's SQL thread after the run", "", lambda r: rep(r) and rep(r)["replica_sql_running"]),
        ]
    split = lambda r: r["split"]  # noqa: E731
    rows += [
        ("where the time goes: each step alone, on the same data", None, None, None),
        (None, "mysqldump > /dev/null (the server's read rate)", "s", lambda r: split(r)["mysqldump_null_s"]),
        (None, "  rate", "MiB/s", lambda r: rate(split(r)["dump_bytes"], split(r)["mysqldump_null_s"])),
        (None, "mysqldump > a file", "s", lambda r: split(r)["mysqldump_file_s"]),
        (None, "borg create of that file, new repository", "s", lambda r: split(r)["borg_create_file_s"]),
        (None, "  rate", "MiB/s", lambda r: rate(split(r)["dump_bytes"], split(r)["borg_create_file_s"])),
        (None, "borg create of it again, files cache off (chunk + hash)", "s", lambda r: split(r)["borg_create_again_s"]),
        (None, "mysqldump | borg create - (a plain pipe)", "s", lambda r: split(r)["pipe_s"]),
        (None, "mysqldump | emg-borg's DumpBuffer | borg create -", "s", lambda r: split(r)["pipe_buffered_s"]),
        (None, "the file through the DumpBuffer alone (into cat)", "s", lambda r: split(r)["dump_buffer_s"]),
        (None, "  rate", "MiB/s", lambda r: rate(split(r)["dump_bytes"], split(r)["dump_buffer_s"])),
        (None, "the file through cat | cat", "s", lambda r: split(r)["cat_s"]),
        (None, "the full run (first, above)", "s", lambda r: first(r)["seconds"]),
        (None, "  its borg create (reads the streamed dump)", "s", lambda r: inside(first(r), "borg create")),
        (None, "  its mysqldump (inside, overlapping borg create)", "s", lambda r: inside(first(r), "mysqldump")),
        (None, "  emg-borg before-backup", "s", lambda r: inside(first(r), "emg-borg before-backup")),
        (None, "  emg-borg after-backup", "s", lambda r: inside(first(r), "emg-borg after-backup")),
        (None, "    of which checking the archive (borg list, extract)", "s",
         lambda r: (inside(first(r), "borg list") or 0) + (inside(first(r), "borg extract") or 0)),
        (None, "  borgmatic itself (outside wrapped calls) + borg --version", "s",
         lambda r: outside(first(r)) + (inside(first(r), "borg --version") or 0)),
        ("restore", None, None, None),
        (None, "borg extract --stdout of the dump", "s", lambda r: r["restore"]["extract_s"]),
        (None, "load: mysql --batch emg < dump, fresh MariaDB", "s", lambda r: r["restore"]["load_s"]),
        (None, "  rate", "rows/s", lambda r: r["restore"]["rows"] / r["restore"]["load_s"]),
        ("load average (1 min) at the end of: generation, split, first backup, restore", None, None, None),
        (None, "load average", "", lambda r: " / ".join(f"{x:.1f}" for x in (
            r["load_after_generate"], r["split"]["load"], first(r)["load"], r["restore"]["load"]))),
    ]
    return rows


def show(value, unit) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit == "rows" or unit == "rows/s":
        return f"{value:,.0f}"
    if unit == "ms" or unit == "KiB":
        return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    return f"{value:.0f}" if value >= 100 else (f"{value:.1f}" if value >= 1 else f"{value:.2f}")


def table(summary: dict) -> list[list[str]]:
    """Rows of strings: figure, unit, a value per size, the last size's over the first's."""
    records, lines = summary["sizes"], []
    for section, figure, unit, value in figures(bool(summary["replica"])):
        if section:
            lines.append([section])
            continue
        values = []
        for r in records:
            try:
                values.append(value(r))
            except (KeyError, TypeError, ZeroDivisionError):
                values.append(None)
        numeric = [v for v in values if isinstance(v, (int, float))]
        growth = "-"
        if len(records) > 1 and len(numeric) == len(values) and numeric[0]:
            growth = f"{numeric[-1] / numeric[0]:.1f}×"
        lines.append([figure, unit] + [show(v, unit) for v in values] + ([growth] if len(records) > 1 else []))
    return lines


def print_table(summary: dict) -> None:
    m = summary["machine"]
    print(f"emg-borg at real database size: {summary['command']}")
    print(f"machine: {m['cores']} cores ({m['cpu']}; shared with other work), {m['memory_gib']:.0f} GiB, {m['disk']}; "
          f"{m['mariadb']} (innodb_buffer_pool_size {m['buffer_pool']}), {m['borg']}, borgmatic {m['borgmatic']}, "
          f"Python {m['python']}, kernel {m['kernel']}")
    if summary.get("replica_missing"):
        print(f"replica column missing: emg-borg refused [mysql.replica]: {summary['replica_missing']}")
    sizes = [f"{r['rows']:,}" for r in summary["sizes"]]
    header = ["figure", "unit"] + sizes + ([f"{sizes[-1]} / {sizes[0]}"] if len(sizes) > 1 else [])
    lines = table(summary)
    width = max(len(line[0]) for line in lines if len(line) > 1)
    cols = [max(len(x) for x in [header[i]] + [line[i] for line in lines if len(line) > 1]) for i in range(1, len(header))]
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header[1:], cols)))
    for line in lines:
        if len(line) == 1:
            print(f"-- {line[0]}")
        else:
            print(f"{line[0]:<{width}}  " + "  ".join(f"{x:>{w}}" for x, w in zip(line[1:], cols)))
    warnings = [w for r in summary["sizes"] for b in r["backups"].values() if isinstance(b, dict) for w in b["warnings"]]
    print(f"borg warnings: {warnings or 'none'}; benchmark took {summary['elapsed_s'] / 60:.1f} min")


def machine(bench: RealSize) -> dict:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    memory = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": memory / 2**20, "kernel": platform.release(),
            "python": platform.python_version(),
            "disk": run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(bench.work)]).stdout.strip(),
            "mariadb": "MariaDB " + bench.facts["mariadb"], "buffer_pool": bench.facts["buffer_pool"],
            "borg": run(["borg", "--version"], bench.env).stdout.strip(),
            "borgmatic": run(["borgmatic", "--version"], bench.env).stdout.strip().splitlines()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000",
                        help="routelog sizes, comma-separated, grown in this order (default %(default)s)")
    parser.add_argument("--replica", action="store_true", help="also back up from a GTID replica ([mysql.replica])")
    parser.add_argument("--buffer-pool", default="1G", help="innodb_buffer_pool_size of each server (default %(default)s)")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON document to FILE")
    parser.add_argument("--report", metavar="FILE", help="only print the table of the JSON document in FILE (--save)")
    args = start(parser, "runtime_dir must be root's")
    if args.report:
        print_table(json.loads(Path(args.report).read_text()))
        return 0
    sizes = [int(x.replace("_", "")) for x in args.rows.split(",")]
    if sizes != sorted(sizes):
        parser.error("--rows: sizes grow the same table: give them smallest first")
    started = time.perf_counter()
    # The prefix must not name emg-borg: the test suite counts such files and mounts as its own.
    with tempfile.TemporaryDirectory(prefix="emgbench-real-") as tmp:
        bench = RealSize(Path(tmp), args)
        try:
            bench.setup()
            records = [bench.size(rows) for rows in sizes]
            summary = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "machine": machine(bench),
                       "replica": args.replica, "replica_missing": bench.facts.get("replica_missing"),
                       "replica_setup": bench.facts["replica_setup"], "sizes": records,
                       "elapsed_s": time.perf_counter() - started}
            log(f"disk at the end: {df(bench.work)}")
        finally:
            bench.cleanup()
    return output(summary, args, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
