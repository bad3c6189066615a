"""The archives of a repository as emg-borg sees them: one listing by the repository's tool
(`borg list`, `restic snapshots`), newest first, and each archive's manifest read when first
needed (several at once when many are) and then cached locally for good (`manifest_cache`).
Only archives that carry `emg-borg/manifest.json` count.

Times are the tool's start times, to the second.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging

from emg_borg.core.backup_tool import Listed, Repository
from emg_borg.core.manifest import ARCHIVE_PATH as MANIFEST_ARCHIVE_PATH
from emg_borg.core.manifest import Manifest, ManifestVersionError
from emg_borg.lifecycle import tools
from emg_borg.lifecycle.manifest_cache import ManifestCache

logger = logging.getLogger(__name__)

READERS = 4  # manifests read at the same time when many are missing from the cache


@dataclasses.dataclass
class Archive:
    name: str
    time: datetime.datetime
    manifest: Manifest
    id: str = ""  # the tool's id of the archive (restic: the snapshot's full id)

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
        self.repository, self.tool = repository, tools.of(repository)
        listing = self.tool.listing(repository)
        # Newest first; archives started within the same second keep the tool's order (oldest
        # first) reversed, so the one written last still comes first.
        ordered = sorted(enumerate(listing.entries), key=lambda item: (item[1].time, item[0]), reverse=True)
        self.listed = [entry for _, entry in ordered]
        self.cache = ManifestCache(listing.repository_id, repository.env)

    def named(self, name: str) -> Listed | None:
        """The archive named `name`, else the one whose id is or begins with it (restic's ids)."""
        found = next((entry for entry in self.listed if entry.name == name), None)
        if found is None and len(name) >= 8 and self.tool.name == "restic":
            found = next((entry for entry in self.listed if entry.id.startswith(name)), None)
        return found

    def _read(self, entry: Listed) -> str | None:
        data = self.tool.read(self.repository, entry, entry.manifest_path)
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
        return None if manifest is None else Archive(entry.name, entry.time, manifest, entry.id)

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
