"""zfs: listing datasets and snapshots, taking and destroying snapshots, cloning them.

Works with OpenZFS and with zfs-fuse (an old ZFS that runs as a FUSE daemon): only options both
understand are used (`zfs list -H -o`, `zfs snapshot`, `zfs clone -o`, `zfs destroy`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from emg_borg.errors import CommandError
from emg_borg.external.execute import run

logger = logging.getLogger(__name__)

ZFS = "zfs"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One line of `zfs list`: a file system, snapshot or volume with the properties emg-borg
    reads. `origin` is the snapshot a clone was made from ("-" for other datasets)."""

    name: str
    type: str
    mountpoint: str
    origin: str
    mounted: str

    @property
    def snapshot_name(self) -> str:
        """The part after `@` of a snapshot's name ("" for other datasets)."""
        return self.name.partition("@")[2]


FIELDS = ("name", "type", "mountpoint", "origin", "mounted")


def list_datasets(*names: str, types: str = "filesystem,snapshot") -> list[Dataset]:
    """Datasets of the given types (all of them when no `names` are given; those names otherwise,
    skipping names that do not exist)."""
    argv = (ZFS, "list", "-H", "-t", types, "-o", ",".join(FIELDS), *names)
    result = run(argv, check=False)
    if result.returncode != 0 and not names:
        run(argv)  # raises with zfs's own error line
    datasets = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        if len(values) == len(FIELDS):
            datasets.append(Dataset(*values))
    return datasets


def exists(name: str) -> bool:
    return bool(list_datasets(name, types="all"))


def snapshot(name: str) -> None:
    """`zfs snapshot dataset@snap`: atomic, instant, read-only."""
    run((ZFS, "snapshot", name), what=f"zfs snapshot {name}")


def clone(snapshot_name: str, clone_name: str, mountpoint) -> None:
    """A read-only clone of a snapshot, mounted by ZFS at `mountpoint` (the way to see a snapshot
    where `mount -t zfs` and `.zfs/snapshot` are not available, as with zfs-fuse)."""
    run(
        (ZFS, "clone", "-o", f"mountpoint={mountpoint}", "-o", "readonly=on", snapshot_name, clone_name),
        what=f"zfs clone {snapshot_name} {clone_name}",
    )


def unmount(name: str) -> None:
    run((ZFS, "unmount", name), what=f"zfs unmount {name}")


def destroy(name: str, *, attempts: int = 20, delay: float = 0.1) -> None:
    """Destroy a snapshot or a clone.

    Right after a clone was unmounted, zfs-fuse can still answer "dataset is busy" for a moment,
    so that answer is retried with a bound (about 15 s in all); any other error is final.
    """
    for attempt in range(attempts):
        try:
            run((ZFS, "destroy", name), what=f"zfs destroy {name}")
            return
        except CommandError as error:
            if "busy" not in str(error) or attempt == attempts - 1:
                raise
            logger.debug("zfs destroy %s: dataset is busy, retrying", name)
            time.sleep(min(delay * (attempt + 1), 1.0))
