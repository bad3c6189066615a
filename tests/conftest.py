"""Shared fixtures: one throwaway MariaDB per test session (per worker under pytest-xdist), a
sample EMG tree per test, a borg repository per test, and helpers to run emg-borg, borg and
borgmatic as a user would."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from emg_borg.demo import mariadb as mariadb_module
from emg_borg.demo import sample
from emg_borg.demo.borgmatic import example_config

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count(1)

# The machine's own tools, looked up before any test puts a fake of them first on PATH: the
# leftover checks look at the real mounts and loop devices.
REAL = {name: shutil.which(name) or name for name in ("findmnt", "losetup", "btrfs", "zfs")}

# Every process a test starts carries this variable with the test's own value (set per test by
# `borg_environment`), and so does whatever those processes start: the leftover check finds a
# test's processes by it, and nobody else's.
TEST_MARK = "EMG_BORG_TEST_MARK"


# Test files whose tests must all run in one pytest-xdist worker: test_zfs.py (one zfs-fuse
# daemon per machine). Its tests carry the mark xdist_group("zfs") too, but with pytest 9
# `--dist loadgroup` ignores the mark: pytest-xdist 3.8 puts the group into `item._nodeid`,
# which pytest 9 no longer reads. So the scheduler below groups these files itself.
ONE_WORKER_FILES = ("tests/test_zfs.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER_FILES else super()._split_scope(nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` first: pytest-xdist hands tests out in this order, and a long test
    handed out last would be the run's tail. (xdist's loadgroup puts the largest group, ZFS,
    first by itself.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@contextlib.contextmanager
def started_mariadb(tmp_path_factory, **options):
    """A throwaway MariaDB (`options` as for `MariaDB`) in a directory of its own, stopped on
    leaving, also when the test fails. Two pytest-xdist workers can be handed the same free port
    at once; the one that loses gets another."""
    for attempt in range(3):
        server = mariadb_module.MariaDB(tmp_path_factory.mktemp("mariadb"), **options)
        try:
            server.start()
            break
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """One MariaDB per session, and under pytest-xdist one per worker: each in a directory of its
    worker's own base temp dir, so with its own datadir and socket, on a free TCP port."""
    with started_mariadb(tmp_path_factory) as server:
        yield server


