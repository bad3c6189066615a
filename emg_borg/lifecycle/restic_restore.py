"""Extracting categories of a restic snapshot to their live paths.

restic restores a path only under the path it stored it at (`/var/lib/emg-borg/snapshots/...`
for the spool), so `restic restore --include` writes into a private scratch directory on the
file system of the destination, and the restored trees are then moved (renamed) to the live
paths the manifest's `stored_roots` say they stand for. A file that exists at the destination
is replaced by a rename (never half-written); a directory that exists is merged into, and gets
the archived mode, owner and times. Only the selected categories are moved (a nested root of an
unselected category, such as the logs inside EMGDIR, stays behind); the scratch directory goes
in every case.

The scratch directory lies inside the destination directory when it exists (the spool may be a
mount point of its own, and a rename cannot cross file systems), else in the nearest directory
above it that exists; roots on different file systems get one scratch directory (and one
`restic restore`) each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from emg_borg.core.backup_tool import Extracted, Item
from emg_borg.emg import categories as category_module
from emg_borg.emg.layout import MOVED_ASIDE_MARK
from emg_borg.external import restic
from emg_borg.lifecycle.restic_files import live_path, stored_paths

logger = logging.getLogger(__name__)

# Named like a spool moved aside, which backups skip: a scratch directory a killed restore left
# behind is never archived.
SCRATCH_PREFIX = f"{MOVED_ASIDE_MARK}restic-"
TYPES = {"file": "-", "dir": "d", "symlink": "l", "fifo": "p", "dev": "b", "chardev": "c", "socket": "s"}


class Selected:
    """Which archive paths the selected categories hold (a path belongs to the longest root
    holding it), and whether a whole directory can move at once."""

    def __init__(self, manifest, selected):
        self.categories, self.selected = manifest.categories, tuple(selected)
        self.roots = [root.strip("/") for roots in self.categories.values() for root in roots]
        self.stored_roots = manifest.get("stored_roots") or {}

    def keep(self, path: str) -> bool:
        return category_module.category_of(path, self.categories) in self.selected

    def uniform(self, path: str) -> bool:
        """No root below `path` whose selection differs from path's own."""
        mine = self.keep(path)
        return all(self.keep(root) == mine for root in self.roots
                   if root != path and (not path or root.startswith(path + "/")))

    def tops(self) -> list[str]:
        return category_module.selected_roots(self.categories, self.selected)

    def stored(self, tops) -> list[str]:
        return list(dict.fromkeys(p for top in tops for p in stored_paths(self.stored_roots, top)))

    def live(self, stored: str) -> str:
        return live_path(self.stored_roots, stored).lstrip("/")


def items(snapshot: str, selection: Selected, tops, env, keep=None) -> list[Item]:
    """The members under the archive paths `tops` that the selection (or `keep`) keeps, by their
    live paths."""
    keep = keep or selection.keep
    found = {}
    for node in restic.ls(snapshot, selection.stored(tops), env):
        path = selection.live(node["path"])
        if any(path == top or path.startswith(top + "/") for top in tops) and keep(path):
            found[path] = Item(path, TYPES.get(node.get("type"), "?"), node.get("size") or 0)
    return sorted(found.values(), key=lambda item: item.path)


def _scratch_parent(destination: Path, top: str) -> Path:
    path = destination / top
    if path.is_dir() and not path.is_symlink():
        return path
    while not path.is_dir() or path.is_symlink():
        path = path.parent
    return path


def _count(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return 1
    return 1 + sum(len(dirs) + len(names) for _, dirs, names in os.walk(path))


def _rename(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))  # another mount of the same file system (a bind mount)


def _copy_owner_and_times(src: Path, dst: Path) -> None:
    info = os.lstat(src)
    with contextlib.suppress(PermissionError):
        os.lchown(dst, info.st_uid, info.st_gid)
    shutil.copystat(src, dst, follow_symlinks=False)


def _move(src: Path, dst: Path, path: str, selection: Selected, problems: list) -> int:
    """Move what the selection keeps of the restored `src` (archive path `path`) to `dst`."""
    keep = selection.keep(path)
    try:
        if not src.is_dir() or src.is_symlink():
            if not keep:
                return 0
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            _rename(src, dst)
            return 1
        uniform = selection.uniform(path)
        if uniform and not keep:
            return 0
        if uniform and not os.path.lexists(dst):
            count = _count(src)
            _rename(src, dst)
            return count
        if os.path.lexists(dst) and (not dst.is_dir() or dst.is_symlink()):
            dst.unlink()
        created = not os.path.lexists(dst)
        dst.mkdir(parents=True, exist_ok=True, mode=0o700)
        count = sum(_move(child, dst / child.name, f"{path}/{child.name}", selection, problems)
                    for child in sorted(src.iterdir()))
        if keep or created:
            _copy_owner_and_times(src, dst)
            count += keep
        return count
    except OSError as error:
        problems.append(f"{path}: {error.strerror or error}")
        return 0


def extract(snapshot: str, selection: Selected, destination: Path, env) -> Extracted:
    """Restore the selected categories of `snapshot` under `destination` at their live paths."""
    destination = Path(destination)
    groups: dict[int, tuple[Path, list[str]]] = {}
    for top in selection.tops():
        parent = _scratch_parent(destination, top)
        groups.setdefault(os.stat(parent).st_dev, (parent, []))[1].append(top)
    items_written, problems = 0, []
    for parent, tops in groups.values():
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent))
        try:
            ignored = restic.restore(snapshot, scratch, selection.stored(tops), env)
            problems += [f"{selection.live(path)}: {error}" for path, error in ignored]
            for stored in selection.stored(tops):
                restored = scratch / stored.lstrip("/")
                if os.path.lexists(restored):
                    path = selection.live(stored)
                    items_written += _move(restored, destination / path, path, selection, problems)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    problems = list(dict.fromkeys(problems))  # a path two stored roots fill is named once
    for problem in problems:
        logger.warning("restic restore %s: %s", snapshot[:8], problem)
    return Extracted(items_written, problems)
