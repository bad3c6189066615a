"""Built-in plugin: the `lvm` snapshot provider.

The logical volume mounted at the longest mount point containing SPOOLDIR gets a snapshot LV
`<lv>_<tag>` (`lvcreate --snapshot`, `[snapshot] lvm_snapshot_size`, default `10%ORIGIN`), where
`<tag>` is the installation's `instance_tag` (`emg-borg-<8 hex digits>` of its runtime
directory), so two EMG instances whose spools share an LV never take or remove each other's
snapshot. It is mounted read-only at the stable path `<runtime_dir>/snapshots/<mount point>` (`nouuid` for XFS,
which refuses a second mount of the same file system UUID otherwise).

An LVM snapshot is copy-on-write space of a fixed size: when emgd rewrites more of the volume
than that during the backup, the snapshot becomes invalid and everything borg read from it is
garbage, silently. So before the snapshot is removed its state is read with `lvs`, and an
overflow becomes a loud failure of `after-backup` naming the archive that must not be trusted.

Other file systems mounted inside an archived root would be empty in the snapshot, and LVM
cannot snapshot several volumes in one instant: that is refused. Archived roots that lie on other
volumes below the snapshot's origin (the snapshot is of `/`, a referenced file is on `/srv`) are
read live where they are.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from emg_borg.config import Option
from emg_borg.core.snapshot import Resource, Snapshot, SnapshotProvider
from emg_borg.errors import EmgBorgError
from emg_borg.external import findmnt, lvm, mount
from emg_borg.hookspecs import hookimpl
from emg_borg.plugins import volumes

logger = logging.getLogger(__name__)
NAME = "lvm"


def snapshot_lv_name(origin_lv: str, tag: str) -> str:
    """This installation's snapshot of the LV `origin_lv` (its name within the VG): `<lv>_<tag>`."""
    return f"{origin_lv}_{tag}"


def _snapshot_size(value):
    # lvcreate --extents N%{ORIGIN,VG,FREE,PVS} or --size N[unit]
    if re.fullmatch(r"\d+(\.\d+)?%(ORIGIN|VG|FREE|PVS)|\d+(\.\d+)?[bBsSkKmMgGtTpPeE]?", value):
        return None
    return f"expected e.g. \"10%ORIGIN\" or \"2G\"; got {value!r}"


@hookimpl
def emg_borg_config_tables():
    return {"snapshot": {
        "lvm_snapshot_size": Option(str, "10%ORIGIN", "lvcreate --extents (with %) or --size for LVM snapshots.",
                                    check=_snapshot_size),
    }}


def _volume_holding(path) -> tuple[findmnt.Mount, lvm.LogicalVolume] | None:
    found = findmnt.find(path)
    if found is None or not found.source.startswith("/dev/"):
        return None
    for lv in lvm.logical_volumes():
        if lv.has_device(found.source) and not lv.is_snapshot:
            return found, lv
    return None


def _claims(run) -> bool:
    try:
        return _volume_holding(run.layout.spooldir) is not None
    except EmgBorgError as error:  # no LVM tools, or no LVM here at all
        logger.debug("lvm: not an LVM volume (%s)", error)
        return False


def _spool_volume(run) -> tuple[findmnt.Mount, lvm.LogicalVolume]:
    held = _volume_holding(run.layout.spooldir)
    if held is None:
        found = findmnt.find(run.layout.spooldir)
        raise EmgBorgError(
            f"snapshot provider lvm: SPOOLDIR {run.layout.spooldir} is not on an LVM logical volume "
            f"({found.source + ' at ' + str(found.target) if found else 'no file system found'}); "
            f"set [snapshot] provider to match its file system"
        )
    return held


def _take(run):
    spool, origin = _spool_volume(run)
    nested = volumes.nested_mounts(run, spool.target)
    if nested.in_roots:
        found = ", ".join(f"{m.target} ({m.source})" for m in nested.in_roots)
        raise EmgBorgError(
            f"snapshot provider lvm: the snapshot of {origin.full_name} would show {found} empty: another volume "
            f"is mounted inside an archived root, and LVM cannot snapshot two volumes in one instant"
        )
    size = run.config["snapshot"]["lvm_snapshot_size"]
    lv_name = snapshot_lv_name(origin.lv_name, run.runtime.instance_tag)
    lvm.check_new_name(origin.vg_name, lv_name)
    snapshot = f"{origin.vg_name}/{lv_name}"
    yield Resource("snapshot", {"name": snapshot, "origin": origin.full_name},
                   lambda: lvm.create_snapshot(origin.full_name, lv_name, size))
    created = lvm.logical_volumes(snapshot)
    if not created:
        raise EmgBorgError(f"lvm: lvcreate reported success but lvs does not list {snapshot}")
    device = created[0].lv_path
    where = volumes.view_path(run, spool.target)
    options = ("ro", "nouuid") if spool.fstype == "xfs" else ("ro",)
    yield Resource("mount", {"target": where, "device": device}, lambda: mount.mount(device, where, options=options))
    logger.info("lvm: snapshot %s (%s) of %s, mounted read-only at %s", snapshot, size, spool.target, where)
    return Snapshot(
        provider=NAME, origin=spool.target, base=run.runtime.snapshots, name=snapshot, device=device,
        details={"origin_lv": origin.full_name, "size": size, "fstype": spool.fstype, "mount": str(where)},
        holes=[m.target for m in nested.holding_roots],
    )


