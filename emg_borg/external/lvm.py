"""LVM: listing logical volumes, creating and removing snapshots (`lvs`, `lvcreate`, `lvremove`).

`lvs` reports in JSON (`--reportformat json`), with the fields emg-borg needs to find the LV
holding a path, to recognise its own snapshots and to see whether a snapshot overflowed.
"""

from __future__ import annotations

import dataclasses
import json
import os

from emg_borg.errors import CommandError
from emg_borg.external.execute import run

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
