"""The one rule for "this path is that directory or lies below it"."""

from __future__ import annotations

from pathlib import PurePath


def within(path: PurePath, parent: PurePath) -> bool:
    """Whether `path` is `parent` or lies below it (by path components: `log` is not in `logbook`)."""
    return path == parent or parent in path.parents
