"""findmnt: which mounted file system holds a path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from emg_borg.errors import CommandError
from emg_borg.external.execute import run

OUTPUT = "TARGET,SOURCE,FSTYPE,OPTIONS"


@dataclasses.dataclass(frozen=True)
class Mount:
    target: Path
    source: str
    fstype: str
    options: str = ""


def _mounts(argv: tuple) -> list[Mount]:
    try:
        result = run(argv)
    except CommandError:
        return []
    return [
        Mount(Path(fs["target"]), fs.get("source") or "", fs.get("fstype") or "", fs.get("options") or "")
        for fs in json.loads(result.stdout or "{}").get("filesystems", [])
    ]


def find(path) -> Mount | None:
    """The mount whose target is the longest prefix of `path` (`findmnt -T`)."""
    found = _mounts(("findmnt", "--json", "--output", OUTPUT, "--target", str(path)))
    return found[0] if found else None


def all_mounts() -> list[Mount]:
    """Every mounted file system, in the order of the mount table."""
    return _mounts(("findmnt", "--json", "--list", "--output", OUTPUT))


def mounts_under(top) -> list[Mount]:
    """Mounts at or below `top`, deepest first (the order to unmount them in)."""
    top = Path(top)
    inside = {m.target: m for m in all_mounts() if m.target == top or top in m.target.parents}
    return sorted(inside.values(), key=lambda m: len(m.target.parts), reverse=True)


def is_mount_point(path) -> bool:
    """Whether something is mounted exactly at `path` (bind mounts included)."""
    path = Path(path)
    return any(m.target == path for m in all_mounts())
