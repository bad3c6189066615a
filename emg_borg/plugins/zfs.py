"""Built-in plugin: the `zfs` snapshot provider (OpenZFS and zfs-fuse).

The dataset mounted at the longest mount point containing SPOOLDIR gets a snapshot named
`<dataset>@<tag>`, where `<tag>` is the installation's `instance_tag` (`emg-borg-<8 hex digits>`
of its runtime directory), so that two EMG instances whose spools share a dataset never take or
remove each other's snapshot. Borg cannot read a snapshot directly, so it is made visible
read-only at the stable path `<runtime_dir>/snapshots/<mount point>`: with OpenZFS by
`mount -t zfs -o ro`, with zfs-fuse (which has neither `mount -t zfs` nor `.zfs/snapshot`)
through a read-only clone `<dataset>_<tag>` whose mountpoint is that path. A clone keeps the
snapshot's inode numbers and times, so with the path unchanged borg's files cache still
recognises unchanged files.

Datasets mounted below the snapshot's origin where an archived root meets them (the spool's
`leveldb` on a dataset of its own; a referenced file on `/srv` when the snapshot is of `/`) are
empty directories in the parent's snapshot, so they are snapshotted and exposed the same way, at
their place below the parent's view; a snapshot per dataset is atomic for that dataset only,
which the log says when it concerns the spool. A non-ZFS file system holding an archived root is
read live where it is; one inside an archived root is refused.

Everything is written to the ledger before it is created and released newest first: clone or
mount, then snapshot. A crashed run's leftovers are found by this installation's tag (`@<tag>`
snapshots, `_<tag>` clones of them), so another emg-borg installation's running backup (another
tag) and anybody else's snapshots are never touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emg_borg.core.paths import within
from emg_borg.core.snapshot import Resource, Snapshot, SnapshotProvider
from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external import findmnt, mount, zfs
from emg_borg.hookspecs import hookimpl
from emg_borg.plugins import volumes

logger = logging.getLogger(__name__)
NAME = "zfs"
OPENZFS = "zfs"
ZFS_FUSE = "fuse.zfs"
FSTYPES = (OPENZFS, ZFS_FUSE)


def snapshot_name(dataset: str, tag: str) -> str:
    """This installation's snapshot of `dataset`: `<dataset>@<tag>`."""
    return f"{dataset}@{tag}"


def clone_name(dataset: str, tag: str) -> str:
    """The clone of `dataset`'s snapshot: a sibling named `<dataset>_<tag>`, or for a pool's
    root dataset (which has no siblings) a child `<pool>/<pool>_<tag>`."""
    return f"{dataset}_{tag}" if "/" in dataset else f"{dataset}/{dataset}_{tag}"


def _spool_mount(run) -> findmnt.Mount:
    spooldir = run.layout.spooldir
    found = findmnt.find(spooldir)
    if found is None or found.fstype not in FSTYPES:
        raise EmgBorgError(
            f"snapshot provider zfs: SPOOLDIR {spooldir} is not on ZFS "
            f"({found.fstype + ' at ' + str(found.target) if found else 'no file system found'}); "
            f"set [snapshot] provider to match its file system"
        )
    return found


def _expose(run, dataset: str, fstype: str, where: Path):
    """Snapshot `dataset` and make the snapshot visible read-only at `where` (steps for the core)."""
    tag = run.runtime.instance_tag
    snapshot = snapshot_name(dataset, tag)
    yield Resource("snapshot", {"name": snapshot}, lambda: zfs.snapshot(snapshot))
    if fstype == OPENZFS:
        yield Resource("mount", {"target": where, "source": snapshot},
                       lambda: mount.mount(snapshot, where, fstype="zfs", options=("ro",)))
        return {"dataset": dataset, "snapshot": snapshot, "mount": str(where), "exposed_by": "mount -t zfs"}
    clone = clone_name(dataset, tag)

    def make_clone():
        # zfs-fuse creates a missing mount point itself, but with its own mode; ours is private.
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        zfs.clone(snapshot, clone, where)

    yield Resource("clone", {"name": clone, "origin": snapshot, "target": where}, make_clone)
    return {"dataset": dataset, "snapshot": snapshot, "clone": clone, "mount": str(where), "exposed_by": "clone"}


