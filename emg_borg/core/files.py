"""Files emg-borg writes: private, atomic, fsynced; and the one way to find a free name."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
from pathlib import Path


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write a file atomically (a temporary file, fsynced, renamed), readable only as `mode` says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` by a file holding `data`, never leaving a half-written one: written to a
    temporary file beside it, fsynced, renamed over it, and the directory fsynced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.emg-borg-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
