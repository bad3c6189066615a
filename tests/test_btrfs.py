"""The Btrfs provider for real, on a loop-mounted Btrfs file system, through real borgmatic."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Emg, borg_cat, borg_list, leftovers, run
from emg_borg.core.runtime import RuntimeDir

pytestmark = [pytest.mark.e2e, pytest.mark.loop]


@pytest.fixture
def btrfs_emg(tmp_path, mariadb, btrfs_mount):
    return Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg")


def subvolumes(mount) -> str:
    return subprocess.run(["btrfs", "subvolume", "list", str(mount)], capture_output=True, text=True, check=True).stdout


def test_borgmatic_archives_snapshot_content_not_later_live_changes(btrfs_emg, btrfs_mount):
    emg = btrfs_emg
    queue = emg.tree.spooldir / "queue-0001.hdb"
    frozen = queue.read_bytes()
    emg.init_repo()
    # emgd rewrites a queue file after the snapshot, before borg reads it: a hook placed after
    # emg-borg's before-backup hook does that, and also records that the snapshot exists then.
    config = emg.borgmatic_config()
    seen = emg.tmp / "subvolumes-during-backup"
    hook = (f"    - before: action\n      when: [create]\n      run:\n          - printf rewritten > {queue}\n"
            f"          - btrfs subvolume list {btrfs_mount} > {seen}\n")
    config.write_text(config.read_text().replace("    - after: configuration\n", hook + "    - after: configuration\n", 1))
    run(["borgmatic", "--config", str(config), "create"])
    assert queue.read_bytes() == b"rewritten"
    tag = RuntimeDir(emg.runtime).instance_tag
    assert f"path {tag}" in seen.read_text()

    archive, = borg_list(emg.repo)
    spool = str(emg.tree.spooldir).lstrip("/")
    assert borg_cat(emg.repo, archive, f"{spool}/queue-0001.hdb") == frozen
    paths = borg_list(emg.repo, archive)
    assert f"{spool}/leveldb/CURRENT" in paths
    assert not any(tag in p for p in paths)
    assert not any(p.startswith(str(emg.runtime).lstrip("/")) for p in paths)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    assert manifest["snapshot_provider"] == "btrfs"
    assert manifest["consistency_lock"] == "held"
    assert tag not in subvolumes(btrfs_mount)
    assert leftovers(emg) == []


def test_manual_hooks_around_plain_borg_create(btrfs_emg, btrfs_mount):
    """The patterns file works with borg alone, for users who do not run borgmatic."""
    emg = btrfs_emg
    queue = emg.tree.spooldir / "queue-0002.hdb"
    frozen = queue.read_bytes()
    emg.init_repo()
    emg.emg_borg("before-backup")
    queue.unlink()
    emg.borg_create("manual")
    emg.emg_borg("after-backup")
    assert borg_cat(emg.repo, "manual", str(queue).lstrip("/")) == frozen
    assert leftovers(emg) == []


def test_borgmatic_auto_provider_and_unchanged_files_on_second_run(btrfs_emg, btrfs_mount, tmp_path):
    emg = btrfs_emg
    emg.write_config("auto")
    config = emg.borgmatic_config()
    config.write_text(config.read_text() + '\nextra_borg_options:\n    create: "--list --filter=AMEU"\n')
    emg.init_repo()
    first = run(["borgmatic", "--config", str(config), "create", "-v", "1"])
    assert "snapshot provider auto: btrfs" in first.stderr + first.stdout
    second = run(["borgmatic", "--config", str(config), "create", "-v", "1"])
    output = second.stderr + second.stdout
    spool_lines = [line for line in output.splitlines() if "/spool/emg/queue-" in line]
    assert len(spool_lines) == 20, output
    assert all(line.lstrip().startswith("U ") or " U " in line for line in spool_lines), spool_lines
    assert len(borg_list(emg.repo)) == 2
    assert "emg-borg-" not in subvolumes(btrfs_mount)
    assert leftovers(emg) == []


def test_stale_snapshot_of_crashed_run_is_removed_foreign_kept(btrfs_emg, btrfs_mount):
    emg = btrfs_emg
    tag = RuntimeDir(emg.runtime).instance_tag
    emg.emg_borg("before-backup")
    (emg.runtime / "ledger.json").unlink()  # the crash lost even the ledger
    (emg.runtime / "lock").unlink()
    foreign = btrfs_mount / "someone-elses-snapshot"
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(btrfs_mount / "spool"), str(foreign)], check=True)
    # The leftover check sees the crashed run's snapshot and its mounts, and only those.
    found = leftovers(emg, settle=0)
    assert [f for f in found if f.startswith("btrfs subvolume")] == [f"btrfs subvolume {tag} on {btrfs_mount}"], found
    assert [f for f in found if f.startswith("mount ")], found
    result = emg.emg_borg("before-backup")
    assert "unmounting leftover snapshot view" in result.stderr and "removing leftover snapshot" in result.stderr
    emg.emg_borg("after-backup")
    listing = subvolumes(btrfs_mount)
    assert "someone-elses-snapshot" in listing and tag not in listing
    assert leftovers(emg) == []


def test_spool_that_is_a_subvolume_itself_is_never_written_to(tmp_path, mariadb, btrfs_mount):
    """SPOOLDIR is the subvolume (the usual `btrfs subvolume create /var/spool/emg`): during the
    backup the live spool holds exactly what it held before."""
    emg = Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool")
    before = sorted(p.name for p in emg.tree.spooldir.iterdir())
    emg.emg_borg("before-backup")
    assert sorted(p.name for p in emg.tree.spooldir.iterdir()) == before
    emg.init_repo()
    emg.borg_create("a")
    emg.emg_borg("after-backup")
    spool = str(emg.tree.spooldir).lstrip("/")
    paths = set(borg_list(emg.repo, "a"))
    assert {f"{spool}/{name}" for name in before if name != "seqno"} <= paths
    assert [p for p in paths if p.startswith(spool + "/") and p.count("/") == spool.count("/") + 1
            and p.rsplit("/", 1)[1] not in before] == []
    assert leftovers(emg) == []


def test_two_instances_on_one_file_system_keep_their_own_snapshots(tmp_path, mariadb, btrfs_mount):
    first = Emg(tmp_path / "a", mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "a")
    second = Emg(tmp_path / "b", mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "b")
    first.emg_borg("before-backup")
    second.emg_borg("before-backup")
    tags = [RuntimeDir(e.runtime).instance_tag for e in (first, second)]
    assert tags[0] != tags[1] and all(tag in subvolumes(btrfs_mount) for tag in tags)
    second.emg_borg("after-backup")
    assert tags[0] in subvolumes(btrfs_mount) and tags[1] not in subvolumes(btrfs_mount)
    assert (first.runtime / "snapshots" / str(first.tree.spooldir).lstrip("/") / "queue-0000.hdb").exists()
    first.emg_borg("after-backup")
    assert "emg-borg-" not in subvolumes(btrfs_mount)
    assert leftovers(first) == [] and leftovers(second) == []


def test_auto_refuses_a_spool_it_cannot_snapshot(emg):
    emg.write_config("auto")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "which emg-borg cannot snapshot" in result.stderr and 'provider = "none"' in result.stderr
    assert leftovers(emg) == []
