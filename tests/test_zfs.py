"""The ZFS provider for real, through zfs-fuse: a pool in a file, the daemon started and stopped
by the fixtures, real borgmatic and borg. Assertions are on what the archive holds, what borg
reports, and what `zfs list` and `findmnt` show afterwards."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Emg, borg_cat, borg_list, have, inside, leftovers, mount_table, run

# One zfs-fuse daemon per machine: under pytest-xdist (--dist loadgroup) all of this module runs
# in one worker, which starts and stops the daemon once.
pytestmark = [pytest.mark.e2e, pytest.mark.fuse, pytest.mark.xdist_group("zfs")]

_pools = itertools.count(1)
FAKES = Path(__file__).resolve().parent / "fakes"


TEST_POOL = re.compile(r"emgt\d+x\d+")


def unavailable(reason: str):
    """Skip: ZFS cannot be tested here. Under CI (`CI` set, as CI services do) fail with the same
    reason instead, so that a CI run never passes with the ZFS tests silently left out."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so not skipping the ZFS tests: {reason}", pytrace=False)
    pytest.skip(reason)


def quiet(*argv, timeout=60) -> subprocess.CompletedProcess:
    """A fixture command, bounded: a wedged daemon must fail the fixture, not hang the session."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


class ZfsFuse:
    """The zfs-fuse daemon this module starts and stops, and the test pools made with it."""

    def __init__(self, log: Path, base: Path):
        self.log, self.base = log, base
        self.process: subprocess.Popen | None = None
        self.pools: list[str] = []

    def start(self) -> None:
        running = quiet("pgrep", "-a", "-x", "zfs-fuse").stdout.strip()
        if running:
            # Another test session's (or the system's) daemon: sharing it would let whoever stops
            # first pull the pools out from under the other.
            unavailable(f"zfs-fuse is already running ({running}); not starting a second one")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["zfs-fuse", "--no-daemon"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                unavailable(f"zfs-fuse exited at start ({self.process.returncode}): {self.log.read_text()[-500:]}")
            listed = quiet("zpool", "list", "-H", "-o", "name", timeout=10)
            if listed.returncode == 0:
                # zfs-fuse re-imports the pools it knew: test pools of a session that died.
                for name in listed.stdout.split():
                    if TEST_POOL.fullmatch(name):
                        self.pools.append(name)
                        self.destroy_pool(name)
                return
            time.sleep(0.1)
        self.stop()
        unavailable("zfs-fuse did not answer `zpool list` within 15 s")

    def create_pool(self, tmp_path: Path) -> tuple[str, Path]:
        name = f"emgt{os.getpid()}x{next(_pools)}"
        image = tmp_path / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(128 * 2**20)
        mount_point = tmp_path / "zfs"
        self.pools.append(name)
        for argv in (("zpool", "create", "-m", mount_point, name, image), ("zfs", "create", f"{name}/spool")):
            result = quiet(*argv)
            assert result.returncode == 0, f"{argv}: {result.stderr}"
        return name, mount_point

    def destroy_pool(self, name: str) -> None:
        # -f: unmounts clones still mounted from a failed test, then destroys everything.
        if quiet("zpool", "list", name, timeout=10).returncode == 0:
            for _ in range(20):
                if quiet("zpool", "destroy", "-f", name).returncode == 0:
                    break
                time.sleep(0.25)
        if name in self.pools:
            self.pools.remove(name)

    def stop(self) -> None:
        # Pools first: a daemon stopped with pools re-imports them (FAULTED) when it next starts.
        try:
            for name in list(self.pools):
                self.destroy_pool(name)
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()  # takes a few seconds: zfs-fuse syncs and exports
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    self._drop_dead_mounts()

    def _drop_dead_mounts(self) -> None:
        """A killed daemon leaves its mounts dead ("transport endpoint is not connected")."""
        for line in quiet("findmnt", "--list", "--noheadings", "--output", "TARGET,FSTYPE").stdout.splitlines():
            target, _, fstype = line.strip().rpartition(" ")
            if fstype == "fuse.zfs" and inside(target.strip(), self.base):
                quiet("umount", "-l", target.strip())


@pytest.fixture(scope="session")
def zfs_daemon(tmp_path_factory):
    if not have("zfs-fuse", "zfs", "zpool"):
        unavailable("zfs-fuse is not installed (apt-get install zfs-fuse)")
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing: FUSE is not available here")
    daemon = ZfsFuse(tmp_path_factory.mktemp("zfs-fuse") / "zfs-fuse.log", tmp_path_factory.getbasetemp())
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def pool(zfs_daemon, tmp_path):
    """A fresh pool in a file, mounted at `tmp_path/zfs`, with a dataset `<pool>/spool`."""
    before = set(zfs_daemon.pools)
    try:
        yield zfs_daemon.create_pool(tmp_path)
    finally:
        for name in set(zfs_daemon.pools) - before:
            zfs_daemon.destroy_pool(name)
        for image in tmp_path.glob("emgt*.img"):
            image.unlink()


def zfs_all(pool_name) -> list[str]:
    """Every dataset, snapshot and clone of the pool, as `zfs list -t all` names them."""
    out = run(["zfs", "list", "-H", "-t", "all", "-o", "name", "-r", pool_name]).stdout
    return out.split()


def mounts_under(path) -> list[str]:
    return [target for target, _ in mount_table(fakes=False) if inside(target, path)]


def rel(path) -> str:
    return str(path).lstrip("/")


def tag(emg) -> str:
    """The name every snapshot and clone of this installation carries: emg-borg- and 8 hex
    digits of the sha256 of its runtime directory."""
    return "emg-borg-" + hashlib.sha256(str(emg.runtime).encode()).hexdigest()[:8]


def test_borgmatic_create_archives_the_snapshot_under_live_paths(tmp_path, pool, mariadb):
    name, mount_point = pool
    emg = Emg(tmp_path, mariadb, provider="auto", spooldir=mount_point / "spool" / "emg")
    queue = emg.tree.spooldir / "queue-0005.hdb"
    frozen = queue.read_bytes()
    emg.init_repo()
    # emgd rewrites a queue file after the snapshot, before borg reads it: a hook placed after
    # emg-borg's own before-backup hook in borgmatic's configuration does that.
    config = emg.borgmatic_config()
    hook = f"    - before: action\n      when: [create]\n      run:\n          - printf rewritten > {queue}\n"
    config.write_text(config.read_text().replace("    - after: configuration\n", hook + "    - after: configuration\n", 1))
    result = run(["borgmatic", "--config", str(config), "create", "-v", "1"])
    output = result.stderr + result.stdout
    assert queue.read_bytes() == b"rewritten"
    assert "snapshot provider auto: zfs" in output
    assert f"zfs: snapshot {name}/spool@{tag(emg)}" in output

    archive, = borg_list(emg.repo)
    paths = set(borg_list(emg.repo, archive))
    spool = emg.tree.spooldir
    assert borg_cat(emg.repo, archive, rel(queue)) == frozen
    for file in ("queue-0000.hdb", "queue-0019.hdb", "seqno.hdb", "leveldb/000005.ldb"):
        assert rel(spool / file) in paths
        assert borg_cat(emg.repo, archive, rel(spool / file)) == (spool / file).read_bytes()
    assert borg_cat(emg.repo, archive, rel(spool / "seqno")) == b"1049\n"
    # Archive paths are the live paths: nothing under the snapshot views' own path.
    assert not [p for p in paths if p.startswith(rel(emg.runtime))]
    expected = (rel(spool), rel(emg.tree.root), "emg-borg", "borgmatic", rel(tmp_path / "borgmatic.yaml"))
    assert [p for p in paths if not p.startswith(expected)] == []

    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    assert manifest["snapshot_provider"] == "zfs"
    assert manifest["snapshot"]["device"] == f"{name}/spool"
    assert manifest["snapshot"]["origin"] == str(mount_point / "spool")
    assert manifest["snapshot"]["details"]["datasets"][0]["exposed_by"] == "clone"
    assert manifest["consistency_lock"] == "held"

    assert zfs_all(name) == [name, f"{name}/spool"]
    assert mounts_under(emg.runtime) == []
    assert leftovers(emg) == []


def test_change_after_snapshot_is_not_in_archive(tmp_path, pool):
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    spool = emg.tree.spooldir
    queue, dropped = spool / "queue-0003.hdb", spool / "queue-0004.hdb"
    frozen, frozen_dropped = queue.read_bytes(), dropped.read_bytes()
    emg.init_repo()
    emg.emg_borg("before-backup")
    assert f"{name}/spool@{tag(emg)}" in zfs_all(name) and f"{name}/spool_{tag(emg)}" in zfs_all(name)
    in_view = emg.runtime / "snapshots" / rel(queue)
    assert in_view.read_bytes() == frozen
    with pytest.raises(OSError) as refused:
        in_view.write_bytes(b"the snapshot view is read-only")
    assert refused.value.errno == errno.EROFS
    # emgd goes on writing after the snapshot, before borg reads the spool
    queue.write_bytes(b"written after the snapshot")
    dropped.unlink()
    (spool / "queue-9999.hdb").write_bytes(b"created after the snapshot")
    emg.borg_create("manual")
    emg.emg_borg("after-backup")

    paths = borg_list(emg.repo, "manual")
    assert borg_cat(emg.repo, "manual", rel(queue)) == frozen
    assert borg_cat(emg.repo, "manual", rel(dropped)) == frozen_dropped
    assert rel(spool / "queue-9999.hdb") not in paths
    assert queue.read_bytes() == b"written after the snapshot"  # the live spool was left alone

    # What a user sees after a restore: the files as they were at the snapshot.
    target = tmp_path / "restore"
    target.mkdir()
    subprocess.run(["borg", "extract", f"{emg.repo}::manual", rel(spool)], cwd=target, check=True)
    assert (target / rel(queue)).read_bytes() == frozen
    assert not (target / rel(spool / "queue-9999.hdb")).exists()

    assert zfs_all(name) == [name, f"{name}/spool"]
    assert mounts_under(emg.runtime) == [] and leftovers(emg) == []


def test_second_backup_of_unchanged_spool_reads_nothing_again(tmp_path, pool):
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    config = emg.borgmatic_config()
    config.write_text(config.read_text() + '\nextra_borg_options:\n    create: "--list --filter=AMEU"\n')
    emg.init_repo()

    def spool_status(result) -> dict:
        marker = "/" + rel(emg.tree.spooldir) + "/"
        statuses = {}
        for line in (result.stderr + result.stdout).splitlines():
            status, _, path = line.strip().partition(" ")
            if marker in "/" + path.strip() and status in ("A", "M", "U", "E"):
                statuses[path.strip().split(marker.lstrip("/"), 1)[1]] = status
        return statuses

    first = spool_status(run(["borgmatic", "--config", str(config), "create", "-v", "1"]))
    second = spool_status(run(["borgmatic", "--config", str(config), "create", "-v", "1"]))
    assert len(first) == 26 and set(first.values()) == {"A"}, first  # 20 queues, seqno.hdb, 5 leveldb files
    assert len(second) == 26 and set(second.values()) == {"U"}, second
    assert zfs_all(name) == [name, f"{name}/spool"] and leftovers(emg) == []


def test_stale_leftovers_of_a_crashed_run_are_removed_and_foreign_snapshots_kept(tmp_path, pool):
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    ours = tag(emg)
    theirs = "emg-borg-0badcafe"
    assert ours != theirs
    # Someone else's snapshot and clone, and another emg-borg installation's (another runtime
    # directory, so another tag) snapshot and clone of the same dataset: none of them is ours.
    run(["zfs", "snapshot", f"{name}/spool@someone-else"])
    run(["zfs", "clone", f"{name}/spool@someone-else", f"{name}/someone-elses-clone"])
    run(["zfs", "snapshot", f"{name}/spool@{theirs}"])
    run(["zfs", "clone", "-o", f"mountpoint={tmp_path / 'other-instance-view'}", "-o", "readonly=on",
         f"{name}/spool@{theirs}", f"{name}/spool_{theirs}"])
    # A run that crashed so hard that its ledger and lock are gone: its snapshot and clone stay,
    # the clone mounted at the stable path.
    emg.emg_borg("before-backup")
    (emg.runtime / "ledger.json").unlink()
    (emg.runtime / "lock").unlink()
    assert mounts_under(emg.runtime / "snapshots")
    foreign = [name, f"{name}/someone-elses-clone", f"{name}/spool", f"{name}/spool@someone-else",
               f"{name}/spool@{theirs}", f"{name}/spool_{theirs}"]
    assert sorted(zfs_all(name)) == sorted(foreign + [f"{name}/spool@{ours}", f"{name}/spool_{ours}"])
    # The leftover check sees the crashed run's snapshot, clone and mount, and only those.
    found = leftovers(emg, settle=0)
    assert [f for f in found if f.startswith("zfs ")] == [f"zfs {name}/spool@{ours}", f"zfs {name}/spool_{ours}"], found
    clone_mounts = [f"mount {target} ({source})" for target, source in mount_table(fakes=False) if ours in source]
    assert clone_mounts and [f for f in found if f.startswith("mount ")] == clone_mounts, found

    result = emg.borgmatic_create("-v", "1")
    output = result.stderr + result.stdout
    assert f"zfs: destroying clone {name}/spool_{ours} of {name}/spool@{ours}, left by an earlier run" in output
    assert f"zfs: destroying snapshot {name}/spool@{ours}, left by an earlier run" in output
    assert theirs not in output
    archive, = borg_list(emg.repo)
    assert rel(emg.tree.spooldir / "queue-0000.hdb") in borg_list(emg.repo, archive)
    assert sorted(zfs_all(name)) == sorted(foreign)
    assert mounts_under(emg.runtime) == [] and leftovers(emg) == []


def test_two_instances_on_one_dataset_keep_their_own_snapshots(tmp_path, pool):
    """Two EMG instances (two configurations, two runtime directories) with their spools on the
    same dataset: each backs up from its own snapshot and releases only its own."""
    name, mount_point = pool
    first = Emg(tmp_path / "first", None, provider="zfs", spooldir=mount_point / "spool" / "emg1")
    second = Emg(tmp_path / "second", None, provider="zfs", spooldir=mount_point / "spool" / "emg2")
    own = {emg: [f"{name}/spool@{tag(emg)}", f"{name}/spool_{tag(emg)}"] for emg in (first, second)}
    assert own[first] != own[second]
    queue1, queue2 = first.tree.spooldir / "queue-0001.hdb", second.tree.spooldir / "queue-0002.hdb"
    frozen1 = queue1.read_bytes()

    first.emg_borg("before-backup")
    queue1.write_bytes(b"written after the first snapshot")
    result = second.emg_borg("before-backup")
    assert tag(first) not in result.stderr  # not taken for a leftover
    assert sorted(zfs_all(name)) == sorted([name, f"{name}/spool", *own[first], *own[second]])
    frozen2 = queue2.read_bytes()
    queue2.write_bytes(b"written after the second snapshot")

    # Each instance's borg reads its own snapshot: the first's from before the second was taken.
    for emg, queue, frozen in ((first, queue1, frozen1), (second, queue2, frozen2)):
        emg.init_repo()
        emg.borg_create("both")
        assert borg_cat(emg.repo, "both", rel(queue)) == frozen

    first.emg_borg("after-backup")
    assert sorted(zfs_all(name)) == sorted([name, f"{name}/spool", *own[second]])
    assert mounts_under(first.runtime) == [] and mounts_under(second.runtime)
    second.emg_borg("after-backup")
    assert zfs_all(name) == [name, f"{name}/spool"]
    assert leftovers(first) == [] and leftovers(second) == []


def test_nested_datasets_longest_mount_point_wins_and_inner_dataset_is_snapshotted(tmp_path, pool):
    """SPOOLDIR below its dataset's mount point, inside a pool whose root dataset is mounted
    above it (/zfs and /zfs/spool); the spool's leveldb on a dataset of its own."""
    name, mount_point = pool
    spooldir = mount_point / "spool" / "emg"
    run(["zfs", "create", "-o", f"mountpoint={spooldir / 'leveldb'}", f"{name}/leveldb"])
    emg = Emg(tmp_path, None, provider="auto", spooldir=spooldir)
    assert subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(spooldir / "leveldb")], capture_output=True,
                          text=True).stdout.strip() == f"{name}/leveldb"
    ldb = spooldir / "leveldb" / "000005.ldb"
    frozen = ldb.read_bytes()
    emg.init_repo()
    result = emg.emg_borg("before-backup")
    assert "a dataset of its own inside the spool" in result.stderr
    ldb.write_bytes(b"compacted after the snapshot")
    emg.borg_create("nested")
    emg.emg_borg("after-backup")

    manifest = json.loads(borg_cat(emg.repo, "nested", "emg-borg/manifest.json"))
    assert manifest["snapshot"]["device"] == f"{name}/spool"  # not the pool's root dataset
    assert [d["dataset"] for d in manifest["snapshot"]["details"]["datasets"]] == [f"{name}/spool", f"{name}/leveldb"]
    assert borg_cat(emg.repo, "nested", rel(ldb)) == frozen
    assert borg_cat(emg.repo, "nested", rel(spooldir / "leveldb" / "CURRENT")) == b"MANIFEST-000002\n"
    assert sorted(zfs_all(name)) == sorted([name, f"{name}/leveldb", f"{name}/spool"])
    assert mounts_under(emg.runtime) == [] and leftovers(emg) == []


