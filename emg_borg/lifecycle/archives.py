"""Finding the repository and choosing an emg-borg archive in it.

Every restore-side command names its archive the same way: `--repository` (else the first
repository of `--borgmatic-config`, else `$BORG_REPO`; see `repository`), then `--archive NAME`,
`--archive latest` (the default) or `--at WHEN`, among the archives of this node unless `--host`,
`--node` or `--any-node` says otherwise (see `nodes`). Only archives that carry
`emg-borg/manifest.json` count: a repository may also hold archives of other hosts or made
without emg-borg, and those cannot be restored by category. One listing by the repository's tool
(`borg list`, `restic snapshots`) finds the archives; their manifests come from a local cache, so
the cost does not grow with their number (`catalog`).

Times: WHEN is read with python-dateutil and taken as local time unless it names a zone. An
archive started at 14:00:00 is "at or before 14:00".
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

from dateutil import parser as date_parser

from emg_borg.core.manifest import ARCHIVE_PATH as MANIFEST_ARCHIVE_PATH
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.lifecycle import tools
from emg_borg.lifecycle.catalog import Archive, Catalog
from emg_borg.lifecycle.nodes import Node, NodeChoice, choose, listed, node_choice
from emg_borg.lifecycle.repository import Repository, borgmatic_repositories, borgmatic_repository, resolve_repository

__all__ = ["Archive", "Node", "NodeChoice", "Repository", "Selection", "archive_of_run", "borgmatic_repository",
           "emg_archives", "name_run_archive", "node_choice", "parse_when", "resolve_repository", "select"]

logger = logging.getLogger(__name__)


def parse_when(text: str) -> datetime.datetime:
    """A point in time from `--at`: ISO 8601 or `2026-11-20 14:00`, local time unless zoned."""
    try:
        when = date_parser.parse(text)
    except (ValueError, OverflowError):
        raise UsageError(f"--at {text!r}: not a date and time (try '2026-11-20 14:00' or ISO 8601)")
    return when.astimezone() if when.tzinfo is None else when


def emg_archives(repository: Repository, nodes: NodeChoice | None = None) -> list[Archive]:
    """Every emg-borg archive of the repository, newest first (of the nodes `nodes` names, when
    it names some)."""
    catalog = Catalog(repository)
    try:
        return listed(catalog.archives(), nodes or NodeChoice())
    finally:
        catalog.save()


RUN_ARCHIVES_SEARCHED = 10


def archive_of_run(repository: Repository, run_id: str, newest: int = RUN_ARCHIVES_SEARCHED) -> Archive | None:
    """The archive made by emg-borg run `run_id` (its manifest's `run_id`), looked for among the
    `newest` archives only: a run's archive is among the newest when its after-backup asks. None
    when none of them is that run's. A borg failure (no passphrase, repository unreachable)
    raises EmgBorgError."""
    catalog = Catalog(repository)
    try:
        return next((a for a in catalog.walk(catalog.listed[:newest]) if a.manifest.get("run_id") == run_id), None)
    finally:
        catalog.save()


def name_run_archive(which: str, run_id: str, started: str, repository: str | None, borgmatic_config: str | None,
                     tool: str | None = None) -> str:
    """Name run `run_id`'s archive in `repository`, or in every repository of `borgmatic_config`
    (one run, one consistency point, one archive in each); `which` names the run when an archive
    cannot be looked up."""
    try:
        if borgmatic_config and not repository:
            repositories = borgmatic_repositories(borgmatic_config)
        else:
            repositories = [resolve_repository(repository, borgmatic_config, tool)]
    except EmgBorgError as error:
        return f"{which} (the repositories could not be read from {borgmatic_config}: {error})"
    named = []
    for where in repositories:
        try:
            found = archive_of_run(where, run_id)
        except (EmgBorgError, ValueError, KeyError, OSError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            named.append(f"{which} in {where} (the archive could not be looked up: {reason})")
            continue
        named.append(f"{which}, if {tools.of(where).name} wrote one to {where}" if found is None
                     else f"archive {where}::{found.name} (emg-borg run {run_id}, started {started})")
    return " and ".join(named)


@dataclasses.dataclass(frozen=True)
class Selection:
    """How a restore-side command names its archive (`--repository`, `--borgmatic-config`,
    `--archive`, `--at`, and the node: `--host`, `--node`, `--any-node`)."""

    repository: str | None = None
    borgmatic_config: str | None = None
    archive: str | None = None
    at: str | None = None
    nodes: NodeChoice = NodeChoice()
    tool: str | None = None  # [backup] tool of the configuration (None: borg, or restic by RESTIC_REPOSITORY)


def select(selection: Selection) -> tuple[Repository, Archive]:
    """The repository and the archive that the selection names."""
    # Parse what can be parsed before asking borg anything, so bad input changes nothing.
    when = parse_when(selection.at) if selection.at else None
    repository = resolve_repository(selection.repository, selection.borgmatic_config, selection.tool)
    catalog = Catalog(repository)
    try:
        return repository, _select(catalog, selection.archive, when, selection.nodes)
    finally:
        catalog.save()


def _select(catalog: Catalog, wanted: str | None, when, nodes: NodeChoice) -> Archive:
    repository = catalog.repository
    if wanted and wanted != "latest":
        entry = catalog.named(wanted)
        if entry is None:
            among = f" among the archives named {repository.match_archives}" if repository.match_archives else ""
            raise UsageError(f"archive {wanted!r} not found in {repository}{among}")
        archive = catalog.archive(entry, skip_newer=False)
        if archive is None:
            raise UsageError(f"archive {wanted!r} has no {MANIFEST_ARCHIVE_PATH}: it was not made by emg-borg")
        return archive
    candidates = catalog.listed
    if when is not None:
        candidates = [entry for entry in candidates if entry.time <= when]
        if not candidates:
            first = (f"; the first archive is from {catalog.listed[-1].time.isoformat(timespec='seconds')}"
                     if catalog.listed else "")
            raise UsageError(f"no archive in {repository} at or before {when.isoformat(timespec='seconds')}{first}")
    archive = choose(catalog, candidates, nodes)
    if archive is None:
        where = f" at or before {when.isoformat(timespec='seconds')}" if when else ""
        raise UsageError(f"no emg-borg archive in {repository}{where} (archives without {MANIFEST_ARCHIVE_PATH} "
                         f"do not count)")
    logger.info("archive %s (%s, %s, message id %s)", archive.name, archive.time.isoformat(timespec="seconds"),
                archive.manifest.get("hostname"), archive.manifest.get("message_id"))
    return archive
