"""The snapshot contract: what a provider returns, and what every provider implements.

A provider is an object registered through the `emg_borg_snapshot_providers` hook. The core
drives it; it never records or releases anything by itself:

- `claims(run, filesystem)`: for `provider = "auto"`, whether it can snapshot that file system;
- `preflight(run)`: what is missing (commands, tools), changing nothing;
- `clean_stale(run)`: remove this installation's leftovers of a crashed run that the ledger lost;
- `prepare(run)` and `take(run)`: generators that *yield* a `Resource` for each thing they are
  about to create. The core writes the resource to the ledger, then calls its `create`; so the
  ledger always lists a resource before it exists, whatever fails. `prepare` runs before the
  consistency point (slow set-up), `take` inside it and returns the `Snapshot`;
- `check(run, entry)`: before anything is released, a problem that makes the archive
  untrustworthy (an overflowed LVM snapshot), or None;
- `release(run, entry)`: release one ledger entry; idempotent (it may already be gone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, ClassVar

from emg_borg.core.paths import within


@dataclasses.dataclass
class Snapshot:
    """A frozen view of the file system holding SPOOLDIR.

    `origin` is the live path the snapshot covers (a mount point or a subvolume); its content is
    visible at `base / origin` (relative), so borg reads `base/./<live path>` and archives the live
    path. `holes` lists other file systems mounted below `origin` that the snapshot does not
    contain: paths in them are not covered (read live).
    """

    provider: str
    origin: Path
    base: Path
    name: str
    device: str | None = None
    details: dict = dataclasses.field(default_factory=dict)
    holes: list[Path] = dataclasses.field(default_factory=list)

    def covers(self, path) -> bool:
        path = Path(path)
        return within(path, self.origin) and not any(within(path, hole) for hole in self.holes)

    def real(self, live_path) -> Path:
        return self.base / str(live_path).lstrip("/")

    def to_dict(self) -> dict:
        return {
            "provider": self.provider, "origin": str(self.origin), "base": str(self.base),
            "name": self.name, "device": self.device, "details": self.details,
            **({"holes": [str(h) for h in self.holes]} if self.holes else {}),
        }


@dataclasses.dataclass
class Resource:
    """Something a provider is about to create: `kind` and `data` go to the ledger (what
    `release` will need), then the core calls `create()`."""

    kind: str
    data: dict
    create: Callable[[], Any]


Steps = Generator[Resource, None, Any]


class SnapshotProvider:
    """Base class of snapshot providers; see the module's docstring for the contract."""

    name: ClassVar[str]
    filesystems: ClassVar[tuple[str, ...]] = ()  # findmnt FSTYPEs it claims for `auto`
    claim_order: ClassVar[int] = 0  # lower asks first; a volume manager asks after file systems
    releasers: ClassVar[dict[str, Callable[[dict], Any]]] = {}  # ledger kind -> release of one entry

    def claims(self, run, filesystem: str) -> bool:
        return filesystem in self.filesystems

    def preflight(self, run) -> list[str]:
        return []

    def clean_stale(self, run) -> None:
        return None

    def prepare(self, run) -> Iterator[Resource]:
        return iter(())

    def take(self, run) -> Steps:
        raise NotImplementedError

    def check(self, run, entry: dict) -> str | None:
        return None

    def release(self, run, entry: dict) -> None:
        self.releasers[entry["kind"]](entry)
