"""Which mounted volume holds SPOOLDIR, and which other volumes a snapshot of it would miss.

Shared by the volume snapshot plugins (`zfs`, `lvm`); not a plugin itself, so it is not in
`DEFAULT_PLUGINS`.

A snapshot of one volume (a ZFS dataset, an LVM logical volume) shows every other file system
mounted below it as an empty directory. That matters only where an archived root read from the
snapshot meets such a mount: a mount inside the root (the spool's `leveldb` on a volume of its
own) or a mount holding a root (the snapshot is of `/`, a referenced file lives on `/srv`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emg_borg.core.paths import within
from emg_borg.external import findmnt


@dataclasses.dataclass
class Nested:
    """Mounts strictly below a snapshot's origin that archived roots meet, parents first."""

    in_roots: list[findmnt.Mount]  # inside an archived root: the root would miss their content
    holding_roots: list[findmnt.Mount]  # holding an archived root: the root is not on the origin


def nested_mounts(run, origin: Path) -> Nested:
    roots = [r.path for r in run.layout.roots if r.category in run.categories and within(r.path, origin)]
    in_roots, holding = {}, {}
    for found in findmnt.all_mounts():
        if found.target == origin or origin not in found.target.parents:
            continue
        if within(found.target, run.runtime.root):
            continue  # emg-borg's own snapshot views (check_runtime_dir keeps them out of every root)
        if any(within(found.target, root) for root in roots):
            in_roots[found.target] = found
        elif any(within(root, found.target) for root in roots):
            holding[found.target] = found

    def parents_first(mounts: dict) -> list[findmnt.Mount]:
        return sorted(mounts.values(), key=lambda m: len(m.target.parts))

    return Nested(parents_first(in_roots), parents_first(holding))


def view_path(run, origin: Path) -> Path:
    """The stable path where a snapshot of the volume mounted at `origin` is made visible:
    `<runtime_dir>/snapshots/<origin>`, the same on every run so borg's files cache hits."""
    return run.runtime.snapshots / str(origin).lstrip("/")
