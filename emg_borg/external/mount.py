"""mount and umount."""

from __future__ import annotations

import time
from pathlib import Path

from emg_borg.errors import CommandError
from emg_borg.external import findmnt
from emg_borg.external.execute import run


def mount(source: str, target: Path, *, fstype: str | None = None, options: tuple = ()) -> None:
    Path(target).mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = ("mount",)
    if fstype:
        argv += ("-t", fstype)
    if options:
        argv += ("-o", ",".join(options))
    run(argv + (source, str(target)), what=f"mounting {source} on {target}")


def umount(target: Path, attempts: int = 5) -> None:
    """Unmount, retrying briefly while the mount is busy (a reader may just be finishing)."""
    for attempt in range(attempts):
        try:
            run(("umount", str(target)), what=f"unmounting {target}")
            return
        except CommandError as error:
            # Asked of the mount table (findmnt), the same source the release consulted: a bind
            # mount of a directory on the same file system is not seen by os.path.ismount.
            if not findmnt.is_mount_point(target):
                return
            if attempt == attempts - 1:
                raise error
            time.sleep(0.2 * (attempt + 1))
