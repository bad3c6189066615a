"""btrfs: read-only subvolume snapshots."""

from __future__ import annotations

import os
from pathlib import Path

from emg_borg.external.execute import run

BTRFS = "btrfs"
SUBVOLUME_ROOT_INODE = 256  # every Btrfs subvolume's root directory has this inode number


def is_subvolume(path) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOLUME_ROOT_INODE and Path(path).is_dir()
    except OSError:
        return False


def subvolume_holding(path, mount_point) -> Path:
    """The innermost subvolume containing `path`, found by walking up to `mount_point`."""
    path, mount_point = Path(path), Path(mount_point)
    for candidate in (path, *path.parents):
        if is_subvolume(candidate):
            return candidate
        if candidate == mount_point:
            break
    return mount_point


def snapshot(source, destination) -> None:
    run((BTRFS, "subvolume", "snapshot", "-r", str(source), str(destination)),
        what=f"btrfs snapshot of {source}")


def delete(path) -> None:
    run((BTRFS, "subvolume", "delete", str(path)), what=f"deleting btrfs snapshot {path}")
