"""Built-in plugin: EMG discovery and the borg roots of each selected category."""

from __future__ import annotations

from emg_borg.emg import layout as emg_layout
from emg_borg.core.paths import within
from emg_borg.hookspecs import hookimpl


@hookimpl
def emg_borg_discover_layout(config):
    return emg_layout.discover(config["emg"])


def _innermost_enclosing(root, roots):
    enclosing = [o for o in roots if o.path in root.path.parents]
    return max(enclosing, key=lambda o: len(o.path.parts)) if enclosing else None


@hookimpl
def emg_borg_backup_patterns(run):
    """One `R` root per selected root, read from the snapshot when it covers the root.

    A selected root whose innermost enclosing root is selected and read from the same place is
    covered by that walk and not listed again. Inside each walk, a nested root that is not
    selected, or is read from elsewhere (the snapshot), is pruned by its path in that walk. borg
    applies the first matching pattern to every path, roots included, so a root lying inside a
    pruned directory (a plugin's config file in an unselected bin/) gets a `+` line, and all
    `+`/`!` lines go most specific first."""
    roots = run.layout.roots
    selected = [r for r in roots if r.category in run.categories]
    listed, prunes = [], []
    for root in selected:
        enclosing = _innermost_enclosing(root, roots)
        if not (enclosing is not None and enclosing.category in run.categories
                and run.real_path(root.path, walked_from=enclosing.path) == run.real_path(root.path)):
            listed.append(root)
        for other in roots:
            if other is root or root.path not in other.path.parents:
                continue
            inner = run.real_path(other.path, walked_from=root.path)
            if other.category not in run.categories or inner != run.real_path(other.path):
                prunes.append(inner)
    rules = [(path, f"! pp:{path}") for path in prunes]
    for root in listed:
        read = run.real_path(root.path)
        if any(within(read, pruned) for pruned in prunes):
            rules.append((read, f"+ pp:{read}"))
    rules.sort(key=lambda rule: len(rule[0].parts), reverse=True)
    # A spool that `emg-borg restore` moved aside is no one's data: never archive it again.
    lines = [f"R {run.borg_root(root.path)}" for root in listed] + [f"! sh:**/*{emg_layout.MOVED_ASIDE_MARK}*"]
    lines += [line for _, line in rules]
    return lines
