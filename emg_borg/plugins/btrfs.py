"""Built-in plugin: the `btrfs` snapshot provider.

A read-only snapshot of the subvolume holding SPOOLDIR is created at the top level of the same
Btrfs file system, named after this installation (`<instance tag>`), so nothing is ever created
inside the live spool or next to it. The file system's top level (subvolid 5) is mounted below
`runtime_dir` for that, and the snapshot is bind-mounted at `runtime_dir/snapshots/<subvolume
path>`: the same path on every run, so borg's files cache sees unchanged spool files as
unchanged (a Btrfs snapshot keeps inode numbers and ctimes).

Resources, released newest first: the top-level mount (made in `prepare`, before the
consistency point), the snapshot, the bind mount.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from emg_borg.core.snapshot import Resource, Snapshot, SnapshotProvider
from emg_borg.errors import EmgBorgError
from emg_borg.external import btrfs, findmnt, mount
from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)


def _device(source: str) -> str:
    """findmnt shows a subvolume mount's source as `/dev/sdb1[/spool]`; keep the device."""
    return source.split("[", 1)[0]


def _top_level_mount(run) -> Path:
    return run.runtime.root / "btrfs-top"


class Btrfs(SnapshotProvider):
    name = "btrfs"
    filesystems = ("btrfs",)

    def preflight(self, run):
        return [] if shutil.which(btrfs.BTRFS) else ["btrfs: command not found (apt-get install btrfs-progs)"]

    def _filesystem(self, run):
        found = findmnt.find(run.layout.spooldir)
        if found is None or found.fstype != "btrfs":
            raise EmgBorgError(
                f"snapshot provider btrfs: SPOOLDIR {run.layout.spooldir} is not on Btrfs "
                f"({found.fstype if found else 'unknown'} file system); set [snapshot] provider to match"
            )
        return found

    def prepare(self, run):
        """Find the spool's subvolume and mount the file system's top level, once per run (before
        the consistency point, so the window holds only the snapshot itself and its bind mount)."""
        state = run.state(self.name)
        if "subvolume" in state:
            return
        filesystem = self._filesystem(run)
        top = _top_level_mount(run)

        def mount_top():
            if not findmnt.is_mount_point(top):  # else a crashed run left it mounted: reuse it
                mount.mount(_device(filesystem.source), top, options=("subvolid=5",))

        yield Resource("mount", {"target": top}, mount_top)
        state.update(filesystem=filesystem, top=top,
                     subvolume=btrfs.subvolume_holding(run.layout.spooldir, filesystem.target))

    def take(self, run):
        yield from self.prepare(run)
        state = run.state(self.name)
        filesystem, subvolume, top = state["filesystem"], state["subvolume"], state["top"]
        snapshot = top / run.runtime.instance_tag
        view = run.runtime.snapshots / str(subvolume).lstrip("/")
        yield Resource("snapshot", {"path": snapshot}, lambda: btrfs.snapshot(subvolume, snapshot))
        yield Resource("mount", {"target": view}, lambda: mount.mount(str(snapshot), view, options=("bind", "ro")))
        logger.info("btrfs: read-only snapshot of %s, visible at %s", subvolume, view)
        return Snapshot(
            provider=self.name, origin=subvolume, base=run.runtime.snapshots, name=run.runtime.instance_tag,
            device=_device(filesystem.source),
            details={"subvolume": str(subvolume), "mount_point": str(filesystem.target)},
        )

    def release(self, run, entry):
        if entry["kind"] == "mount":
            target = Path(entry["target"])
            mount.umount(target)
            if target == _top_level_mount(run) and target.is_dir() and not findmnt.is_mount_point(target):
                target.rmdir()
        elif btrfs.is_subvolume(entry["path"]):
            btrfs.delete(entry["path"])

    def clean_stale(self, run):
        """Remove this installation's snapshot left by a crashed run that lost its ledger: unmount
        the views under runtime_dir, then delete `<instance tag>` at the top level of the spool's
        file system. Snapshots of anybody else carry other names and are never touched."""
        for target in findmnt.mounts_under(run.runtime.snapshots):
            logger.warning("btrfs: unmounting leftover snapshot view %s of an earlier run", target.target)
            mount.umount(target.target)
        top = run.state(self.name).get("top")
        if top is None:
            return
        leftover = top / run.runtime.instance_tag
        if btrfs.is_subvolume(leftover):
            logger.warning("btrfs: removing leftover snapshot %s of an earlier run", leftover)
            btrfs.delete(leftover)


@hookimpl
def emg_borg_snapshot_providers():
    return [Btrfs()]