def test_provider_zfs_on_a_non_zfs_spool_fails_clearly(tmp_path):
    emg = Emg(tmp_path, None, provider="zfs")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "snapshot provider zfs: SPOOLDIR" in result.stderr and "is not on ZFS" in result.stderr
    assert leftovers(emg) == []


def test_openzfs_mounts_the_snapshot_itself(tmp_path, pool, monkeypatch):
    """On OpenZFS (file system type `zfs`) the snapshot is mounted with `mount -t zfs -o ro`, no
    clone. zfs-fuse has no such mount: tests/fakes/openzfs_view.py provides it (through a clone
    of its own) and makes findmnt say `zfs`, and logs the exact argv emg-borg used."""
    name, mount_point = pool
    fakes = tmp_path / "openzfs-bin"
    fakes.mkdir()
    for command in ("findmnt", "mount", "umount"):
        wrapper = fakes / command
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKES / "openzfs_view.py"} {command} "$@"\n')
        wrapper.chmod(0o755)
    log = tmp_path / "openzfs-calls.jsonl"
    monkeypatch.setenv("FAKE_REAL_PATH", os.environ["PATH"])
    monkeypatch.setenv("FAKE_OPENZFS_LOG", str(log))
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")

    emg = Emg(tmp_path, None, provider="auto", spooldir=mount_point / "spool" / "emg")
    queue = emg.tree.spooldir / "queue-0011.hdb"
    frozen = queue.read_bytes()
    emg.init_repo()
    result = emg.emg_borg("before-backup")
    assert "snapshot provider auto: zfs (SPOOLDIR" in result.stderr and " is on zfs at " in result.stderr
    queue.write_bytes(b"written after the snapshot")
    emg.borg_create("openzfs")
    emg.emg_borg("after-backup")

    assert borg_cat(emg.repo, "openzfs", rel(queue)) == frozen
    manifest = json.loads(borg_cat(emg.repo, "openzfs", "emg-borg/manifest.json"))
    assert manifest["snapshot"]["details"]["datasets"][0]["exposed_by"] == "mount -t zfs"
    view = str(emg.runtime / "snapshots" / rel(mount_point / "spool"))
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c for c in calls if c[0] != "findmnt"] == [
        ["mount", "-t", "zfs", "-o", "ro", f"{name}/spool@{tag(emg)}", view],
        ["umount", view],
    ]
    assert zfs_all(name) == [name, f"{name}/spool"]
    assert mounts_under(emg.runtime) == [] and leftovers(emg) == []


