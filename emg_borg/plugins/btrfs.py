"""Built-in plugin: the `btrfs` snapshot provider.

A read-only snapshot of the subvolume holding SPOOLDIR is created at the top level of the same
Btrfs file system, named after this installation (`<instance tag>`), so nothing is ever created
inside the live spool or next to it. The file system's top level (subvolid 5) is mounted below
`runtime_dir` for that, and the snapshot is bind-mounted at `runtime_dir/snapshots/<subvolume
path>`: the same path on every run, so borg's files cache sees unchanged spool files as
unchanged (a Btrfs snapshot keeps inode numbers and ctimes).

Ledger entries, released newest first: the top-level mount (made before the consistency point),
the snapshot, the bind mount.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from emg_borg.errors import EmgBorgError
from emg_borg.external import btrfs, findmnt, mount
from emg_borg.hookspecs import hookimpl
from emg_borg.lifecycle.run import Snapshot

logger = logging.getLogger(__name__)
NAME = "btrfs"


@hookimpl
def emg_borg_snapshot_providers():
    return [NAME]


@hookimpl
def emg_borg_snapshot_provider(run, filesystem):
    return NAME if filesystem == "btrfs" else None


@hookimpl
def emg_borg_preflight(run):
    if run.provider == NAME and not shutil.which(btrfs.BTRFS):
        return ["btrfs: command not found (apt-get install btrfs-progs)"]
    return None


def _device(source: str) -> str:
    """findmnt shows a subvolume mount's source as `/dev/sdb1[/spool]`; keep the device."""
    return source.split("[", 1)[0]


def _top_level_mount(run) -> Path:
    return run.runtime.root / "btrfs-top"


def _spool_filesystem(run):
    found = findmnt.find(run.layout.spooldir)
    if found is None or found.fstype != "btrfs":
        raise EmgBorgError(
            f"snapshot provider btrfs: SPOOLDIR {run.layout.spooldir} is not on Btrfs "
            f"({found.fstype if found else 'unknown'} file system); set [snapshot] provider to match"
        )
    return found


def _prepare(run):
    """Find the spool's subvolume and mount the file system's top level, once per run (before the
    consistency point, so the window holds only the snapshot itself and its bind mount)."""
    state = run.plugin_state.setdefault(NAME, {})
    if "subvolume" not in state:
        filesystem = _spool_filesystem(run)
        top = _top_level_mount(run)
        run.ledger.add(NAME, "mount", target=top)
        if not findmnt.is_mount_point(top):  # else a crashed run left it mounted
            mount.mount(_device(filesystem.source), top, options=("subvolid=5",))
        state.update(filesystem=filesystem, top=top,
                     subvolume=btrfs.subvolume_holding(run.layout.spooldir, filesystem.target))
    return state["filesystem"], state["subvolume"], state["top"]


@hookimpl
def emg_borg_take_snapshot(run, provider):
    if provider != NAME:
        return None
    filesystem, subvolume, top = _prepare(run)
    snapshot = top / run.runtime.instance_tag
    view = run.runtime.snapshots / str(subvolume).lstrip("/")
    run.ledger.add(NAME, "snapshot", path=snapshot)
    btrfs.snapshot(subvolume, snapshot)
    run.ledger.add(NAME, "mount", target=view)
    mount.mount(str(snapshot), view, options=("bind", "ro"))
    logger.info("btrfs: read-only snapshot of %s, visible at %s", subvolume, view)
    return Snapshot(
        provider=NAME, origin=subvolume, base=run.runtime.snapshots, name=run.runtime.instance_tag,
        device=_device(filesystem.source),
        details={"subvolume": str(subvolume), "mount_point": str(filesystem.target)},
    )


def _release(entry: dict) -> None:
    if entry["kind"] == "mount":
        mount.umount(Path(entry["target"]))
    elif btrfs.is_subvolume(entry["path"]):
        btrfs.delete(entry["path"])


@hookimpl
def emg_borg_release(run):
    for entry in run.ledger.of(NAME):
        try:
            _release(entry)
            run.ledger.remove(entry)
        except EmgBorgError as error:
            run.release_errors.append(f"btrfs: {error}")
    top = _top_level_mount(run)
    if top.is_dir() and not findmnt.is_mount_point(top):
        top.rmdir()


@hookimpl
def emg_borg_cleanup_stale(run):
    """Remove this installation's snapshot left by a crashed run that lost its ledger: unmount
    the views under runtime_dir, then delete `<instance tag>` at the top level of the spool's
    file system, which stays mounted for this run's snapshot. Snapshots of anybody else carry
    other names and are never touched."""
    if run.provider != NAME:
        return
    for target in findmnt.mounts_under(run.runtime.snapshots):
        logger.warning("btrfs: unmounting leftover snapshot view %s of an earlier run", target.target)
        mount.umount(target.target)
    _, _, top = _prepare(run)
    leftover = top / run.runtime.instance_tag
    if btrfs.is_subvolume(leftover):
        logger.warning("btrfs: removing leftover snapshot %s of an earlier run", leftover)
        btrfs.delete(leftover)
