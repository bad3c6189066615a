"""`python3 -m emg_borg.demo`: a real backup and restore of a sample EMG installation.

Everything lives in one work directory: a throwaway MariaDB on its own socket and port, a
sample EMG tree whose spool sits on a loop-mounted Btrfs subvolume (so the snapshot is real;
without loop devices the spool is copied live and the demo says so), a local borg repository,
and borgmatic driven by `borgmatic-example.yaml` with only its paths changed. Then the server
"dies": EMGDIR, the spool and the database are wiped, and `emg-borg restore` brings them back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from emg_borg.demo import mariadb, sample
from emg_borg.demo.borgmatic import example_config

PASSPHRASE = "emg-borg-demo-passphrase"


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(argv, env=None, check=True, tail: int | None = None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(str(a) for a in argv), flush=True)
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env)
    lines = (result.stdout + result.stderr).rstrip().splitlines()
    if tail and len(lines) > tail:
        print(f"  ... ({len(lines) - tail} lines not shown)")
        lines = lines[-tail:]
    for line in lines:
        print("  " + line)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: command failed with exit code {result.returncode}")
    return result


def btrfs_spool(work: Path) -> Path | None:
    """A Btrfs subvolume on a loop-mounted image, or None when this machine cannot do that."""
    if not shutil.which("mkfs.btrfs") or os.geteuid() != 0:
        return None
    image, mount_point = work / "btrfs.img", work / "btrfs"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(300 * 2**20)
    steps = (["mkfs.btrfs", "-q", str(image)], ["mount", "-o", "loop", str(image), str(mount_point)],
             ["btrfs", "subvolume", "create", str(mount_point / "spool")])
    for argv in steps:
        if subprocess.run(argv, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(mount_point)], capture_output=True)
            return None
    return mount_point


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m emg_borg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emg-borg-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BORG_PASSPHRASE=PASSPHRASE, BORG_BASE_DIR=str(work / "borg-base"))
    cli = [sys.executable, "-m", "emg_borg", "-c", str(work / "emg-borg.toml")]
    server = mariadb.MariaDB(work / "mariadb")
    btrfs = None
    try:
        step("1. A throwaway MariaDB and a sample EMG installation")
        server.start()
        print(f"  mariadbd on 127.0.0.1:{server.port}, datadir {server.datadir}")
        btrfs = btrfs_spool(work)
        spooldir = btrfs / "spool" / "emg" if btrfs else None
        tree = sample.build(work / "server", db_port=server.port, spooldir=spooldir)
        sample.load_schema(server, rows=500)
        provider = "auto" if btrfs else "none"
        print(f"  EMGDIR {tree.emgdir}\n  SPOOLDIR {tree.spooldir}"
              + (" (a Btrfs subvolume: real snapshots)" if btrfs else " (no loop devices here: live copy, not consistent)"))
        (work / "emg-borg.toml").write_text(
            f'[emg]\nemgdir = "{tree.emgdir}"\n\n[backup]\nruntime_dir = "{work / "runtime"}"\n\n'
            f'[snapshot]\nprovider = "{provider}"\n\n[seqno]\nmargin = 1000\n'
        )
        repo = work / "repo.borg"
        borgmatic_yaml = work / "borgmatic.yaml"
        borgmatic_yaml.write_text(example_config(work / "runtime", work / "emg-borg.toml", repo, PASSPHRASE))
        show(cli + ["discover"], env)

        step("2. Back up with borgmatic (borgmatic-example.yaml, paths changed)")
        show(["borg", "init", "--encryption=repokey-blake2", repo], env)
        show(["borgmatic", "--config", borgmatic_yaml, "create", "-v", "1", "--stats"], env, tail=25)
        server.sql("INSERT INTO routelog (id, connector, sender, recipient, status) VALUES (5000,'mgp-in1','1','2',0)", sample.DB_NAME)
        show(["borgmatic", "--config", borgmatic_yaml, "create"], env)
        show(cli + ["archives", "--repository", repo], env)
        listing = subprocess.run(["borg", "list", "--json", str(repo)], env=env, capture_output=True, text=True, check=True)
        archive = json.loads(listing.stdout)["archives"][-1]["name"]
        show(["borg", "list", "--short", f"{repo}::{archive}"], env, tail=12)

        step("3. Disaster: EMGDIR, the spool and the database are gone")
        shutil.rmtree(tree.emgdir)
        for child in tree.spooldir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        server.sql(f"DROP DATABASE {sample.DB_NAME}")
        print(f"  removed {tree.emgdir}, emptied {tree.spooldir}, dropped database {sample.DB_NAME}")

        step("4. emg-borg restore (config, data, database; logs excluded by default)")
        show(cli + ["verify", "--repository", repo], env)
        show(cli + ["restore", "--repository", repo], env)
        print(f"  {tree.spooldir / 'seqno'}: {(tree.spooldir / 'seqno').read_text().strip()}"
              f" (the archive's message id 5000, plus [seqno] margin 1000)")
        rows = server.sql("SELECT COUNT(*), MAX(id) FROM routelog", sample.DB_NAME).split()
        print(f"  database {sample.DB_NAME}: {rows[0]} rows in routelog, highest id {rows[1]}")
        print(f"  server.cfg restored: {(tree.emgdir / 'server.cfg').exists()}; "
              f"logs restored: {(tree.emgdir / 'log' / 'general').exists()} (excluded by default)")
        step("Done: the demo backed up and restored a live EMG through borgmatic and borg")
        return 0
    finally:
        server.stop()
        if btrfs is not None:
            subprocess.run(["umount", str(btrfs)], capture_output=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
