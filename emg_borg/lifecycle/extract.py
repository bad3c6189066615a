"""Extracting categories of an emg-borg archive: into a directory, or over the live paths.

The repository's tool writes the archive paths (the live paths) under the destination: "into
DIR" is DIR, "in place" is `/` (or the test tree standing in for it). What to extract is always
chosen by the manifest's category roots (`emg_borg.emg.categories`), so the extraction, the
dry-run listing and `emg-borg patterns` agree on every path.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from emg_borg import __version__
from emg_borg.core.backup_tool import Extracted
from emg_borg.core.files import free_name
from emg_borg.core.signals import signals_raise
from emg_borg.core.progress import PROGRESS, Throttle
from emg_borg.emg import categories as category_module
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.lifecycle import tools
from emg_borg.lifecycle.archives import Archive, Repository, select

logger = logging.getLogger(__name__)



def present(archive: Archive, selected) -> tuple:
    """The selected categories the archive holds; warns about the others, fails if none is left."""
    manifest_categories = archive.manifest.categories
    absent = category_module.missing(manifest_categories, selected)
    for category in absent:
        logger.warning("archive %s holds no %s (left out at backup time)", archive.name, category)
    kept = tuple(c for c in selected if c not in absent)
    if not kept:
        raise UsageError(f"archive {archive.name} holds none of the selected categories ({', '.join(selected)})")
    return kept


def pattern_text(archive: Archive, selected) -> str:
    """A commented borg patterns file extracting the selected categories of `archive`."""
    lines = [
        f"# borg patterns selecting {', '.join(selected)} of archive {archive.name} (emg-borg {__version__})",
        "# use: borg extract --patterns-from THIS-FILE REPOSITORY::ARCHIVE (run in the target directory)",
        *category_module.pattern_lines(archive.manifest.categories, selected),
    ]
    return "\n".join(lines) + "\n"


def plan(repository: Repository, archive: Archive, selected) -> dict[str, list[dict]]:
    """What an extraction would write, by category: the tool's own listing of the same selection."""
    manifest_categories = archive.manifest.categories
    by_category: dict[str, list[dict]] = {c: [] for c in selected}
    for item in tools.of(repository).plan(repository, archive, selected):
        category = category_module.category_of(item.path, manifest_categories)
        by_category.setdefault(category or "other", []).append(item.to_dict())
    return by_category


class Progress:
    """Turns the tool's progress messages (borg's `progress_percent`) into a progress line every few seconds."""

    def __init__(self, what: str, interval: float | None = None):
        self.what, self.throttle = what, Throttle() if interval is None else Throttle(interval)
        self.started = time.monotonic()

    def __call__(self, message: dict) -> None:
        if message.get("finished") or not self.throttle.due():
            return
        current, total = message.get("current") or 0, message.get("total") or 0
        if total:
            info = message.get("info") or [""]
            logger.log(PROGRESS, "%s: %.0f%% (%s of %s) %s", self.what, 100 * current / total, human_size(current),
                       human_size(total), info[0])
        else:
            logger.log(PROGRESS, "%s: %s", self.what, (message.get("message") or "working").strip())

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def extract(repository: Repository, archive: Archive, selected, destination: Path) -> Extracted:
    """Extract the selected categories into `destination` (which must exist). Returns the tool's
    item count and the warnings naming the paths it could not write (the caller fails on them)."""
    progress = Progress(f"extracting {', '.join(selected)} from {archive.name}")
    logger.info("extracting %s from %s into %s", ", ".join(selected), archive.name, destination)
    result = tools.of(repository).extract(repository, archive, selected, destination, progress)
    logger.info("extracted %d items in %.1f s%s", result.items, progress.elapsed(),
                f", {len(result.warnings)} with problems" if result.warnings else "")
    return result


def incomplete(result: Extracted, repository: Repository) -> str:
    """One line naming what an extraction with warnings could not write."""
    shown = "; ".join(result.warnings[:3]) + (f"; and {len(result.warnings) - 3} more" if len(result.warnings) > 3 else "")
    return f"{tools.of(repository).name} could not write {len(result.warnings)} path(s): {shown}"


def check_destination(destination: str | None, in_place: bool) -> Path | None:
    """The destination directory to extract into, checked before anything is read or written;
    None when a new directory is to be made once the archive is known."""
    if destination is None:
        return Path("/") if in_place else None
    path = Path(destination).resolve()
    if path == Path("/") and not in_place:
        raise UsageError("extracting over / replaces live files; add --in-place to mean it")
    if in_place:
        return path
    if path.exists() and not path.is_dir():
        raise UsageError(f"destination {path} is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"destination {path} is not empty; name an empty or new directory, or pass --in-place")
    return path


def new_directory(archive: Archive, base: Path | None = None) -> Path:
    """A directory name that does not exist yet: `emg-borg-ARCHIVE`, numbered if taken."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.:" else "_" for ch in archive.name)
    return free_name(base or Path.cwd(), f"emg-borg-{safe}")


@contextlib.contextmanager
def created_directory(path: Path, keep_on_error: bool):
    """Create `path` for an extraction and remove it again (with whatever was written) on failure,
    unless it existed before or `keep_on_error`."""
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        yield path
    except BaseException:
        if not existed and not keep_on_error:
            shutil.rmtree(path, ignore_errors=True)
        raise



def extract_categories(selection, categories: str, destination: str | None, in_place: bool) -> dict:
    """`emg-borg extract`: the selected categories of the selected archive into a directory (a
    new one by default, removed again on failure) or over the live paths."""
    selected = category_module.parse(categories)
    where = check_destination(destination, in_place)
    repository, archive = select(selection)
    selected = present(archive, selected)
    where = where or new_directory(archive)
    with signals_raise(), created_directory(where, keep_on_error=in_place):
        extracted = extract(repository, archive, selected, where)
    if not extracted.complete:
        raise EmgBorgError(f"extraction into {where} incomplete: {incomplete(extracted, repository)}")
    return {"archive": archive.name, "categories": list(selected), "destination": str(where), "items": extracted.items}


def extract_plan(selection, categories: str) -> dict:
    """`emg-borg extract --dry-run`: what would be extracted, by category."""
    selected = category_module.parse(categories)
    repository, archive = select(selection)
    selected = present(archive, selected)
    return {"archive": archive.name, "dry_run": True, "categories": plan(repository, archive, selected)}


def patterns_of(selection, categories: str) -> str:
    """`emg-borg patterns`: the borg patterns file selecting categories of the selected archive."""
    selected = category_module.parse(categories)
    repository, archive = select(selection)
    if tools.of(repository).name != "borg":
        raise UsageError(f"patterns prints a borg patterns file; {repository} is a {tools.of(repository).name} "
                         f"repository: use emg-borg extract (--dry-run lists what it would write)")
    return pattern_text(archive, present(archive, selected))
