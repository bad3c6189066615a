"""Finding the repository and choosing an emg-borg archive in it.

Every restore-side command names its archive the same way: `--repository` (else the first
repository of `--borgmatic-config`, else `$BORG_REPO`), then `--archive NAME`, `--archive latest`
(the default) or `--at WHEN`. Only archives that carry `emg-borg/manifest.json` count: a
repository may also hold archives of other hosts or made without emg-borg, and those cannot be
restored by category.

Times: borg reports an archive's start time in local time without a zone, to the second; WHEN is
read with python-dateutil and taken as local time unless it names a zone. An archive started at
14:00:00 is "at or before 14:00".
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import tempfile
from pathlib import Path

from dateutil import parser as date_parser

from emg_borg.core.manifest import ARCHIVE_PATH as MANIFEST_ARCHIVE_PATH
from emg_borg.core.manifest import Manifest, ManifestVersionError
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.external import borg

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Repository:
    """A borg repository and the environment its borg processes need (a passphrase taken from a
    borgmatic configuration travels here, never in argv)."""

    location: str
    env: dict | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        # borg runs in the extraction directory, so a relative local path must be made absolute;
        # `ssh://...` and scp-style `host:path` locations stay as they are.
        if ":" not in self.location:
            object.__setattr__(self, "location", os.path.abspath(self.location))

    def __str__(self) -> str:
        return self.location


@dataclasses.dataclass
class Archive:
    name: str
    time: datetime.datetime
    manifest: Manifest

    def summary(self) -> dict:
        """What `emg-borg archives` shows of an archive."""
        return {
            "name": self.name,
            "time": self.time.isoformat(timespec="seconds"),
            "created": self.manifest.get("created"),
            "hostname": self.manifest.get("hostname"),
            "message_id": self.manifest.get("message_id"),
            "snapshot_provider": self.manifest.get("snapshot_provider"),
            "freeze_window_ms": self.manifest.get("freeze_window_ms"),
            "dump_bytes": self.manifest.dump_bytes,
            "categories": sorted(self.manifest.get("categories") or {}),
        }


def _load_yaml(path: Path):
    text = path.read_text()
    try:
        from ruamel.yaml import YAML  # borgmatic's own YAML library, present wherever it is
    except ImportError:
        import yaml  # PyYAML, when borgmatic runs from elsewhere

        return yaml.safe_load(text)
    return YAML(typ="safe", pure=True).load(text)


def borgmatic_repository(path) -> Repository:
    """The first repository of a borgmatic configuration, with its passphrase settings turned into
    `BORG_PASSPHRASE`/`BORG_PASSCOMMAND` for borg unless the environment already has them."""
    path = Path(path)
    try:
        data = _load_yaml(path)
    except OSError as error:
        raise UsageError(f"cannot read borgmatic configuration {path}: {error.strerror}")
    except Exception as error:  # noqa: BLE001 - both YAML libraries raise their own error types
        raise UsageError(f"cannot parse borgmatic configuration {path}: {str(error).splitlines()[0]}")
    # borgmatic 1.x nested options in sections; 2.x keeps them at the top level.
    sections = [data or {}] + [(data or {}).get(k) or {} for k in ("location", "storage")]
    repositories = next((s["repositories"] for s in sections if s.get("repositories")), None)
    if not repositories:
        raise UsageError(f"borgmatic configuration {path} lists no repositories")
    first = repositories[0]
    location = os.path.expandvars(first["path"] if isinstance(first, dict) else str(first))
    env = None
    if not any(os.environ.get(v) for v in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD")):
        passphrase = next((s.get("encryption_passphrase") for s in sections if s.get("encryption_passphrase")), None)
        passcommand = next((s.get("encryption_passcommand") for s in sections if s.get("encryption_passcommand")), None)
        if passphrase is not None:
            env = {**os.environ, "BORG_PASSPHRASE": os.path.expandvars(str(passphrase))}
        elif passcommand is not None:
            env = {**os.environ, "BORG_PASSCOMMAND": str(passcommand)}
    return Repository(location, env)


def resolve_repository(repository: str | None = None, borgmatic_config: str | None = None) -> Repository:
    """`repository`, else the first repository of `borgmatic_config`, else `$BORG_REPO`."""
    if repository:
        return Repository(repository)
    if borgmatic_config:
        return borgmatic_repository(borgmatic_config)
    if os.environ.get("BORG_REPO"):
        return Repository(os.environ["BORG_REPO"])
    raise UsageError("no repository: pass --repository REPO or --borgmatic-config FILE, or set BORG_REPO")


def parse_when(text: str) -> datetime.datetime:
    """A point in time from `--at`: ISO 8601 or `2026-11-20 14:00`, local time unless zoned."""
    try:
        when = date_parser.parse(text)
    except (ValueError, OverflowError):
        raise UsageError(f"--at {text!r}: not a date and time (try '2026-11-20 14:00' or ISO 8601)")
    return when.astimezone() if when.tzinfo is None else when


def archive_time(entry: dict) -> datetime.datetime:
    """borg's start time of an archive (local, without zone) as an aware datetime, to the second."""
    naive = datetime.datetime.fromisoformat(entry.get("start") or entry["time"])
    return naive.replace(microsecond=0).astimezone()


