"""The archive's manifest (`emg-borg/manifest.json`): its model and its format versions.

Format 2 describes dumps generically: `dumps` is a list of entries, each naming the plugin that
made it and can restore it. Format 1 (emg-borg 0.1) kept its one dump as a top-level object named
after the plugin, holding `dump`, `bytes` and `sha256`; it is read as a format-2 manifest with
that dump, so old archives still list, verify and restore. A version newer than this emg-borg
knows is refused: its meaning cannot be guessed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emg_borg.core.files import sha256_file
from emg_borg.errors import EmgBorgError

FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)
ARCHIVE_PATH = "emg-borg/manifest.json"
DUMPS_DIR = "emg-borg/dumps"  # archive path of every plugin's dumps: DUMPS_DIR/<plugin>/<file>


class ManifestVersionError(EmgBorgError):
    """The manifest's format is newer than this emg-borg knows."""


@dataclasses.dataclass
class Dump:
    """One database dump in the archive: which plugin made it, where it lies, and what it must
    look like (`bytes`, `sha256`) for verify and restore to trust it. `details` are the plugin's
    own fields (binlog coordinates, ...), stored flat beside the others."""

    plugin: str
    database: str
    path: str  # archive-relative
    bytes: int
    sha256: str
    details: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of_file(cls, plugin: str, database: str, staged: Path, archive_path: str, **details) -> Dump:
        staged = Path(staged)
        return cls(plugin, database, archive_path, staged.stat().st_size, sha256_file(staged), details)

    def to_dict(self) -> dict:
        return {"plugin": self.plugin, "database": self.database, "path": self.path, "bytes": self.bytes,
                "sha256": self.sha256, **self.details}

    @classmethod
    def from_dict(cls, data: dict) -> Dump:
        fixed = ("plugin", "database", "path", "bytes", "sha256")
        return cls(*(data.get(k) for k in fixed), {k: v for k, v in data.items() if k not in fixed})

    def problem(self, extracted: Path) -> str | None:
        """Why the extracted file is not this dump, or None when size and sha256 match."""
        if not extracted.is_file():
            return f"the dump {self.path} is missing"
        size = extracted.stat().st_size
        if size != self.bytes:
            return f"the dump {self.path}: {size} bytes, the manifest says {self.bytes}"
        digest = sha256_file(extracted)
        if digest != self.sha256:
            return f"the dump {self.path}: sha256 {digest[:16]}... differs from the manifest's {str(self.sha256)[:16]}..."
        return None


class Manifest:
    """A manifest read from an archive, whatever its format version, seen as format 2."""

    def __init__(self, data: dict, archive: str = "?"):
        if not isinstance(data, dict):
            raise EmgBorgError(f"archive {archive}: {ARCHIVE_PATH} is not a JSON object")
        version = data.get("format_version", 1)
        if version not in KNOWN_VERSIONS:
            raise ManifestVersionError(
                f"archive {archive}: manifest format_version {version!r} is newer than this emg-borg knows "
                f"({', '.join(map(str, KNOWN_VERSIONS))}); upgrade emg-borg to read it"
            )
        self.archive, self.version, self.data = archive, version, data
        if version == 1:
            self.dumps = [Dump(plugin, entry.get("database"), entry["dump"], entry["bytes"], entry["sha256"],
                               {k: v for k, v in entry.items() if k not in ("database", "dump", "bytes", "sha256")})
                          for plugin, entry in data.items()
                          if isinstance(entry, dict) and {"dump", "bytes", "sha256"} <= entry.keys()]
        else:
            self.dumps = [Dump.from_dict(entry) for entry in data.get("dumps") or []]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __getitem__(self, key):
        return self.data[key]

    @property
    def categories(self) -> dict:
        categories = self.data.get("categories")
        if not isinstance(categories, dict) or not categories:
            raise EmgBorgError(f"archive {self.archive}: its manifest lists no categories")
        return categories

    @property
    def dump_bytes(self) -> int | None:
        return sum(d.bytes or 0 for d in self.dumps) if self.dumps else None
