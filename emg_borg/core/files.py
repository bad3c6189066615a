"""Files emg-borg writes: private, atomic, fsynced, never through a symbolic link; and the one way
to find a free name."""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from emg_borg.errors import EmgBorgError

TEMPORARY = ".emg-borg-tmp"  # how the temporary file of an atomic write ends


def planted(path, link: bool) -> EmgBorgError:
    """The error for something else standing where emg-borg keeps one of its own files."""
    what = "a symbolic link" if link else "not a regular file"
    return EmgBorgError(f"{path} is {what} where emg-borg keeps its own file; refusing to follow or use it "
                        f"(find out who put it there, then remove it)")


def refuse_planted(path) -> None:
    """Raise when something other than a regular file (a symbolic link, a named pipe) stands
    where emg-borg keeps one of its own files."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise planted(path, stat.S_ISLNK(mode))


def read_private(path: Path) -> str | None:
    """The text of one of emg-borg's own files; None when there is none. A symbolic link (or a
    named pipe, a device) planted in its place is refused, never followed or waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise planted(path, link=True) from error
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise planted(path, link=False)
        return f.read().decode(errors="replace")


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write a file atomically (a temporary file, fsynced, renamed), readable only as `mode` says.
    A symbolic link in its place is refused (the rename would only replace it, but someone put
    it there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    refuse_planted(path)
    write_atomic(path, data, mode)


def _create_exclusive(tmp: Path, mode: int) -> int:
    """Create `tmp` afresh, never through a link. The name carries our pid, so one left there is
    a crash's (of an earlier process with the same pid): removed (a link itself, not what it names)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(tmp, flags, mode)
    except FileExistsError:
        tmp.unlink()
        return os.open(tmp, flags, mode)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` by a file holding `data`, never leaving a half-written one: written to a
    temporary file beside it (created exclusively, named per process), fsynced, renamed over
    it, and the directory fsynced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY}")
    fd = _create_exclusive(tmp, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            with contextlib.suppress(PermissionError):
                os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_tree(path: Path) -> None:
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()  # a file, or a named pipe of a streamed dump
    elif path.exists():
        shutil.rmtree(path)


def free_name(directory: Path, stem: str, stamp: bool = False) -> Path:
    """`directory/<stem>` (with `stamp`, `<stem><YYYYmmddTHHMMSS>`), numbered `-2`, `-3`, ... when
    that name is taken, so nothing existing is ever overwritten."""
    if stamp:
        stem += datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    candidate = Path(directory) / stem
    number = 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = Path(directory) / f"{stem}-{number}"
    return candidate


def remove_empty_dirs(top: Path) -> None:
    """Remove `top` and the empty directories below it; leave mount points and anything holding files."""
    top = Path(top)
    if not top.is_dir() or os.path.ismount(top):
        return
    for child in top.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_empty_dirs(child)
    with contextlib.suppress(OSError):
        top.rmdir()
