"""The backup-tool contract: what emg-borg asks of the program that stores the archives.

Two tools implement it (`emg_borg.lifecycle.tool_borg`, `emg_borg.lifecycle.tool_restic`), and
`[backup] tool` chooses one (`emg_borg.lifecycle.tools`); everything else in the core and the
lifecycle speaks only this contract. Archive paths are always the *live* paths without the
leading `/` (`etc/emg/server.cfg`, `emg-borg/manifest.json`): a tool that stores files under
another path (restic stores what it read: the snapshot's mount path, the staging area) maps them
back itself.

Backup side: `preflight(run)` (the tool found and fit), `transfer(run)` (how dumps reach it),
`collect(run, lines)` (the selection from the plugins' pattern lines, before the manifest),
`manifest_fields(run, collected)` and `write_selection(run, collected)` (the file the tool
reads: borg's patterns file, restic's `--files-from-verbatim` list), `doctor(run,
borgmatic_config)` (one line per fact).

Restore side, given a `Repository` whose `tool` names the implementation: `listing(repository)`
(the repository's id and its archives), `read(repository, listed, path)` (one member's bytes,
None when the archive has none), `members(repository, archive, paths)` and `plan(repository,
archive, selected)` (items under archive paths / of categories), and `extract(repository,
archive, selected, destination, progress)`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class Repository:
    """A repository, the environment its tool's processes need (a passphrase or password travels
    here, never in argv), the glob of the archive names to consider (borg's `--glob-archives`;
    None: all), and the name of the tool that reads it."""

    location: str
    env: dict | None = dataclasses.field(default=None, repr=False)
    match_archives: str | None = None
    tool: str = "borg"

    def __post_init__(self):
        # The tool may run in the extraction directory, so a relative local path must be made
        # absolute; `ssh://...`, `sftp:...` and scp-style `host:path` locations stay as they are.
        if ":" not in self.location:
            object.__setattr__(self, "location", os.path.abspath(os.path.expanduser(self.location)))

    def __str__(self) -> str:
        # A URL may carry a password (restic's `rest:https://user:secret@host/`): never shown.
        return CREDENTIALS.sub(r"\g<user>:***@", self.location)


# The user ends at the first `:`, the password at the last `@` before the host, as Go's URL parser
# (restic's) reads them: both may hold an `@` (`user@example.com`, a generated password).
CREDENTIALS = re.compile(r"(?P<user>//[^/:\s]*):[^/\s]*@")


@dataclasses.dataclass(frozen=True)
class Listed:
    """An archive as the tool lists it: `name` (what `--archive` takes), `id` (the key of the
    manifest cache; archives never change), start `time`, and where the manifest lies in it."""

    name: str
    id: str
    time: datetime.datetime
    manifest_path: str = "emg-borg/manifest.json"


@dataclasses.dataclass(frozen=True)
class Listing:
    repository_id: str
    entries: list  # Listed, in the tool's order


@dataclasses.dataclass(frozen=True)
class Item:
    """A member of an archive: its archive path, type (`-` file, `d` directory, `l` link, as
    borg shows them), size."""

    path: str
    type: str
    size: int = 0

    def to_dict(self) -> dict:
        return {"path": self.path, "type": self.type, "size": self.size}


@dataclasses.dataclass
class Extracted:
    """What an extraction did: the items it wrote, and the tool's warnings, one per path it could
    not write, e.g. "etc/emg/users: open: [Errno 1] Operation not permitted". An extraction with
    warnings is incomplete: those paths hold old content or nothing."""

    items: int
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.warnings


Progress = Callable[[dict], None]  # {"current", "total", "info", "message", "finished"}, borg's progress_percent


class BackupTool:
    """Base class of the backup tools; see the module's docstring for the contract."""

    name: ClassVar[str]
    selection_name: ClassVar[str]  # the file in runtime_dir the tool reads
    selection_label: ClassVar[str]  # what that file is, for messages ("patterns file")
    line_label: ClassVar[str]  # what its lines are, for messages ("pattern lines")
    repository_advice: ClassVar[str]  # how after-backup is told the repository, to check the run's archive
    # Why a run the tool failed may still have stored an archive ("" when it never does): on-error
    # then names it.
    stores_failed_runs: ClassVar[str] = ""

    def selection_path(self, runtime) -> Path:
        return Path(runtime.root) / self.selection_name

    # backup side
    def preflight(self, run) -> list[str]:
        """Whether the tool is there and fit; checked first, before anything else."""
        raise NotImplementedError

    def transfer(self, run) -> list[str]:
        """Decide how dumps reach the tool (`run.stream_dumps`, `run.transfer_reason`); the problems."""
        raise NotImplementedError

    def describe_transfer(self, streaming: bool, why: str) -> str:
        raise NotImplementedError

    def collect(self, run, lines: list[str]) -> Any:
        """The selection from the plugins' pattern lines, before the manifest is written."""
        raise NotImplementedError

    def manifest_fields(self, run, collected) -> dict:
        return {}

    def write_selection(self, run, collected) -> int:
        """Write the selection file; return how many lines it holds."""
        raise NotImplementedError

    def hooks_name_repository(self) -> bool:
        """Whether the hooks' environment names the repository without an option (restic's
        RESTIC_REPOSITORY): after-backup then checks the run's archive there."""
        return False

    def not_stored(self, repository: Repository, archive, selection: list[str]) -> list[str]:
        """The paths of the run's selection file (its lines) that the tool did not store in
        `archive` (after-backup's check); borg names each one it could not read in its own errors."""
        return []

    def doctor(self, run, borgmatic_config) -> list:
        """`emg_borg.lifecycle.checks.Check` lines about the tool, for `emg-borg doctor`."""
        raise NotImplementedError

    # restore side
    def listing(self, repository: Repository) -> Listing:
        raise NotImplementedError

    def read(self, repository: Repository, listed: Listed, path: str) -> bytes | None:
        raise NotImplementedError

    def read_member(self, repository: Repository, archive, path: str) -> bytes | None:
        """The archive path `path` of an emg-borg archive (one with a manifest)."""
        raise NotImplementedError

    def members(self, repository: Repository, archive, paths) -> list[Item]:
        raise NotImplementedError

    def plan(self, repository: Repository, archive, selected) -> list[Item]:
        raise NotImplementedError

    def extract(self, repository: Repository, archive, selected, destination: Path,
                progress: Progress | None = None) -> Extracted:
        raise NotImplementedError
