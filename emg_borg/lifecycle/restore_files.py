"""Restore: the spool and configuration files put back over the live paths.

An existing spool is moved aside first, so old and restored queue files never mix; overwritten
configuration files are named; paths the tool could not write are collected, and make the restore
incomplete (the database is then not loaded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from emg_borg.core.files import free_name
from emg_borg.core.run import RestoreRun
from emg_borg.emg import categories as category_module
from emg_borg.emg import layout as emg_layout
from emg_borg.lifecycle import extract as extraction
from emg_borg.lifecycle import tools

logger = logging.getLogger(__name__)

ASIDE_MARK = emg_layout.MOVED_ASIDE_MARK


def existing_config_files(restore: RestoreRun) -> list[Path]:
    """The configuration files an extraction is about to overwrite."""
    items = extraction.plan(restore.repository, restore.archive, ("config",)).get("config", [])
    return [restore.live(item["path"]) for item in items
            if item.get("type") == "-" and restore.live(item["path"]).is_file()]


def restore_files(restore: RestoreRun, files: tuple) -> None:
    """Extract the file categories over the live paths (under the target)."""
    if restore.dry_run:
        for category, items in extraction.plan(restore.repository, restore.archive, files).items():
            restore.done(f"would extract {category}: {len(items)} items")
        return
    if "data" in files:
        for root in restore.manifest["categories"].get("data", []):
            move_aside(restore, restore.live(root))
    overwritten = existing_config_files(restore) if "config" in files else []
    extracted = extraction.extract(restore.repository, restore.archive, files, restore.target)
    roots = category_module.selected_roots(restore.manifest["categories"], files)
    restore.done(f"extracted {', '.join(files)} ({extracted.items} items) to "
                 f"{', '.join(str(restore.live(r)) for r in roots)}")
    for warning in extracted.warnings:
        restore.unwritten.append(warning)
        restore.todo(f"NOT RESTORED ({tools.of(restore.repository).name} could not write it; fix the cause and "
                     f"extract it again): {warning}")
    unwritten = {warning.split(":", 1)[0] for warning in extracted.warnings}
    replaced = [str(path) for path in overwritten if str(path.relative_to(restore.target)) not in unwritten]
    if replaced:
        restore.done(f"overwrote {len(replaced)} existing configuration files with the archived ones (their previous "
                     f"content is not kept): {', '.join(replaced)}")


def move_aside(restore: RestoreRun, path: Path) -> None:
    """Move an existing, non-empty spool out of the way, so that the restored spool is exactly
    the archived one (stale queue or LevelDB files mixed into it would corrupt it).

    The old spool goes to the sibling `<spool>.emg-borg-before-restore-<timestamp>`: with the
    vendor's default SPOOLDIR (EMGDIR/spool) that lies inside EMGDIR, so the name carries
    emg-borg's mark, which the backup side excludes from every root. A mount point cannot be
    renamed: its old content goes to the hidden `<spool>/.emg-borg-before-restore-<timestamp>`
    instead. Earlier restores' directories stay where they are."""
    if not path.is_dir():
        return
    children = [child for child in path.iterdir() if not child.name.startswith(ASIDE_MARK)]
    if not children:
        return
    if os.path.ismount(path):
        aside = free_name(path, ASIDE_MARK, stamp=True)
        aside.mkdir(mode=0o700)
        for child in children:
            child.rename(aside / child.name)
    else:
        aside = free_name(path.parent, f"{path.name}{ASIDE_MARK}", stamp=True)
        path.rename(aside)
    logger.info("moved the existing spool %s aside to %s", path, aside)
    restore.done(f"moved the existing {path} aside to {aside}")
    restore.todo(f"remove {aside} once EMG runs well")


def note_live_spool(restore: RestoreRun) -> None:
    """The spool is not being restored (--skip-data, or a selection without data): say what emgd
    will find there."""
    spool = restore.live(restore.layout.spooldir)
    if spool.is_dir() and any(child.name != "seqno" for child in spool.iterdir()):
        restore.done(f"left the live spool {spool} as it is (data not restored): emgd keeps its queues, delivery "
                     f"reports, SAT pool and keyword sessions")
    else:
        restore.done(f"restored no spool and there is none at {spool} (data not restored): emgd recreates empty "
                     f"queues, delivery reports, SAT pool and keyword sessions")