def set_borg_environment(monkeypatch, tmp_path_factory) -> None:
    """borg's cache, keys and security dirs in a per-session temp dir; a known passphrase."""
    base = tmp_path_factory.getbasetemp() / "borg-base"
    base.mkdir(exist_ok=True)
    monkeypatch.setenv("BORG_BASE_DIR", str(base))
    monkeypatch.setenv("BORG_PASSPHRASE", "emg-borg-test-passphrase")
    monkeypatch.setenv("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
    monkeypatch.setenv("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
    # borg checks its own code at every start (0.1 s of CPU); the suite starts borg thousands of
    # times, and that check says nothing about emg-borg.
    monkeypatch.setenv("BORG_SELFTEST", "disabled")
    monkeypatch.delenv("BORG_REPO", raising=False)
    # borgmatic makes its runtime dir in $XDG_RUNTIME_DIR, else in /tmp, and before each create
    # removes the bootstrap manifest of every `borgmatic-*` dir there: another worker's borgmatic
    # in /tmp would delete this one's between writing it and borg reading it.
    runtime = tmp_path_factory.getbasetemp() / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture(autouse=True)
def borg_environment(tmp_path_factory, monkeypatch):
    """set_borg_environment for each test, and the test's process mark."""
    set_borg_environment(monkeypatch, tmp_path_factory)
    monkeypatch.setenv(TEST_MARK, uuid.uuid4().hex)


EMGD_GATE = Path(tempfile.gettempdir()) / "emg-borg-tests-emgd.gate"
EMGD_LOCK = Path(tempfile.gettempdir()) / "emg-borg-tests-emgd.lock"


@pytest.fixture(autouse=True)
def emgd_on_this_machine(request):
    """`emg-borg restore` refuses while any emgd runs on the machine, and a test marked
    `starts_emgd` starts a (fake) one: such a test runs alone among the tests marked
    `runs_restore`, across pytest-xdist workers too. An exclusive lock on one file for the first,
    a shared one for the others; a gate file makes a waiting `starts_emgd` test go next."""
    if request.node.get_closest_marker("starts_emgd"):
        mode = fcntl.LOCK_EX
    elif request.node.get_closest_marker("runs_restore"):
        mode = fcntl.LOCK_SH
    else:
        yield
        return
    with open(EMGD_GATE, "a") as gate, open(EMGD_LOCK, "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, mode)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
        self.mark = os.environ.get(TEST_MARK)
        # Loop devices on files of this test's directory that exist already (a fixture's Btrfs
        # image) are not left by what the test does with this installation.
        self.loops_before = {name for name, back in loop_devices() if inside(back, self.tmp)}

    @property
    def instance_tag(self) -> str:
        """`emg-borg-` and 8 hex digits of the sha256 of the runtime directory: the name every
        snapshot, clone and view of this installation carries, and no other installation's."""
        return "emg-borg-" + hashlib.sha256(str(self.runtime).encode()).hexdigest()[:8]

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


def inside(path, top) -> bool:
    """`path` is `top` or lies below it (not merely starts with the same characters)."""
    path, top = str(path), str(top).rstrip("/") or "/"
    return path == top or path.startswith(top if top == "/" else top + "/")


def mount_table(fakes: bool = True) -> list[tuple[str, str]]:
    """(target, source) of every mount the kernel shows, and (`fakes`) the targets a fake
    `findmnt` first on PATH shows (the LVM tests' world)."""
    out = subprocess.run([REAL["findmnt"], "--json", "--list", "--output", "TARGET,SOURCE"],
                         capture_output=True, text=True, check=True).stdout
    rows = [(fs["target"], fs.get("source") or "") for fs in json.loads(out)["filesystems"]]
    on_path = shutil.which("findmnt") if fakes else None
    if on_path and os.path.realpath(on_path) != os.path.realpath(REAL["findmnt"]):
        fake = subprocess.run([on_path, "--list", "--noheadings", "--output", "TARGET"], capture_output=True, text=True)
        rows += [(target, "") for target in fake.stdout.splitlines() if target.strip()]
    return rows


def loop_devices() -> list[tuple[str, str]]:
    """(device, backing file) of every loop device in use."""
    out = subprocess.run([REAL["losetup"], "--list", "--json", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    if not out.strip():
        return []
    return [(d["name"], (d.get("back-file") or "").removesuffix(" (deleted)")) for d in json.loads(out)["loopdevices"]]


def marked_processes(mark: str, exclude=()) -> list[str]:
    """The processes whose environment carries the test mark `mark`: those the test started and
    whatever they started, wherever they were reparented to."""
    needle = f"\0{TEST_MARK}={mark}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            environ = b"\0" + Path(entry.path, "environ").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        if needle in environ:
            found.append(f"process {entry.name}: {cmdline}")
    return found


def _spool_file_system(emg: Emg) -> tuple[str, str, str] | None:
    spooldir = emg.tree.spooldir
    while not spooldir.exists() and spooldir != spooldir.parent:
        spooldir = spooldir.parent
    out = subprocess.run([REAL["findmnt"], "--json", "--output", "TARGET,SOURCE,FSTYPE", "--target", str(spooldir)],
                         capture_output=True, text=True).stdout
    if not out.strip():
        return None
    fs = json.loads(out)["filesystems"][0]
    return fs["target"], fs.get("source") or "", fs["fstype"]


def _own_snapshots(emg: Emg) -> list[str]:
    """This installation's Btrfs subvolumes or ZFS datasets on the spool's file system (a test's
    own loop-mounted Btrfs or test pool): names carrying its instance tag."""
    spool_fs = _spool_file_system(emg)
    if spool_fs is None:
        return []
    target, source, fstype = spool_fs
    if fstype == "btrfs":
        listed = subprocess.run([REAL["btrfs"], "subvolume", "list", target], capture_output=True, text=True)
        if listed.returncode != 0:
            return [f"cannot list the Btrfs subvolumes of {target}: {listed.stderr.strip()}"]
        return [f"btrfs subvolume {line.split(' path ', 1)[-1]} on {target}"
                for line in listed.stdout.splitlines() if emg.instance_tag in line]
    if fstype in ("zfs", "fuse.zfs"):
        pool = source.split("/")[0].split("@")[0]
        listed = subprocess.run([REAL["zfs"], "list", "-H", "-t", "all", "-o", "name", "-r", pool],
                                capture_output=True, text=True, timeout=60)
        if listed.returncode != 0:
            return [f"cannot list the ZFS datasets of {pool}: {listed.stderr.strip()}"]
        return [f"zfs {name}" for name in listed.stdout.split() if emg.instance_tag in name]
    return []


def _mariadb_sessions(emg: Emg) -> list[str]:
    """Sessions on the test's MariaDB using the test's own database (a lock holder left open)."""
    if emg.mariadb is None or emg.mariadb.process is None:
        return []
    rows = emg.mariadb.sql("SELECT ID, USER, COMMAND, IFNULL(INFO, '') FROM information_schema.PROCESSLIST "
                           f"WHERE DB = '{emg.database}' AND ID <> CONNECTION_ID()")
    return [f"mariadb session {row}" for row in rows.splitlines() if row.strip()]


def _leftovers_now(emg: Emg) -> list[str]:
    found = []
    if emg.runtime.exists():
        found += [str(p) for p in emg.runtime.rglob("*")]
    tag = emg.instance_tag
    for target, source in mount_table():
        below_tmp = inside(target, emg.tmp) and "emg-borg" in os.path.relpath(target, emg.tmp)
        if inside(target, emg.runtime) or below_tmp or tag in target or tag in source:
            found.append(f"mount {target} ({source})" if source else f"mount {target}")
    found += [f"loop device {name} on {back}" for name, back in loop_devices()
              if inside(back, emg.tmp) and name not in emg.loops_before]
    if emg.mark:
        exclude = {os.getpid()}
        if emg.mariadb is not None and emg.mariadb.process is not None:
            exclude.add(emg.mariadb.process.pid)  # the session's server, started before this test
        found += marked_processes(emg.mark, exclude)
    found += _own_snapshots(emg)
    found += _mariadb_sessions(emg)
    return found


def leftovers(emg: Emg, settle: float = 2.0) -> list[str]:
    """Anything this installation's runs left behind, looking only at the test's own resources:
    files in its runtime_dir; mounts below its runtime_dir, named emg-borg below its temp dir, or
    carrying its instance tag (as target or source); loop devices on files of its temp dir that
    were not there when it was made; processes carrying the test's mark; subvolumes or datasets
    with its instance tag on the spool's Btrfs or ZFS; sessions on its database. A real emg-borg
    run on the same machine (mounts under /var/lib/emg-borg) is none of these.

    Something that is gone within `settle` seconds (a process exiting, a server closing a
    session) is not a leftover."""
    deadline = time.monotonic() + settle
    while True:
        found = _leftovers_now(emg)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def dump_path(manifest: dict) -> str:
    """The archive path of the (first) database dump: `dumps[0].path` from format_version 2 on,
    `mysql.dump` before."""
    if "dumps" in manifest:
        return manifest["dumps"][0]["path"]
    return manifest["mysql"]["dump"]


def claimed_binlog(manifest) -> dict:
    """Every binlog field with a value, wherever the manifest's format keeps it."""
    found = {}
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            if "binlog" in key and value not in (None, "", {}):
                found[key] = value
            else:
                found.update(claimed_binlog(value))
    elif isinstance(manifest, list):
        for item in manifest:
            found.update(claimed_binlog(item))
    return found


def have(*commands) -> bool:
    return all(shutil.which(c) for c in commands)


def _umount_all_under(path: Path) -> None:
    for target in sorted({t for t, _ in mount_table(fakes=False) if inside(t, path)}, key=len, reverse=True):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)


def unavailable(reason: str):
    """Skip: the test cannot run here. Under CI (`CI` set) fail with the same reason instead, so a
    CI run never passes with the core promise (real snapshots) silently left out."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def btrfs_mount(tmp_path):
    """A real Btrfs file system in a loop-mounted file, with a subvolume `spool`."""
    if not have("mkfs.btrfs", "btrfs", "losetup", "mount"):
        unavailable("btrfs-progs or util-linux missing (apt-get install btrfs-progs)")
    if not Path("/dev/loop-control").exists():
        unavailable("no loop devices on this machine (/dev/loop-control missing)")
    image = tmp_path / "btrfs.img"
    mount_point = tmp_path / "btrfs"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(300 * 2**20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot loop-mount a Btrfs image here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["btrfs", "subvolume", "create", str(mount_point / "spool")], check=True, capture_output=True)
        yield mount_point
    finally:
        _umount_all_under(tmp_path)
        for name, back in loop_devices():
            if back == str(image):
                subprocess.run([REAL["losetup"], "-d", name], capture_output=True)


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