@pytest.mark.parametrize("ci", ["", "true"], ids=["local", "ci"])
def test_zfs_tests_skip_locally_but_fail_under_ci_when_zfs_fuse_cannot_be_used(tmp_path, ci):
    """Where the daemon fixture cannot run zfs-fuse (here: one already runs), a developer's run
    skips the ZFS tests with the reason, and a CI run (`CI=true`) fails with it. The check runs
    in a child pytest whose PATH starts with fakes: `pgrep` reports a running zfs-fuse, and
    `zfs-fuse`, `zfs` and `zpool` exist but must never be called."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "pgrep").write_text("#!/bin/sh\necho '4242 zfs-fuse --no-daemon'\n")
    for command in ("zfs-fuse", "zfs", "zpool"):
        (fakes / command).write_text(f"#!/bin/sh\necho 'fake {command} must not run' >&2\nexit 99\n")
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}", "CI": ci}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0", "--basetemp", str(tmp_path / "child"),
         f"{__file__}::test_change_after_snapshot_is_not_in_archive"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent, timeout=300,
    )
    output = result.stdout + result.stderr
    reason = "zfs-fuse is already running (4242 zfs-fuse --no-daemon); not starting a second one"
    if os.path.exists("/dev/fuse"):
        assert reason in output, output
    assert "must not run" not in output
    if ci:
        assert result.returncode != 0 and "CI is set, so not skipping the ZFS tests" in output, output
        assert "1 error" in output and "skipped" not in output, output
    else:
        assert result.returncode == 0 and "1 skipped" in output, output


def zfs_refusing(tmp_path, monkeypatch, subcommand: str, message: str) -> Path:
    """A `zfs` first on PATH that refuses `subcommand` while the returned flag file exists."""
    real = shutil.which("zfs")
    fake = tmp_path / "fake-zfs"
    fake.mkdir()
    flag = tmp_path / f"refuse-{subcommand}"
    flag.touch()
    (fake / "zfs").write_text(f'#!/bin/sh\n[ "$1" = "{subcommand}" ] && [ -e {flag} ] && '
                              f'{{ echo "{message}" >&2; exit 1; }}\nexec {real} "$@"\n')
    (fake / "zfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    return flag


@pytest.mark.parametrize("subcommand, message", [
    ("snapshot", "cannot create snapshot: out of space"),
    ("clone", "cannot create clone: permission denied"),
])
def test_a_failing_snapshot_or_clone_leaves_nothing_and_the_next_backup_works(tmp_path, pool, monkeypatch,
                                                                              subcommand, message):
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    flag = zfs_refusing(tmp_path, monkeypatch, subcommand, message)
    result = emg.emg_borg("before-backup", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
    assert zfs_all(name) == [name, f"{name}/spool"] and leftovers(emg) == []
    flag.unlink()
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert zfs_all(name) == [name, f"{name}/spool"] and leftovers(emg) == []


def test_a_refused_destroy_stays_in_the_ledger_and_the_next_release_removes_it(tmp_path, pool, monkeypatch):
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    emg.emg_borg("before-backup")
    # Not "busy": that answer is retried for about 15 s per dataset (the next test shows the retry).
    flag = zfs_refusing(tmp_path, monkeypatch, "destroy", "cannot destroy: permission denied")
    result = emg.emg_borg("after-backup", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "release incomplete" in errors[0], result.stderr
    assert "permission denied" in errors[0]
    assert f"{name}/spool@{tag(emg)}" in zfs_all(name)
    assert (emg.runtime / "ledger.json").exists() and (emg.runtime / "lock").exists()
    flag.unlink()
    emg.emg_borg("after-backup")
    assert zfs_all(name) == [name, f"{name}/spool"] and leftovers(emg) == []


def test_a_destroy_answered_busy_for_a_moment_is_retried(tmp_path, pool, monkeypatch):
    """zfs-fuse can answer "dataset is busy" right after a clone was unmounted."""
    name, mount_point = pool
    emg = Emg(tmp_path, None, provider="zfs", spooldir=mount_point / "spool" / "emg")
    emg.emg_borg("before-backup")
    real = shutil.which("zfs")
    fake, count = tmp_path / "fake-busy-zfs", tmp_path / "busy-answers"
    fake.mkdir()
    (fake / "zfs").write_text(f'#!/bin/sh\nif [ "$1" = destroy ] && [ "$(wc -c < {count} 2>/dev/null || echo 0)" -lt 3 ]; '
                              f'then printf x >> {count}; echo "cannot destroy $2: dataset is busy" >&2; exit 1; fi\n'
                              f'exec {real} "$@"\n')
    (fake / "zfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    emg.emg_borg("after-backup")
    assert count.read_text() == "xxx"  # three busy answers, then the real zfs destroyed it
    assert zfs_all(name) == [name, f"{name}/spool"] and leftovers(emg) == []
