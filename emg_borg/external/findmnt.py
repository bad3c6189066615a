"""findmnt: which mounted file system holds a path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from emg_borg.errors import CommandError
from emg_borg.external.execute import run


@dataclasses.dataclass(frozen=True)
class Mount:
    target: Path
    source: str
    fstype: str
    options: str = ""


def find(path) -> Mount | None:
    """The mount whose target is the longest prefix of `path` (`findmnt -T`)."""
    try:
        result = run(("findmnt", "--json", "--output", "TARGET,SOURCE,FSTYPE,OPTIONS", "--target", str(path)))
    except CommandError:
        return None
    filesystems = json.loads(result.stdout or "{}").get("filesystems", [])
    if not filesystems:
        return None
    fs = filesystems[0]
    return Mount(Path(fs["target"]), fs.get("source") or "", fs.get("fstype") or "", fs.get("options") or "")


def mounts_under(top) -> list[Path]:
    """Mount points at or below `top`, deepest first (the order to unmount them in)."""
    try:
        result = run(("findmnt", "--json", "--list", "--output", "TARGET"))
    except CommandError:
        return []
    top = Path(top)
    targets = [Path(fs["target"]) for fs in json.loads(result.stdout or "{}").get("filesystems", [])]
    inside = [t for t in targets if t == top or top in t.parents]
    return sorted(set(inside), key=lambda p: len(p.parts), reverse=True)
