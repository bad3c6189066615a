"""Which archive paths belong to which category, and the borg patterns selecting categories.

An archive's manifest lists, per category, the archive-relative roots it holds (`etc/emg` for
config, `var/spool/emg` for data, `emg-borg/mysql` for the database dump, ...). Roots nest: the
vendor default puts the logs in `etc/emg/log`, inside EMGDIR. As at backup time, a path belongs to
the category of the longest root containing it, so `etc/emg/log/general` is a log file even
though `etc/emg` is configuration.

A selection of categories becomes a borg patterns file. Its `R` lines are the selected roots not
already inside another selected root: borg treats them as the paths to extract, so nothing
outside them is matched (and no unselected file's content is fetched from the repository). Its
`+`/`!` lines, longest root first, decide each nested root where its selection differs from the
root around it; borg takes the first matching line, which is the longest root's.
"""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath

from emg_borg.core.paths import within
from emg_borg.errors import UsageError

CATEGORIES = ("config", "data", "database", "logs", "executables")
DEFAULT_SELECTION = "config,data,database"


def parse(text: str) -> tuple:
    """The categories named in a comma-separated list (`all` for every one), in canonical order."""
    names = [name.strip().lower() for name in (text or "").split(",") if name.strip()]
    if not names:
        raise UsageError(f"no categories given; choose from {', '.join(CATEGORIES)} or all")
    unknown = [name for name in names if name not in CATEGORIES and name != "all"]
    if unknown:
        raise UsageError(f"unknown category {unknown[0]!r}; choose from {', '.join(CATEGORIES)} or all")
    if "all" in names:
        return CATEGORIES
    return tuple(c for c in CATEGORIES if c in names)


def _roots(manifest_categories: dict) -> list[tuple[str, PurePosixPath]]:
    return [
        (category, PurePosixPath(root.strip("/")))
        for category, roots in manifest_categories.items()
        for root in roots
    ]


def innermost_category(path: PurePath, roots) -> str | None:
    """The category of the longest root containing `path`, from (category, root) pairs; None when
    no root contains it. The one rule deciding a path's category, live or archived."""
    best = None
    for category, root in roots:
        if within(path, root) and (best is None or len(root.parts) > len(best[1].parts)):
            best = (category, root)
    return best[0] if best else None


def category_of(path: str, manifest_categories: dict) -> str | None:
    """The category of an archive path, by the manifest's roots."""
    return innermost_category(PurePosixPath(path.strip("/")), _roots(manifest_categories))


def selected_roots(manifest_categories: dict, selected) -> list[str]:
    """The selected roots that no other selected root contains: the paths borg extracts."""
    chosen = [root for category, root in _roots(manifest_categories) if category in selected]
    tops = [root for root in chosen if not any(other != root and within(root, other) for other in chosen)]
    return [str(root) for root in dict.fromkeys(tops)]


def pattern_lines(manifest_categories: dict, selected) -> list[str]:
    """borg pattern lines (no comments) extracting exactly the selected categories."""
    tops = selected_roots(manifest_categories, selected)
    if not tops:
        # Without any root borg would extract the whole archive, the opposite of "nothing".
        raise UsageError(f"the archive holds none of the selected categories ({', '.join(selected)})")
    roots = _roots(manifest_categories)
    lines = []
    for category, root in sorted(roots, key=lambda item: len(item[1].parts), reverse=True):
        enclosing = [r for r in roots if r[1] != root and within(root, r[1])]
        if not enclosing:
            continue
        parent_category = max(enclosing, key=lambda r: len(r[1].parts))[0]
        if str(root) in tops:
            # An `R` root is selected by being a root; no selected root encloses it, so no `!` line
            # can catch it first. A `+` line for it too would never match and make borg warn ("never
            # matched") and exit 1.
            continue
        if (category in selected) != (parent_category in selected):
            lines.append(f"{'+' if category in selected else '!'} pp:{root}")
    lines.extend(f"R {root}" for root in tops)
    return list(dict.fromkeys(lines))


def missing(manifest_categories: dict, selected) -> list[str]:
    """Selected categories the archive does not hold (excluded at backup time)."""
    return [category for category in selected if not manifest_categories.get(category)]
