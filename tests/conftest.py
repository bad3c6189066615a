"""Shared fixtures: one throwaway MariaDB per test session, a sample EMG tree per test, a borg
repository per test, and helpers to run emg-borg, borg and borgmatic as a user would."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emg_borg.demo import mariadb as mariadb_module
from emg_borg.demo import sample
from emg_borg.demo.borgmatic import example_config

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    server = mariadb_module.MariaDB(tmp_path_factory.mktemp("mariadb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def borg_environment(tmp_path_factory, monkeypatch):
    """borg's cache, keys and security dirs in a per-session temp dir; a known passphrase."""
    base = tmp_path_factory.getbasetemp() / "borg-base"
    base.mkdir(exist_ok=True)
    monkeypatch.setenv("BORG_BASE_DIR", str(base))
    monkeypatch.setenv("BORG_PASSPHRASE", "emg-borg-test-passphrase")
    monkeypatch.setenv("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
    monkeypatch.setenv("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
    monkeypatch.delenv("BORG_REPO", raising=False)


class Emg:
    """A sample EMG installation with its own database and emg-borg configuration."""

    def __init__(self, tmp_path: Path, mariadb, provider="none", spooldir=None, extra_config="", database=None):
        self.tmp = tmp_path
        self.mariadb = mariadb
        self.database = database or f"emg_{os.getpid()}_{next(_db_counter)}"
        port = mariadb.port if mariadb is not None else None
        self.tree = sample.build(tmp_path / "root", db_port=port, spooldir=spooldir, database=self.database)
        if mariadb is not None:
            sample.load_schema(mariadb, database=self.database)
        self.runtime = tmp_path / "runtime"
        self.config_path = tmp_path / "emg-borg.toml"
        self.write_config(provider, extra_config)
        self.repo = tmp_path / "repo.borg"

    def write_config(self, provider="none", extra=""):
        self.config_path.write_text(
            f'[emg]\nemgdir = "{self.tree.emgdir}"\n\n[backup]\nruntime_dir = "{self.runtime}"\n\n'
            f'[snapshot]\nprovider = "{provider}"\n\n{extra}'
        )

    def emg_borg(self, *args, check=True, input=None):
        return run_emg_borg("-c", str(self.config_path), *args, check=check, input=input)

    def init_repo(self):
        borg("init", "--encryption=repokey-blake2", str(self.repo))
        return self.repo

    def borg_create(self, archive: str):
        """borg create from the patterns file before-backup wrote, as borgmatic would."""
        return borg("create", "--patterns-from", str(self.runtime / "patterns"), f"{self.repo}::{archive}")

    def borgmatic_config(self, path: Path | None = None) -> Path:
        """borgmatic-example.yaml with this test's paths substituted, nothing else changed."""
        text = example_config(self.runtime, self.config_path, self.repo, "emg-borg-test-passphrase")
        path = path or self.tmp / "borgmatic.yaml"
        path.write_text(text)
        return path

    def borgmatic_create(self, *extra, check=True):
        if not self.repo.exists():
            self.init_repo()
        return run(["borgmatic", "--config", str(self.borgmatic_config()), "create", *extra], check=check)


def run(argv, check=True, input=None, env=None):
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, input=input, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_emg_borg(*args, check=True, input=None):
    return run([sys.executable, "-m", "emg_borg", *args], check=check, input=input)


def borg(*args, check=True):
    return run(["borg", *args], check=check)


def borg_list(repo, archive=None) -> list[str]:
    """Paths in an archive (or the archive names of a repository), as `borg list` shows them."""
    target = f"{repo}::{archive}" if archive else str(repo)
    out = borg("list", "--json-lines", target).stdout if archive else borg("list", "--json", target).stdout
    if archive:
        return [json.loads(line)["path"] for line in out.splitlines() if line.strip()]
    return [a["name"] for a in json.loads(out)["archives"]]


def borg_cat(repo, archive, path) -> bytes:
    result = subprocess.run(["borg", "extract", "--stdout", f"{repo}::{archive}", path], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture
def emg(tmp_path, mariadb):
    return Emg(tmp_path, mariadb)


def leftovers(emg: Emg) -> list[str]:
    """Anything emg-borg left behind: files in runtime_dir, mounts under it or named after it."""
    found = []
    if emg.runtime.exists():
        found += [str(p) for p in emg.runtime.rglob("*")]
    mounts = subprocess.run(["findmnt", "--list", "--noheadings", "--output", "TARGET"], capture_output=True, text=True).stdout
    found += [m for m in mounts.splitlines() if m.startswith(str(emg.runtime)) or "emg-borg" in m]
    return found


def have(*commands) -> bool:
    return all(shutil.which(c) for c in commands)


def _umount_all_under(path: Path) -> None:
    mounts = subprocess.run(["findmnt", "--list", "--noheadings", "--output", "TARGET"], capture_output=True, text=True).stdout
    for target in sorted((m for m in mounts.splitlines() if m.startswith(str(path))), key=len, reverse=True):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)


@pytest.fixture
def btrfs_mount(tmp_path):
    """A real Btrfs file system in a loop-mounted file, with a subvolume `spool`."""
    if not have("mkfs.btrfs", "btrfs", "losetup", "mount"):
        pytest.skip("btrfs-progs or util-linux missing (apt-get install btrfs-progs)")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices on this machine (/dev/loop-control missing)")
    image = tmp_path / "btrfs.img"
    mount_point = tmp_path / "btrfs"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(300 * 2**20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount a Btrfs image here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["btrfs", "subvolume", "create", str(mount_point / "spool")], check=True, capture_output=True)
        yield mount_point
    finally:
        _umount_all_under(tmp_path)
        loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
        for line in loops.splitlines():
            subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)


def borg_extract_all(repo, archive, destination: Path) -> Path:
    """Everything in an archive, extracted into `destination` with plain borg."""
    destination.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["borg", "extract", f"{repo}::{archive}"], cwd=destination, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return destination


def borg_create_from(repo, archive, directory: Path) -> None:
    """An archive made with plain borg from the top-level entries of `directory`, so that its
    paths are relative like those of an emg-borg archive."""
    entries = sorted(p.name for p in directory.iterdir())
    result = subprocess.run(["borg", "create", f"{repo}::{archive}", *entries], cwd=directory, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def start_named(binary: Path, *args, cwd=None) -> subprocess.Popen:
    """Start `binary` and wait until the kernel shows its name: between fork and exec the child
    still carries the parent's name, and a process check in that moment would miss it."""
    import time

    process = subprocess.Popen([str(binary), *map(str, args)], cwd=cwd)
    comm = Path(f"/proc/{process.pid}/comm")
    deadline = time.monotonic() + 10
    while comm.read_text().strip() != binary.name[:15]:
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{binary} did not start")
        time.sleep(0.01)
    return process
