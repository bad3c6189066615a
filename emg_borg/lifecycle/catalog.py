"""The archives of a repository as emg-borg sees them: one `borg list`, newest first, and each
archive's manifest read when first needed (several at once when many are) and then cached
locally for good (`manifest_cache`). Only archives that carry `emg-borg/manifest.json` count.

Times: borg reports an archive's start time in local time without a zone, to the second.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging

from emg_borg.core.manifest import ARCHIVE_PATH as MANIFEST_ARCHIVE_PATH
from emg_borg.core.manifest import Manifest, ManifestVersionError
from emg_borg.external import borg
from emg_borg.lifecycle.manifest_cache import ManifestCache
from emg_borg.lifecycle.repository import Repository

logger = logging.getLogger(__name__)

READERS = 4  # manifests read at the same time when many are missing from the cache


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
            "node_id": self.manifest.get("node_id"),
            "message_id": self.manifest.get("message_id"),
            "snapshot_provider": self.manifest.get("snapshot_provider"),
            "freeze_window_ms": self.manifest.get("freeze_window_ms"),
            "dump_bytes": self.manifest.dump_bytes,
            "categories": sorted(self.manifest.get("categories") or {}),
        }


@dataclasses.dataclass(frozen=True)
class Listed:
    """An archive as `borg list` shows it."""

    name: str
    id: str
    time: datetime.datetime


def archive_time(entry: dict) -> datetime.datetime:
    """borg's start time of an archive (local, without zone) as an aware datetime, to the second."""
    naive = datetime.datetime.fromisoformat(entry.get("start") or entry["time"])
    return naive.replace(microsecond=0).astimezone()


def parse_manifest(data: bytes | str | None, name: str) -> Manifest | None:
    """The manifest read from archive `name`; None when it has none or an unreadable one. A
    format newer than this emg-borg knows raises ManifestVersionError."""
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        logger.warning("archive %s: %s is not valid JSON; skipping it", name, MANIFEST_ARCHIVE_PATH)
        return None
    return Manifest(parsed, name)


class Catalog:
    """One listing of a repository; `save()` keeps what was read for the next command."""

    def __init__(self, repository: Repository):
        self.repository = repository
        data = borg.list_repository(repository.location, env=repository.env, glob=repository.match_archives)
        entries = data["archives"]
        # Newest first; archives started within the same second keep borg's order (oldest first)
        # reversed, so the one written last still comes first.
        ordered = sorted(enumerate(entries), key=lambda item: (archive_time(item[1]), item[0]), reverse=True)
        self.listed = [Listed(e["name"], e.get("id") or e["name"], archive_time(e)) for _, e in ordered]
        self.cache = ManifestCache(data["repository"]["id"], repository.env)

    def named(self, name: str) -> Listed | None:
        return next((entry for entry in self.listed if entry.name == name), None)

    def _read(self, entry: Listed) -> str | None:
        data = borg.read_file(self.repository.location, entry.name, MANIFEST_ARCHIVE_PATH, env=self.repository.env)
        return None if data is None else data.decode("utf-8", errors="replace")

    def fetch(self, entries) -> None:
        """Read the manifests of `entries` that the cache lacks, several at a time."""
        missing = [entry for entry in dict.fromkeys(entries) if entry.id not in self.cache]
        if not missing:
            return
        if len(missing) > 1:
            logger.info("reading %d archive manifests from %s (cached for next time)", len(missing), self.repository)
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(READERS, len(missing))) as pool:
            for entry, text in zip(missing, pool.map(self._read, missing)):
                self.cache.put(entry.id, text)

    def manifest(self, entry: Listed) -> Manifest | None:
        """The archive's manifest (None: not an emg-borg archive); ManifestVersionError for a
        format newer than this emg-borg knows."""
        self.fetch([entry])
        return parse_manifest(self.cache.get(entry.id), entry.name)

    def archive(self, entry: Listed, skip_newer=True) -> Archive | None:
        """The emg-borg archive `entry`, or None; a newer manifest format is left out with a warning."""
        try:
            manifest = self.manifest(entry)
        except ManifestVersionError as error:
            if not skip_newer:
                raise
            logger.warning("%s; not listed", error)
            return None
        return None if manifest is None else Archive(entry.name, entry.time, manifest)

    def archives(self, entries=None) -> list[Archive]:
        """The emg-borg archives among `entries` (default: all), newest first."""
        entries = self.listed if entries is None else entries
        self.fetch(entries)
        return [a for a in (self.archive(entry) for entry in entries) if a is not None]

    def walk(self, entries=None):
        """The emg-borg archives among `entries`, newest first, reading manifests in growing
        batches: a choice that the newest archive satisfies reads one."""
        entries = list(self.listed if entries is None else entries)
        start, size = 0, 1
        while start < len(entries):
            batch = entries[start:start + size]
            self.fetch(batch)
            for entry in batch:
                try:
                    archive = self.archive(entry, skip_newer=False)
                except ManifestVersionError as error:
                    logger.debug("%s; skipped", error)
                    continue
                if archive is not None:
                    yield archive
                else:
                    logger.debug("archive %s has no %s; skipped", entry.name, MANIFEST_ARCHIVE_PATH)
            start, size = start + size, min(size * 2, 16)

    def save(self) -> None:
        complete = self.repository.match_archives is None
        self.cache.save([entry.id for entry in self.listed] if complete else None)
