"""A local cache of archive manifests. An archive never changes, so its manifest is read from the
repository once: listing and choosing archives then costs one `borg list`, however many archives
there are.

One file per repository, `manifests-<repository id>.json`, mapping each archive id (both ids as
`borg list --json` gives them) to the manifest's text, or to null for an archive without one (so
it is not read again either). The directory is `$EMG_BORG_CACHE_DIR`, else
`$XDG_CACHE_HOME/emg-borg`, else `$BORG_BASE_DIR/.cache/emg-borg` or `~/.cache/emg-borg` (found
the way borg finds its own cache), mode 700. Archives that left the repository (pruned) are
forgotten when a complete listing no longer shows them. A cache that cannot be read or written
only makes the next listing slower.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from emg_borg.core.files import write_private

logger = logging.getLogger(__name__)

VERSION = 1


def cache_dir(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("EMG_BORG_CACHE_DIR"):
        return Path(env["EMG_BORG_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "emg-borg"
    return Path(env.get("BORG_BASE_DIR") or os.path.expanduser("~")) / ".cache" / "emg-borg"


class ManifestCache:
    def __init__(self, repository_id: str, env=None):
        self.path = cache_dir(env) / f"manifests-{repository_id}.json"
        self.entries: dict[str, str | None] = self._load()
        self.changed = False

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("manifest cache %s unreadable (%s); reading the manifests again", self.path, error)
            return {}
        archives = data.get("archives") if isinstance(data, dict) and data.get("version") == VERSION else None
        return archives if isinstance(archives, dict) else {}

    def __contains__(self, archive_id: str) -> bool:
        return archive_id in self.entries

    def get(self, archive_id: str) -> str | None:
        return self.entries.get(archive_id)

    def put(self, archive_id: str, text: str | None) -> None:
        self.entries[archive_id] = text
        self.changed = True

    def save(self, listed_ids=None) -> None:
        """Write the cache if it changed. `listed_ids`, the ids of a complete listing, makes it
        forget archives that are gone."""
        if listed_ids is not None:
            gone = set(self.entries) - set(listed_ids)
            for archive_id in gone:
                del self.entries[archive_id]
            self.changed = self.changed or bool(gone)
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.path.parent, 0o700)
            write_private(self.path, json.dumps({"version": VERSION, "archives": self.entries}))
            self.changed = False
        except OSError as error:
            logger.warning("cannot write the manifest cache %s: %s", self.path, error)