def read_manifest(repository: Repository, name: str) -> Manifest | None:
    """The archive's manifest; None when it has none (not an emg-borg archive) or an unreadable
    one. A manifest of a format newer than this emg-borg knows raises EmgBorgError."""
    data = borg.read_file(repository.location, name, MANIFEST_ARCHIVE_PATH, env=repository.env)
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        logger.warning("archive %s: %s is not valid JSON; skipping it", name, MANIFEST_ARCHIVE_PATH)
        return None
    return Manifest(parsed, name)


def _newest_first(repository: Repository) -> list[tuple[str, datetime.datetime]]:
    """Archives by start time, newest first; archives started within the same second keep borg's
    order (oldest first) reversed, so the one written last still comes first."""
    entries = borg.list_archives(repository.location, env=repository.env)
    ordered = sorted(enumerate(entries), key=lambda item: (archive_time(item[1]), item[0]), reverse=True)
    return [(entry["name"], archive_time(entry)) for _, entry in ordered]


def emg_archives(repository: Repository) -> list[Archive]:
    """Every emg-borg archive of the repository, newest first (one borg call per archive)."""
    found = []
    for name, time in _newest_first(repository):
        try:
            manifest = read_manifest(repository, name)
        except ManifestVersionError as error:
            logger.warning("%s; not listed", error)
            continue
        if manifest is not None:
            found.append(Archive(name, time, manifest))
    return found


RUN_ARCHIVES_SEARCHED = 10


def archive_of_run(repository: Repository, run_id: str, newest: int = RUN_ARCHIVES_SEARCHED) -> Archive | None:
    """The archive made by emg-borg run `run_id` (its manifest's `run_id`), looked for among the
    `newest` archives only: a run's archive is among the newest when its after-backup asks, and
    each archive looked at costs a borg call. None when none of them is that run's. A borg
    failure (no passphrase, repository unreachable) raises EmgBorgError."""
    for name, time in _newest_first(repository)[:newest]:
        try:
            manifest = read_manifest(repository, name)
        except ManifestVersionError:
            continue  # a newer emg-borg's archive is not this run's
        if manifest is not None and manifest.get("run_id") == run_id:
            return Archive(name, time, manifest)
    return None


@dataclasses.dataclass(frozen=True)
class Selection:
    """How a restore-side command names its archive (`--repository`, `--borgmatic-config`,
    `--archive`, `--at`)."""

    repository: str | None = None
    borgmatic_config: str | None = None
    archive: str | None = None
    at: str | None = None


def select(selection: Selection) -> tuple[Repository, Archive]:
    """The repository and the archive that the selection names."""
    # Parse what can be parsed before asking borg anything, so bad input changes nothing.
    when = parse_when(selection.at) if selection.at else None
    repository = resolve_repository(selection.repository, selection.borgmatic_config)
    wanted = selection.archive
    candidates = _newest_first(repository)
    if wanted and wanted != "latest":
        match = next(((n, t) for n, t in candidates if n == wanted), None)
        if match is None:
            raise UsageError(f"archive {wanted!r} not found in {repository}")
        manifest = read_manifest(repository, wanted)
        if manifest is None:
            raise UsageError(f"archive {wanted!r} has no {MANIFEST_ARCHIVE_PATH}: it was not made by emg-borg")
        return repository, Archive(wanted, match[1], manifest)
    if when is not None:
        earlier = [(n, t) for n, t in candidates if t <= when]
        if not earlier:
            first = f"; the first archive is from {candidates[-1][1].isoformat(timespec='seconds')}" if candidates else ""
            raise UsageError(f"no archive in {repository} at or before {when.isoformat(timespec='seconds')}{first}")
        candidates = earlier
    for name, time in candidates:
        manifest = read_manifest(repository, name)
        if manifest is not None:
            logger.info("archive %s (%s, message id %s)", name, time.isoformat(timespec="seconds"), manifest.get("message_id"))
            return repository, Archive(name, time, manifest)
        logger.debug("archive %s has no %s; skipped", name, MANIFEST_ARCHIVE_PATH)
    where = f" at or before {when.isoformat(timespec='seconds')}" if when else ""
    raise UsageError(f"no emg-borg archive in {repository}{where} (archives without {MANIFEST_ARCHIVE_PATH} do not count)")


@contextlib.contextmanager
def patterns_file(lines, directory=None):
    """A private temporary borg patterns file holding `lines`, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="emg-borg-patterns-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)