def _take(run):
    spool = _spool_mount(run)
    dataset = spool.source  # findmnt names a ZFS mount's source by its dataset
    if not any(d.type == "filesystem" for d in zfs.list_datasets(dataset, types="filesystem")):
        raise EmgBorgError(f"snapshot provider zfs: {dataset} (mounted at {spool.target}) is not a ZFS file system")
    nested = volumes.nested_mounts(run, spool.target)
    foreign = [m for m in nested.in_roots if m.fstype not in FSTYPES]
    if foreign:
        found = ", ".join(f"{m.target} ({m.fstype})" for m in foreign)
        raise EmgBorgError(
            f"snapshot provider zfs: the snapshot of {dataset} would show {found} empty: another file system is "
            f"mounted inside an archived root on {spool.target}; move it, or leave its category out"
        )
    views = [(yield from _expose(run, dataset, spool.fstype, volumes.view_path(run, spool.target)))]
    logger.info("zfs: snapshot %s of %s, readable at %s", views[0]["snapshot"], spool.target, views[0]["mount"])
    inner_datasets = sorted((m for m in nested.in_roots + nested.holding_roots if m.fstype in FSTYPES),
                            key=lambda m: len(m.target.parts))
    for inner in inner_datasets:
        if within(inner.target, run.layout.spooldir) or within(run.layout.spooldir, inner.target):
            logger.warning(
                "zfs: %s is a dataset of its own inside the spool; its snapshot is taken right after that of %s, "
                "not in the same instant", inner.target, dataset,
            )
        views.append((yield from _expose(run, inner.source, inner.fstype, volumes.view_path(run, inner.target))))
        logger.info("zfs: nested dataset %s at %s readable at %s", inner.source, inner.target, views[-1]["mount"])
    return Snapshot(
        provider=NAME, origin=spool.target, base=run.runtime.snapshots, name=views[0]["snapshot"], device=dataset,
        details={"fstype": spool.fstype, "datasets": views},
        # Other file systems holding archived roots are read live, where they are.
        holes=[m.target for m in nested.holding_roots if m.fstype not in FSTYPES],
    )


def _release_clone(entry: dict) -> None:
    name = entry["name"]
    found = zfs.list_datasets(name, types="filesystem")
    if not found:
        return  # already gone
    if found[0].origin != entry["origin"]:
        raise EmgBorgError(f"zfs: {name} is not the clone of {entry['origin']} that emg-borg made; left alone")
    if found[0].mounted == "yes":
        zfs.unmount(name)
    zfs.destroy(name)
    logger.info("zfs: destroyed clone %s", name)


def _release_mount(entry: dict) -> None:
    target = Path(entry["target"])
    if os.path.ismount(target):
        mount.umount(target)
        logger.info("zfs: unmounted %s", target)


def _release_snapshot(entry: dict) -> None:
    if zfs.exists(entry["name"]):
        zfs.destroy(entry["name"])
        logger.info("zfs: destroyed snapshot %s", entry["name"])


RELEASERS = {"clone": _release_clone, "mount": _release_mount, "snapshot": _release_snapshot}


def _clean_stale(run):
    """Remove what a crashed run of this installation left and the ledger does not list: ZFS
    mounts under this runtime directory's snapshot views, clones `<dataset>_<tag>` of snapshots
    `<dataset>@<tag>`, then those snapshots, where `<tag>` is this installation's own
    `instance_tag`. Another installation's (another tag) and anybody else's are left alone."""
    _spool_mount(run)  # SPOOLDIR not on ZFS: say that, before asking zfs anything
    tag = run.runtime.instance_tag
    views = run.runtime.snapshots
    for found in findmnt.mounts_under(views):
        if found.fstype == OPENZFS:
            logger.warning("zfs: unmounting %s (%s), left mounted by an earlier run", found.target, found.source)
            mount.umount(found.target)
    everything = zfs.list_datasets()
    for dataset in everything:
        if dataset.type != "filesystem" or "@" not in dataset.origin:
            continue
        origin_dataset, _, origin_snapshot = dataset.origin.partition("@")
        if origin_snapshot == tag and dataset.name == clone_name(origin_dataset, tag):
            logger.warning("zfs: destroying clone %s of %s, left by an earlier run", dataset.name, dataset.origin)
            _release_clone({"name": dataset.name, "origin": dataset.origin})
    for dataset in everything:
        if dataset.type == "snapshot" and dataset.snapshot_name == tag:
            logger.warning("zfs: destroying snapshot %s, left by an earlier run", dataset.name)
            try:
                zfs.destroy(dataset.name)
            except CommandError as error:
                raise EmgBorgError(
                    f"zfs: cannot remove the leftover snapshot {dataset.name} of an earlier run ({error}); "
                    f"a new one of the same name cannot be taken until it is gone"
                )


class Zfs(SnapshotProvider):
    name = NAME
    filesystems = FSTYPES
    releasers = RELEASERS

    def take(self, run):
        return (yield from _take(run))

    def clean_stale(self, run):
        _clean_stale(run)


@hookimpl
def emg_borg_snapshot_providers():
    return [Zfs()]