def _mounted_at(target: Path) -> bool:
    found = findmnt.find(target)
    return found is not None and found.target == target


def _check_overflow(entry: dict) -> str | None:
    """The problem that makes the archive untrustworthy: the snapshot overflowed or became
    invalid while borg read it. `{archive}` is filled in by the core with the run's archive."""
    if entry["kind"] != "snapshot":
        return None
    found = lvm.logical_volumes(entry["name"])
    if not found or not found[0].invalid:
        return None
    lv = found[0]
    logger.warning("lvm: snapshot %s overflowed (lv_attr %s, %s%% full)", entry["name"], lv.lv_attr, lv.data_percent)
    return (
        f"LVM snapshot {entry['name']} of {entry['origin']} overflowed during the backup (lv_attr {lv.lv_attr}, "
        f"{lv.data_percent or '?'}% full): DO NOT TRUST {{archive}}; its spool was read from an invalid "
        f"snapshot. Delete that archive and give the snapshot more room ([snapshot] lvm_snapshot_size)"
    )


def _release_mount(entry: dict) -> None:
    target = Path(entry["target"])
    if _mounted_at(target):
        mount.umount(target)
        logger.info("lvm: unmounted %s", target)


def _release_snapshot(entry: dict) -> None:
    found = lvm.logical_volumes(entry["name"])
    if not found:
        return  # already gone
    if not found[0].is_snapshot or found[0].origin != entry["origin"].split("/", 1)[1]:
        raise EmgBorgError(f"{entry['name']} is not the snapshot of {entry['origin']} that emg-borg made; left alone")
    lvm.remove(entry["name"])
    logger.info("lvm: removed snapshot %s", entry["name"])


RELEASERS = {"mount": _release_mount, "snapshot": _release_snapshot}


def _clean_stale(run):
    """Remove what a crashed run of this installation left and the ledger does not list: snapshots
    `<lv>_<tag>` of an LV `<lv>`, where `<tag>` is this installation's own `instance_tag`, unmounted
    first wherever they are mounted. Another installation's (another tag) are left alone."""
    _spool_volume(run)  # SPOOLDIR not on LVM: say that, before removing anything
    tag = run.runtime.instance_tag
    for lv in lvm.logical_volumes():
        if not (lv.is_snapshot and lv.origin and lv.lv_name == snapshot_lv_name(lv.origin, tag)):
            continue
        for found in sorted(findmnt.all_mounts(), key=lambda m: len(m.target.parts), reverse=True):
            if lv.has_device(found.source):
                logger.warning("lvm: unmounting %s (%s), left mounted by an earlier run", found.target, lv.full_name)
                mount.umount(found.target)
        if lv.invalid:
            # Whatever borg read from it for that run is garbage; its ledger is gone, so the run
            # cannot be named, but the operator must hear it.
            logger.error(
                "lvm: the leftover snapshot %s had overflowed (lv_attr %s, %s%% full): DO NOT TRUST the archive the "
                "crashed earlier run made, if borg wrote one", lv.full_name, lv.lv_attr, lv.data_percent or "?",
            )
        logger.warning("lvm: removing snapshot %s of %s/%s, left by an earlier run", lv.full_name, lv.vg_name, lv.origin)
        lvm.remove(lv.full_name)


class Lvm(SnapshotProvider):
    """Asked last for `auto` (`claim_order`), so a file system's own snapshots (Btrfs on an LV)
    are preferred to the volume manager's; claims any other file system on a logical volume."""

    name = NAME
    claim_order = 10
    releasers = RELEASERS

    def claims(self, run, filesystem):
        return filesystem not in ("btrfs", "zfs", "fuse.zfs") and _claims(run)

    def take(self, run):
        return (yield from _take(run))

    def check(self, run, entry):
        return _check_overflow(entry)

    def clean_stale(self, run):
        _clean_stale(run)


@hookimpl
def emg_borg_snapshot_providers():
    return [Lvm()]
