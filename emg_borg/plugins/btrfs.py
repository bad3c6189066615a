"""Built-in plugin: the `btrfs` snapshot provider.

A read-only snapshot of the subvolume holding SPOOLDIR is created inside that subvolume at the
fixed path `<subvolume>/.emg-borg-snapshot/<subvolume path>`, so that `<subvolume>/.emg-borg-
snapshot/./<live path>` gives borg the live path as archive path, and the path is the same on
every run (borg's files cache then sees unchanged spool files as unchanged). Btrfs snapshots
must live on the same file system as their origin, which is why no mount under runtime_dir is
involved.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emg_borg.errors import EmgBorgError
from emg_borg.external import btrfs, findmnt
from emg_borg.hookspecs import hookimpl
from emg_borg.lifecycle.run import Snapshot

logger = logging.getLogger(__name__)
NAME = "btrfs"
SNAPSHOT_DIR = ".emg-borg-snapshot"


@hookimpl
def emg_borg_snapshot_providers():
    return [NAME]


@hookimpl
def emg_borg_snapshot_provider(run, filesystem):
    return NAME if filesystem == "btrfs" else None


@hookimpl
def emg_borg_take_snapshot(run, provider):
    if provider != NAME:
        return None
    spooldir = run.layout.spooldir
    mount = findmnt.find(spooldir)
    if mount is None or mount.fstype != "btrfs":
        raise EmgBorgError(
            f"snapshot provider btrfs: SPOOLDIR {spooldir} is not on Btrfs "
            f"({mount.fstype if mount else 'unknown'} file system); set [snapshot] provider to match"
        )
    subvolume = btrfs.subvolume_holding(spooldir, mount.target)
    base = subvolume / SNAPSHOT_DIR
    destination = base / str(subvolume).lstrip("/")
    run.ledger.add(NAME, "snapshot", path=destination, base=base)
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    btrfs.snapshot(subvolume, destination)
    logger.info("btrfs: read-only snapshot of %s at %s", subvolume, destination)
    return Snapshot(
        provider=NAME, origin=subvolume, base=base, name=str(destination), device=mount.source,
        # The snapshot directory is inside the subvolume: keep it out of any live root, and out of
        # the snapshot itself, where its (empty) directory shows up.
        prune=[base, destination / SNAPSHOT_DIR],
        details={"subvolume": str(subvolume), "mount_point": str(mount.target)},
    )


def _remove_empty_dirs(directory: Path, base: Path) -> None:
    """Remove `directory` and its parents up to and including `base`, while they are empty."""
    for path in (directory, *directory.parents):
        if path != base and base not in path.parents:
            break
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break


def _remove_snapshot(base: Path, destination: Path) -> None:
    if btrfs.is_subvolume(destination):
        btrfs.delete(destination)
    _remove_empty_dirs(destination.parent, base)


@hookimpl
def emg_borg_release(run):
    for entry in run.ledger.of(NAME):
        try:
            _remove_snapshot(Path(entry["base"]), Path(entry["path"]))
            logger.info("btrfs: deleted snapshot %s", entry["path"])
            run.ledger.remove(entry)
        except EmgBorgError as error:
            run.release_errors.append(str(error))


@hookimpl
def emg_borg_cleanup_stale(run):
    """Delete emg-borg snapshots left in `<subvolume>/.emg-borg-snapshot` by a crashed run."""
    if run.provider != NAME:
        return
    mount = findmnt.find(run.layout.spooldir)
    if mount is None or mount.fstype != "btrfs":
        return
    subvolume = btrfs.subvolume_holding(run.layout.spooldir, mount.target)
    base = subvolume / SNAPSHOT_DIR
    if not base.exists():
        return
    for directory, subdirs, _ in os.walk(base, topdown=True):
        for name in list(subdirs):
            path = Path(directory) / name
            if btrfs.is_subvolume(path):
                logger.warning("btrfs: removing leftover snapshot %s of an earlier run", path)
                _remove_snapshot(base, path)
                subdirs.remove(name)
    for directory, _, _ in sorted(os.walk(base), key=lambda w: len(w[0]), reverse=True):
        _remove_empty_dirs(Path(directory), base)
