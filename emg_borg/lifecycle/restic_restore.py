"""Extracting categories of a restic snapshot to their live paths.

restic restores a path only under the path it stored it at (`/var/lib/emg-borg/snapshots/...`
for the spool), so `restic restore --include` writes into a private scratch directory on the
file system of the destination, and the restored trees are then moved (renamed) to the live
paths the manifest's `stored_roots` say they stand for; where two stored roots stand for the same
path, the staging area's copy (`staged_root`: the staged seqno) is moved last and wins. A file
that exists at the destination is replaced by a rename (never half-written), an empty directory
too (as borg: one holding files stays, named); a directory that exists is merged into.
Directories get the archived mode, owner and times from the copy holding their category's
content (`_Mover`). Only the selected categories are moved (a nested root of an unselected
category, such as the logs inside EMGDIR, stays behind); nothing is written through a symlink
and no symlink is replaced (as borg: "not extracted, a parent directory is a symlink"); the
scratch directory goes in every case.

The scratch directory lies in the deepest directory on the way from the destination to the
root that exists and is reached through no symlink (the spool may be a mount point of its own,
and a rename cannot cross file systems), else in the nearest directory above the destination;
roots on different file systems get one scratch directory (and one `restic restore`) each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
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
        self.staged_root = manifest.get("staged_root")

    def keep(self, path: str) -> bool:
        return category_module.category_of(path, self.categories) in self.selected

    def uniform(self, path: str) -> bool:
        """No root below `path` whose selection differs from path's own."""
        mine = self.keep(path)
        return all(self.keep(root) == mine for root in self.roots
                   if root != path and (not path or root.startswith(path + "/")))

    def tops(self) -> list[str]:
        return category_module.selected_roots(self.categories, self.selected)

    def _root_of(self, stored: str) -> str | None:
        holding = [base for base in self.stored_roots if stored == base or stored.startswith(base.rstrip("/") + "/")]
        return max(holding, key=len) if holding else None

    def stored(self, tops) -> list[str]:
        """The stored paths holding `tops`: the live paths first, then the other stored roots, the
        staging area last, so that its files (the staged `seqno`) replace the snapshot's."""
        found = dict.fromkeys(p for top in tops for p in stored_paths(self.stored_roots, top))
        return sorted(found, key=self.rank)

    def rank(self, stored: str) -> int:
        root = self._root_of(stored)
        return 0 if root is None else 2 if root == self.staged_root else 1

    def content(self, stored: str, live: str) -> bool:
        """Whether the directories of stored path `stored` (standing for `live`) are the archived
        ones: a live path's are; the staging area's never (a carrier); another stored root's
        (the snapshot's view) at or below a category root only."""
        root = self._root_of(stored)
        if root is None:
            return True
        if root == self.staged_root:
            return False
        # A snapshot's view holds its category root and what lies below; the directories above
        # it (EMGDIR above a nested spool, /var/spool) are the view's own.
        live = live.strip("/")
        return (any(live == r or live.startswith(r + "/") for r in self.roots)
                and not any(r.startswith(live + "/") for r in self.roots))

    def live(self, stored: str) -> str:
        return live_path(self.stored_roots, stored).lstrip("/")


def items(snapshot: str, selection: Selected, tops, env, keep=None) -> list[Item]:
    """The members under the archive paths `tops` that the selection (or `keep`) keeps, by their
    live paths."""
    keep = keep or selection.keep
    found = {}
    nodes = restic.ls(snapshot, selection.stored(tops), env)
    for node in sorted(nodes, key=lambda node: selection.rank(node["path"])):  # the staged copy wins
        path = selection.live(node["path"])
        if any(path == top or path.startswith(top + "/") for top in tops) and keep(path):
            found[path] = Item(path, TYPES.get(node.get("type"), "?"), node.get("size") or 0)
    return sorted(found.values(), key=lambda item: item.path)


def _scratch_parent(destination: Path, top: str) -> Path:
    """The deepest directory on the way from the destination to `top` that exists and is reached
    through no symbolic link (restic would write the whole tree through it, outside the
    destination); the nearest existing directory above the destination when it does not exist."""
    path = destination
    while not path.is_dir():
        path = path.parent
    if path != destination:
        return path
    for part in Path(top).parts:
        below = path / part
        if below.is_symlink() or not below.is_dir():
            break
        path = below
    return path


