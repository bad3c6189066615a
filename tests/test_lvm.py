"""The LVM provider through fakes (this kernel has no device-mapper): `lvcreate`, `lvs`,
`lvremove`, `findmnt`, `mount` and `umount` first on PATH, checking their exact argv and keeping
state in a JSON file (tests/fakes/lvm_world.py). borg, borgmatic and emg-borg are real; a
snapshot's "content" is a copy of its origin taken at lvcreate, so the archive shows whether
borg read the snapshot or the live spool."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import Emg, borg_cat, borg_list, leftovers, run

pytestmark = pytest.mark.e2e

FAKES = Path(__file__).resolve().parent / "fakes" / "lvm_world.py"
COMMANDS = ("lvs", "lvcreate", "lvremove", "findmnt", "mount", "umount")
CHANGES = ("lvcreate", "lvremove", "mount", "umount")


class LvmWorld:
    """The fake machine: volumes, mounts, and the log of every command emg-borg ran."""

    def __init__(self, directory: Path, monkeypatch):
        self.dir = directory
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True)
        for command in COMMANDS:
            wrapper = bin_dir / command
            wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKES} {command} "$@"\n')
            wrapper.chmod(0o755)
        self.state_path = directory / "state.json"
        self.save({
            "dir": str(directory), "lvs": [], "calls": [],
            "mounts": [{"target": "/", "source": "/dev/vda", "fstype": "ext4", "options": "rw,relatime"}],
        })
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_LVM_STATE", str(self.state_path))

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def save(self, state: dict) -> None:
        self.state_path.write_text(json.dumps(state, indent=1))

    def add_volume(self, vg: str, name: str, target: Path, fstype: str = "ext4") -> None:
        target.mkdir(parents=True, exist_ok=True)
        state = self.state()
        state["lvs"].append({"vg": vg, "name": name, "attr": "-wi-ao----", "origin": "", "data_percent": "",
                             "fstype": fstype})
        state["mounts"].append({"target": str(target), "source": f"/dev/mapper/{vg}-{name}", "fstype": fstype,
                                "options": "rw,relatime"})
        self.save(state)

    def add_device(self, source: str, target: Path, fstype: str = "ext4") -> None:
        """A mounted file system that is not a logical volume."""
        target.mkdir(parents=True, exist_ok=True)
        state = self.state()
        state["mounts"].append({"target": str(target), "source": source, "fstype": fstype, "options": "rw"})
        self.save(state)

    def calls(self, commands=CHANGES) -> list[list[str]]:
        return [call for call in self.state()["calls"] if call[0] in commands]

    def clear_calls(self) -> None:
        state = self.state()
        state["calls"] = []
        self.save(state)

    def snapshots(self) -> list[str]:
        return sorted(f"{lv['vg']}/{lv['name']}" for lv in self.state()["lvs"] if lv["attr"].startswith("s"))

    def mount_targets(self) -> list[str]:
        return [m["target"] for m in self.state()["mounts"]]

    def fail(self, command: str, message: str, code: int = 5, times: int = 1000) -> None:
        """Make `command` refuse with `message` for its next `times` calls."""
        state = self.state()
        state.setdefault("fail", {})[command] = {"message": message, "code": code, "times": times}
        self.save(state)


@pytest.fixture
def world(tmp_path, monkeypatch):
    return LvmWorld(tmp_path / "lvm-world", monkeypatch)


def tag(emg) -> str:
    """The name every snapshot of this installation carries: emg-borg- and 8 hex digits of the
    sha256 of its runtime directory."""
    return "emg-borg-" + hashlib.sha256(str(emg.runtime).encode()).hexdigest()[:8]


def rel(path) -> str:
    return str(path).lstrip("/")


def view(emg, mount_point) -> str:
    """The stable path where the snapshot of the volume mounted at `mount_point` is mounted."""
    return str(emg.runtime / "snapshots" / rel(mount_point))


def test_snapshot_is_archived_and_released_in_exact_sequence(tmp_path, world):
    """Nested volumes /var and /var/spool: the longest mount point holding SPOOLDIR wins, and
    SPOOLDIR lies below it."""
    var, spool_lv = tmp_path / "lvm" / "var", tmp_path / "lvm" / "var" / "spool"
    world.add_volume("vg0", "var", var)
    world.add_volume("vg0", "spool", spool_lv)
    emg = Emg(tmp_path, None, provider="auto", spooldir=spool_lv / "emg")
    mounts_before = world.mount_targets()
    queue = emg.tree.spooldir / "queue-0007.hdb"
    frozen = queue.read_bytes()
    emg.init_repo()

    result = emg.emg_borg("before-backup", "--repository", str(emg.repo))
    assert "snapshot provider auto: lvm" in result.stderr
    snapshot = f"spool_{tag(emg)}"
    assert world.snapshots() == [f"vg0/{snapshot}"]
    queue.write_bytes(b"rewritten by emgd after the snapshot")
    (emg.tree.spooldir / "queue-new.hdb").write_bytes(b"created after the snapshot")
    emg.borg_create("lvm")
    emg.emg_borg("after-backup", "--repository", str(emg.repo))

    paths = borg_list(emg.repo, "lvm")
    assert borg_cat(emg.repo, "lvm", rel(queue)) == frozen
    assert rel(emg.tree.spooldir / "leveldb" / "CURRENT") in paths
    assert rel(emg.tree.spooldir / "queue-new.hdb") not in paths
    assert not [p for p in paths if p.startswith(rel(emg.runtime))]
    manifest = json.loads(borg_cat(emg.repo, "lvm", "emg-borg/manifest.json"))
    assert manifest["snapshot_provider"] == "lvm"
    assert manifest["snapshot"]["origin"] == str(spool_lv)
    assert manifest["snapshot"]["details"]["origin_lv"] == "vg0/spool"

    assert world.calls() == [
        ["lvcreate", "--snapshot", "--permission", "rw", "--extents", "10%ORIGIN", "--name", snapshot, "vg0/spool"],
        ["mount", "-o", "ro", f"/dev/vg0/{snapshot}", view(emg, spool_lv)],
        ["umount", view(emg, spool_lv)],
        ["lvremove", "--force", f"vg0/{snapshot}"],
    ]
    # The snapshot's state was read after borg, before it was released.
    calls = world.calls(COMMANDS)
    mounted, unmounted = calls.index(world.calls()[1]), calls.index(world.calls()[2])
    assert any(c[0] == "lvs" and c[-1] == f"vg0/{snapshot}" for c in calls[mounted + 1:unmounted])
    assert world.snapshots() == []
    assert world.mount_targets() == mounts_before
    assert leftovers(emg) == []


def test_xfs_gets_nouuid_and_a_fixed_size_goes_as_size(tmp_path, world):
    world.add_volume("data", "emg", tmp_path / "srv", fstype="xfs")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "srv" / "spool")
    text = emg.config_path.read_text()
    emg.config_path.write_text(text.replace('provider = "lvm"', 'provider = "lvm"\nlvm_snapshot_size = "512M"'))
    emg.emg_borg("before-backup")
    manifest = json.loads((emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text())
    emg.emg_borg("after-backup")

    assert world.calls()[:2] == [
        ["lvcreate", "--snapshot", "--permission", "rw", "--size", "512M", "--name", f"emg_{tag(emg)}", "data/emg"],
        ["mount", "-o", "ro,nouuid", f"/dev/data/emg_{tag(emg)}", view(emg, tmp_path / "srv")],
    ]
    assert manifest["snapshot"]["details"]["fstype"] == "xfs"
    assert manifest["snapshot"]["details"]["size"] == "512M"
    assert world.snapshots() == [] and leftovers(emg) == []


def test_overflow_fails_borgmatic_loudly_naming_the_archive_and_removes_the_snapshot(tmp_path, world):
    world.add_volume("vg0", "spool", tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    emg.init_repo()
    config = emg.borgmatic_config()
    # emgd writes more than the snapshot can hold while borg runs: LVM marks it invalid.
    snapshot = f"vg0/spool_{tag(emg)}"
    overflow = f"    - before: action\n      when: [create]\n      run:\n          - {sys.executable} {FAKES} fill {snapshot}\n"
    text = config.read_text()
    assert "    - after: configuration\n" in text
    config.write_text(text.replace("    - after: configuration\n", overflow + "    - after: configuration\n", 1))

    result = run(["borgmatic", "--config", str(config), "create"], check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    archive, = borg_list(emg.repo)  # borg did write it, which is why it must be named
    assert f"DO NOT TRUST archive {emg.repo}::{archive}" in output, output
    assert f"LVM snapshot {snapshot} of vg0/spool overflowed during the backup" in output
    assert "lv_attr swi-I-s---, 100.00% full" in output
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    assert manifest["run_id"] in output
    assert ["lvremove", "--force", snapshot] in world.calls()
    assert world.snapshots() == [] and world.mount_targets() == ["/", str(tmp_path / "spool")]
    assert leftovers(emg) == []


def test_overflow_without_repository_names_the_run(tmp_path, world):
    world.add_volume("vg0", "spool", tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    manifest = json.loads(emg.emg_borg("before-backup", "--json").stdout)
    run([sys.executable, FAKES, "fill", f"vg0/spool_{tag(emg)}"])
    result = emg.emg_borg("after-backup", check=False)
    assert result.returncode == 1
    error, = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert f"DO NOT TRUST the archive of emg-borg run {manifest['run_id']} (started {manifest['created']})" in error
    assert world.snapshots() == [] and leftovers(emg) == []


def test_overflow_when_borg_cannot_read_the_repository_still_names_the_run(tmp_path, world):
    """borgmatic need not pass the repository's passphrase to its hooks: after-backup then cannot
    look the archive up, and says so in the one error line that names the run."""
    world.add_volume("vg0", "spool", tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    emg.init_repo()
    manifest = json.loads(emg.emg_borg("before-backup", "--repository", str(emg.repo), "--json").stdout)
    emg.borg_create("overflowed")
    run([sys.executable, FAKES, "fill", f"vg0/spool_{tag(emg)}"])
    env = {k: v for k, v in os.environ.items() if k not in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND")}
    result = run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "after-backup", "--repository", emg.repo],
                 check=False, env=env)
    assert result.returncode == 1
    error, = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert (f"DO NOT TRUST the archive of emg-borg run {manifest['run_id']} (started {manifest['created']}) in "
            f"{emg.repo} (the archive could not be looked up: ") in error
    assert "passphrase" in error, error
    assert "Traceback" not in result.stderr
    assert world.snapshots() == [] and leftovers(emg) == []


def test_stale_leftover_is_removed_and_foreign_snapshots_are_kept(tmp_path, world):
    world.add_volume("vg0", "spool", tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    ours, theirs = f"vg0/spool_{tag(emg)}", "vg0/spool_emg-borg-0badcafe"
    assert ours != theirs
    # Someone else's snapshot of the same LV, and another emg-borg installation's (another
    # runtime directory, so another tag): neither is ours.
    for name in ("spool_nightly", theirs.split("/")[1]):
        run(["lvcreate", "--snapshot", "--permission", "rw", "--size", "1G", "--name", name, "vg0/spool"])
    # A run that crashed so hard that its ledger and lock are gone: snapshot made and mounted.
    emg.emg_borg("before-backup")
    (emg.runtime / "ledger.json").unlink()
    (emg.runtime / "lock").unlink()
    assert world.snapshots() == sorted([ours, theirs, "vg0/spool_nightly"])
    world.clear_calls()

    emg.init_repo()
    result = emg.borgmatic_create("-v", "1")
    output = result.stdout + result.stderr
    assert f"lvm: unmounting {view(emg, tmp_path / 'spool')} ({ours}), left mounted by an earlier run" in output
    assert f"lvm: removing snapshot {ours} of vg0/spool, left by an earlier run" in output
    assert world.calls()[:2] == [["umount", view(emg, tmp_path / "spool")], ["lvremove", "--force", ours]]
    assert theirs not in output
    archive, = borg_list(emg.repo)
    assert rel(emg.tree.spooldir / "queue-0000.hdb") in borg_list(emg.repo, archive)
    assert world.snapshots() == sorted([theirs, "vg0/spool_nightly"])
    assert view(emg, tmp_path / "spool") not in world.mount_targets()
    assert leftovers(emg) == []


def test_two_instances_on_one_volume_keep_their_own_snapshots(tmp_path, world):
    """Two EMG instances (two configurations, two runtime directories) with their spools on the
    same LV: each backs up from its own snapshot and releases only its own."""
    world.add_volume("vg0", "spool", tmp_path / "spool")
    first = Emg(tmp_path / "first", None, provider="lvm", spooldir=tmp_path / "spool" / "emg1")
    second = Emg(tmp_path / "second", None, provider="lvm", spooldir=tmp_path / "spool" / "emg2")
    snap1, snap2 = f"vg0/spool_{tag(first)}", f"vg0/spool_{tag(second)}"
    assert snap1 != snap2
    queue1, queue2 = first.tree.spooldir / "queue-0001.hdb", second.tree.spooldir / "queue-0002.hdb"
    frozen1 = queue1.read_bytes()

    first.emg_borg("before-backup")
    assert world.snapshots() == [snap1]
    queue1.write_bytes(b"written after the first snapshot")
    result = second.emg_borg("before-backup")
    assert snap1 not in result.stderr  # not taken for a leftover
    assert world.snapshots() == sorted([snap1, snap2])
    assert ["lvremove", "--force", snap1] not in world.calls()
    frozen2 = queue2.read_bytes()
    queue2.write_bytes(b"written after the second snapshot")

    # Each instance's borg reads its own snapshot: the first's from before the second was taken.
    for emg, queue, frozen in ((first, queue1, frozen1), (second, queue2, frozen2)):
        emg.init_repo()
        emg.borg_create("both")
        assert borg_cat(emg.repo, "both", rel(queue)) == frozen

    first.emg_borg("after-backup")
    assert world.snapshots() == [snap2]
    assert view(second, tmp_path / "spool") in world.mount_targets()
    assert view(first, tmp_path / "spool") not in world.mount_targets()
    second.emg_borg("after-backup")
    assert world.snapshots() == []
    assert [c for c in world.calls(("lvremove",))] == [["lvremove", "--force", snap1], ["lvremove", "--force", snap2]]
    assert leftovers(first) == [] and leftovers(second) == []


def test_snapshot_name_too_long_for_lvm_is_refused_before_lvcreate(tmp_path, world):
    long_name = "s" * 110  # + "_emg-borg-xxxxxxxx" is more than LVM's 127 characters
    world.add_volume("vg0", long_name, tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert f"lvm: cannot name a logical volume vg0/{long_name}_{tag(emg)}: 128 characters, LVM allows 127" in result.stderr
    assert world.calls() == [] and world.snapshots() == [] and leftovers(emg) == []


def test_config_from_the_snapshot_and_a_root_on_another_volume_read_live(tmp_path, world):
    """Spool and config on one LV (mounted at the sample's root); the blacklist on a disk
    mounted below it, which the snapshot does not contain: read live, where it is."""
    root = tmp_path / "root"
    world.add_volume("vg0", "root", root)
    world.add_device("/dev/sdb1", root / "srv")
    emg = Emg(tmp_path, None, provider="lvm")
    routing, blacklist = emg.tree.emgdir / "routing", emg.tree.blacklist
    queue = emg.tree.spooldir / "queue-0001.hdb"
    frozen_routing, frozen_queue = routing.read_bytes(), queue.read_bytes()
    emg.init_repo()
    emg.emg_borg("before-backup")
    for path in (routing, queue, blacklist):
        path.write_bytes(b"changed after the snapshot\n")
    emg.borg_create("same-volume")
    emg.emg_borg("after-backup")

    assert borg_cat(emg.repo, "same-volume", rel(routing)) == frozen_routing
    assert borg_cat(emg.repo, "same-volume", rel(queue)) == frozen_queue
    assert borg_cat(emg.repo, "same-volume", rel(blacklist)) == b"changed after the snapshot\n"
    manifest = json.loads(borg_cat(emg.repo, "same-volume", "emg-borg/manifest.json"))
    assert manifest["snapshot"]["holes"] == [str(root / "srv")]
    assert world.snapshots() == [] and leftovers(emg) == []


def test_volume_mounted_inside_the_spool_is_refused_before_any_snapshot(tmp_path, world):
    world.add_volume("vg0", "spool", tmp_path / "spool")
    world.add_volume("vg0", "leveldb", tmp_path / "spool" / "emg" / "leveldb")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert (f"would show {tmp_path / 'spool' / 'emg' / 'leveldb'} (/dev/mapper/vg0-leveldb) empty" in result.stderr)
    assert world.calls() == [] and leftovers(emg) == []


def test_spool_not_on_a_logical_volume(tmp_path, world):
    emg = Emg(tmp_path, None, provider="lvm")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "snapshot provider lvm: SPOOLDIR" in result.stderr and "is not on an LVM logical volume (/dev/vda at /)" in result.stderr
    emg.write_config("auto")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1 and "which emg-borg cannot snapshot" in result.stderr
    assert world.calls() == [] and leftovers(emg) == []


@pytest.mark.parametrize("fstype, chosen", [("ext4", "lvm"), ("xfs", "lvm"), ("btrfs", "btrfs")])
def test_auto_picks_lvm_for_a_logical_volume_unless_the_file_system_snapshots_itself(tmp_path, world, fstype, chosen):
    world.add_volume("vg0", "spool", tmp_path / "spool", fstype=fstype)
    emg = Emg(tmp_path, None, provider="auto", spooldir=tmp_path / "spool" / "emg")
    plan = json.loads(emg.emg_borg("before-backup", "--dry-run", "--json").stdout)
    assert plan["snapshot_provider"] == chosen
    assert world.calls() == [] and not emg.runtime.exists()


def test_volumes_helper_serves_the_snapshot_plugins_and_is_not_a_plugin():
    from emg_borg import plugins
    from emg_borg.plugins import lvm as lvm_plugin
    from emg_borg.plugins import volumes
    from emg_borg.plugins import zfs as zfs_plugin

    assert lvm_plugin.volumes is volumes and zfs_plugin.volumes is volumes
    assert "emg_borg.plugins.volumes" not in plugins.DEFAULT_PLUGINS
    manager = plugins.get_plugin_manager(load_entrypoints=False)
    assert volumes not in manager.get_plugins()
    assert {"emg_borg.plugins.lvm", "emg_borg.plugins.zfs"} <= {manager.get_name(p) for p in manager.get_plugins()}


def test_an_overflowed_leftover_of_a_crashed_run_is_reported_before_removal(tmp_path, world):
    world.add_volume("vg0", "spool", tmp_path / "spool")
    emg = Emg(tmp_path, None, provider="lvm", spooldir=tmp_path / "spool" / "emg")
    emg.emg_borg("before-backup")
    run([sys.executable, FAKES, "fill", f"vg0/spool_{tag(emg)}"])  # it overflowed, then the run crashed
    (emg.runtime / "ledger.json").unlink()
    (emg.runtime / "lock").unlink()
    result = emg.emg_borg("before-backup")
    assert f"emg-borg: error: lvm: the leftover snapshot vg0/spool_{tag(emg)} had overflowed" in result.stderr
    assert "DO NOT TRUST the archive the crashed earlier run made" in result.stderr
    emg.emg_borg("after-backup")
    assert world.snapshots() == [] and leftovers(emg) == []


@pytest.mark.parametrize("command, message, words", [
    ("lvcreate", "  Insufficient free space: 25 extents needed, but only 3 available", "Insufficient free space"),
    ("mount", "mount: /x: wrong fs type, bad option, bad superblock", "bad superblock"),
])
def test_a_failing_snapshot_or_mount_leaves_nothing_and_the_next_backup_works(tmp_path, world, command, message,
                                                                              words):
    spool_lv = tmp_path / "lvm" / "spool"
    world.add_volume("vg0", "spool", spool_lv)
    emg = Emg(tmp_path, None, provider="lvm", spooldir=spool_lv / "emg")
    world.fail(command, message)
    result = emg.emg_borg("before-backup", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1 and len(errors) == 1 and words in errors[0], result.stderr
    assert world.snapshots() == [] and leftovers(emg) == []
    world.fail(command, message, times=0)
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert world.snapshots() == [] and leftovers(emg) == []


def test_a_busy_mount_keeps_its_entries_for_the_next_release(tmp_path, world):
    """umount refuses (target is busy) longer than the retries: after-backup fails naming it, the
    snapshot and the ledger stay, and the next after-backup releases everything."""
    spool_lv = tmp_path / "lvm" / "spool"
    world.add_volume("vg0", "spool", spool_lv)
    emg = Emg(tmp_path, None, provider="lvm", spooldir=spool_lv / "emg")
    emg.emg_borg("before-backup")
    world.fail("umount", f"umount: {view(emg, spool_lv)}: target is busy.", code=32)
    result = emg.emg_borg("after-backup", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "release incomplete: lvm: cannot release mount" in errors[0] and "target is busy" in errors[0]
    snapshot = f"vg0/spool_{tag(emg)}"
    assert world.snapshots() == [snapshot]  # not removed while its mount could not be released
    assert (emg.runtime / "ledger.json").exists() and (emg.runtime / "lock").exists()
    world.fail("umount", "", times=0)
    emg.emg_borg("after-backup")
    assert world.snapshots() == [] and leftovers(emg) == []
