"""Built-in plugin: EMG discovery and the borg roots of each selected category."""

from __future__ import annotations

from emg_borg.emg import layout as emg_layout
from emg_borg.hookspecs import hookimpl


@hookimpl
def emg_borg_discover_layout(config):
    return emg_layout.discover(config["emg"])


def _read_via(run, root, path):
    """Where borg reads `path` when it walks `root`: inside the snapshot if it covers `root`."""
    if run.snapshot is not None and run.snapshot.covers(root.path):
        return run.snapshot.real(path)
    return path


@hookimpl
def emg_borg_backup_patterns(run):
    """One `R` root per selected root, read from the snapshot when it covers the root.

    borg applies exclusions to every root, so a root nested in another selected root that borg
    would read from the same place is not listed again (the outer walk covers it); a nested root
    read from elsewhere (the snapshot), or not selected, is pruned from the outer walk only by
    its path there, which no other root shares."""
    lines = []
    selected = sorted((r for r in run.layout.roots if r.category in run.categories), key=lambda r: len(r.path.parts))
    for root in selected:
        outer = next((o for o in selected if o is not root and o.path in root.path.parents), None)
        if outer is not None and _read_via(run, outer, root.path) == run.real_path(root.path):
            continue
        lines.append(f"R {run.borg_root(root.path)}")
    for root in selected:
        for other in run.layout.roots:
            if other is root or root.path not in other.path.parents:
                continue
            inner = _read_via(run, root, other.path)
            if other.category not in run.categories or inner != run.real_path(other.path):
                lines.append(f"! pp:{inner}")
    if run.snapshot is not None:
        lines.extend(f"! pf:{path}" for path in run.snapshot.prune)
    return lines
