"""LVM: listing logical volumes, creating and removing snapshots (`lvs`, `lvcreate`, `lvremove`).

`lvs` reports in JSON (`--reportformat json`), with the fields emg-borg needs to find the LV
holding a path, to recognise its own snapshots and to see whether a snapshot overflowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external.execute import run

# LVM's name rules (lvm(8), "VALID NAMES"): letters, digits and `+_.-`, not starting with `-`,
# at most 127 characters; `.` and `..` and names starting with `snapshot` or `pvmove` or holding
# one of LVM's internal suffixes are reserved. The device-mapper name `<vg>-<lv>` (each `-`
# doubled) must fit in 127 characters too.
NAME_MAX = 127
VALID_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
RESERVED_PREFIXES = ("snapshot", "pvmove")
RESERVED_PARTS = ("_cdata", "_cmeta", "_corig", "_iorig", "_imeta", "_mimage", "_mlog", "_pmspare", "_rimage",
                  "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")

FIELDS = ("lv_name", "vg_name", "lv_path", "lv_dm_path", "lv_attr", "origin", "data_percent")


@dataclasses.dataclass(frozen=True)
class LogicalVolume:
    lv_name: str
    vg_name: str
    lv_path: str
    lv_dm_path: str
    lv_attr: str
    origin: str
    data_percent: str

    @property
    def full_name(self) -> str:
        """`vg/lv`, the name every LVM command accepts."""
        return f"{self.vg_name}/{self.lv_name}"

    @property
    def is_snapshot(self) -> bool:
        # lv_attr's first character is the volume type: s = snapshot, S = invalid snapshot.
        return self.lv_attr[:1] in ("s", "S")

    @property
    def invalid(self) -> bool:
        """The snapshot overflowed or was dropped: its fifth lv_attr character (state) is `I`
        (invalid snapshot) or `S` (invalid suspended snapshot), or it is full."""
        return self.lv_attr[4:5] in ("I", "S") or self.lv_attr[:1] == "S" or self.percent_full >= 100

    @property
    def percent_full(self) -> float:
        try:
            return float(self.data_percent)
        except ValueError:
            return 0.0

    def has_device(self, device: str) -> bool:
        """Whether `device` (as findmnt shows a mount's source) is this LV."""
        if device in (self.lv_path, self.lv_dm_path):
            return True
        real = os.path.realpath(device)
        return any(path and os.path.exists(path) and os.path.realpath(path) == real for path in (self.lv_path, self.lv_dm_path))


def dm_name(vg_name: str, lv_name: str) -> str:
    """The device-mapper name of `vg/lv`: `-` doubled in each part, joined by `-`."""
    return f"{vg_name.replace('-', '--')}-{lv_name.replace('-', '--')}"


def check_new_name(vg_name: str, lv_name: str) -> None:
    """Raise EmgBorgError naming the rule when LVM would refuse `lv_name` as a new LV of `vg_name`."""
    problem = None
    if not VALID_NAME.fullmatch(lv_name) or lv_name in (".", ".."):
        problem = "only letters, digits and +_.- are allowed, and not a leading -"
    elif len(lv_name) > NAME_MAX:
        problem = f"{len(lv_name)} characters, LVM allows {NAME_MAX}"
    elif len(dm_name(vg_name, lv_name)) > NAME_MAX:
        problem = f"its device-mapper name {dm_name(vg_name, lv_name)} is longer than {NAME_MAX} characters"
    elif lv_name.startswith(RESERVED_PREFIXES) or any(part in lv_name for part in RESERVED_PARTS):
        problem = "LVM reserves that prefix or suffix for its internal volumes"
    if problem:
        raise EmgBorgError(f"lvm: cannot name a logical volume {vg_name}/{lv_name}: {problem}")


def logical_volumes(name: str | None = None) -> list[LogicalVolume]:
    """Every logical volume, or only `name` (`vg/lv`; empty when it does not exist)."""
    argv = ("lvs", "--reportformat", "json", "--options", ",".join(FIELDS)) + ((name,) if name else ())
    result = run(argv, check=name is None)
    try:
        reports = json.loads(result.stdout or "{}").get("report", [])
    except ValueError:
        if name is not None and result.returncode != 0:
            return []
        raise CommandError(f"lvs printed no JSON report: {result.stdout[:200]!r}")
    return [
        LogicalVolume(**{field: str(lv.get(field) or "") for field in FIELDS})
        for report in reports for lv in report.get("lv", [])
    ]


def create_snapshot(origin: str, name: str, size: str) -> None:
    """`lvcreate --snapshot` of `origin` (`vg/lv`). `size` with a `%` is given as extents
    (`10%ORIGIN`), otherwise as a size (`2G`). The snapshot is writable because ext4 replays its
    journal (orphan recovery) when a snapshot of a mounted file system is mounted; it is mounted
    read-only all the same."""
    argv = ("lvcreate", "--snapshot", "--permission", "rw", "--extents" if "%" in size else "--size", size,
            "--name", name, origin)
    run(argv, what=f"lvcreate --snapshot of {origin}")


def remove(name: str) -> None:
    """`lvremove --force vg/lv` (--force: no interactive confirmation)."""
    run(("lvremove", "--force", name), what=f"lvremove {name}")