def _remove_stale_scratch(parent: Path) -> None:
    """Scratch directories an emg-borg that is gone left behind (killed with SIGKILL: its restic
    died with it). The name carries the pid of the emg-borg that made it."""
    for entry in parent.iterdir():
        if not entry.name.startswith(SCRATCH_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(SCRATCH_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            logger.info("removing %s, left by an extraction that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _symlink_between(destination: Path, path: Path) -> bool:
    """Whether a directory between `destination` and `path` (exclusive both) is a symlink."""
    current = destination
    for part in path.relative_to(destination).parts[:-1]:
        current = current / part
        if current.is_symlink():
            return True
    return False


def _rename(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))  # another mount of the same file system (a bind mount)


class _Mover:
    """Moves restored trees to their live paths. A directory's mode, owner and times come only
    from a stored copy that holds the category's content (the live path, or the spool's
    snapshot view at or below a category root); the staging area is a carrier (its files move,
    its directories give nothing). The metadata is applied once everything has moved, so that
    a file moved in later does not change a directory's times; the first content copy wins."""

    def __init__(self, selection: Selected):
        self.selection, self.problems, self.metadata = selection, [], {}

    def _record(self, dst: Path, info: os.stat_result) -> None:
        self.metadata.setdefault(dst, info)

    def _rename_tree(self, src: Path, dst: Path) -> int:
        found, count = {dst: os.lstat(src)}, 1
        for where, dirs, names in os.walk(src):
            count += len(dirs) + len(names)
            for name in dirs:
                found[dst / Path(where, name).relative_to(src)] = os.lstat(Path(where, name))
        _rename(src, dst)
        for path, info in found.items():
            self._record(path, info)
        return count

    def _refuse(self, src: Path, path: str, reason: str) -> None:
        """Name the kept paths at or below `src` as not extracted."""
        if self.selection.keep(path):
            self.problems.append(f"{path}: not extracted, {reason}")
        elif src.is_dir() and not src.is_symlink():
            for child in sorted(src.iterdir()):
                self._refuse(child, f"{path}/{child.name}", reason)

    def move(self, src: Path, dst: Path, path: str, content: bool) -> int:
        """Move what the selection keeps of the restored `src` (archive path `path`) to `dst`;
        `content`: whether src's directories give their metadata."""
        keep = self.selection.keep(path)
        try:
            if not src.is_dir() or src.is_symlink():
                if not keep:
                    return 0
                if dst.is_dir() and not dst.is_symlink():
                    dst.rmdir()  # as borg: an empty directory only; one holding files stays, named
                _rename(src, dst)
                return 1
            uniform = self.selection.uniform(path)
            if uniform and not keep:
                return 0
            if uniform and content and not os.path.lexists(dst):
                return self._rename_tree(src, dst)
            if os.path.lexists(dst) and (not dst.is_dir() or dst.is_symlink()):
                # As borg: nothing is written through a symlink, and a symlinked directory (a
                # versioned bin/) or a path of a category that was not selected stays.
                if dst.is_symlink() or not keep:
                    reason = "a parent directory is a symlink" if dst.is_symlink() else "a parent is not a directory"
                    for child in sorted(src.iterdir()):
                        self._refuse(child, f"{path}/{child.name}", reason)
                    return 0
                dst.unlink()
            created, info = not os.path.lexists(dst), os.lstat(src)  # before its children move out
            dst.mkdir(parents=True, exist_ok=True, mode=0o700)
            if content and (keep or created):
                self._record(dst, info)
            count = keep + sum(self.move(child, dst / child.name, f"{path}/{child.name}", content)
                               for child in sorted(src.iterdir()))
            return count
        except OSError as error:
            self.problems.append(f"{path}: {error.strerror or error}")
            return 0

    def apply_metadata(self) -> None:
        for dst, info in sorted(self.metadata.items(), key=lambda item: -len(item[0].parts)):
            try:
                with contextlib.suppress(PermissionError):
                    os.lchown(dst, info.st_uid, info.st_gid)
                os.chmod(dst, stat.S_IMODE(info.st_mode))
                os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
            except OSError as error:
                self.problems.append(f"{dst}: {error.strerror or error}")


def extract(snapshot: str, selection: Selected, destination: Path, env) -> Extracted:
    """Restore the selected categories of `snapshot` under `destination` at their live paths."""
    destination = Path(destination)
    groups: dict[int, tuple[Path, list[str]]] = {}
    for top in selection.tops():
        parent = _scratch_parent(destination, top)
        groups.setdefault(os.stat(parent).st_dev, (parent, []))[1].append(top)
    items_written, mover = 0, _Mover(selection)
    for parent, tops in groups.values():
        _remove_stale_scratch(parent)
        stored = selection.stored(tops)
        held = {node["path"] for node in restic.ls(snapshot, stored, env, recursive=False)}
        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
        try:
            ignored = restic.restore(snapshot, scratch, stored, env)
            mover.problems += [f"{selection.live(path)}: {error}" for path, error in ignored]
            for path_stored in stored:
                restored = scratch / path_stored.lstrip("/")
                path = selection.live(path_stored)
                if not os.path.lexists(restored):
                    if path_stored in held:
                        mover.problems.append(f"{path}: not restored by restic")
                    continue
                dst = destination / path
                if _symlink_between(destination, dst):
                    mover._refuse(restored, path, "a parent directory is a symlink")
                    continue
                items_written += mover.move(restored, dst, path, selection.content(path_stored, path))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    mover.apply_metadata()
    # A path two stored roots fill is named once, with its first problem.
    problems = list({problem.partition(": ")[0]: problem for problem in reversed(mover.problems)}.values())[::-1]
    for problem in problems:
        logger.warning("restic restore %s: %s", snapshot[:8], problem)
    return Extracted(items_written, problems)
