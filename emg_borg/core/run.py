"""What one run knows, handed to every hook: a backup (`BackupRun`), a restore (`RestoreRun`) or
a verify drill (`VerifyRun`). The lifecycle fills them in; plugins read them and add to them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any, Callable

from emg_borg.core import stream
from emg_borg.core.manifest import DUMPS_DIR, Dump
from emg_borg.core.runtime import Ledger, RuntimeDir, now_iso
from emg_borg.core.snapshot import Snapshot

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BackupRun:
    """Everything one backup run knows; hooks read and fill it in."""

    config: Any
    runtime: RuntimeDir
    ledger: Ledger
    hook: Any
    dry_run: bool = False
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: str = dataclasses.field(default_factory=now_iso)
    layout: Any = None
    categories: tuple = ()
    provider: str = "none"
    tool: Any = None  # the backup tool (emg_borg.core.backup_tool.BackupTool) that reads the run's selection
    snapshot: Snapshot | None = None
    message_id: int | None = None
    message_id_source: str | None = None
    dumps: list[Dump] = dataclasses.field(default_factory=list)
    lock_state: str = "not used"
    freeze_window_ms: float | None = None
    freeze_deadline: float | None = None  # time.monotonic() by which the consistency point must end
    step: str = "start"  # what the run is doing (named when a bound is passed)
    warnings: list = dataclasses.field(default_factory=list)  # for the log and the manifest
    notes: list = dataclasses.field(default_factory=list)  # what a preflight found fine, for `doctor`
    repository: str | None = None
    borgmatic_config: str | None = None  # its repositories are searched for an untrustworthy archive
    plugin_state: dict = dataclasses.field(default_factory=dict)  # per-plugin scratch space
    release_errors: list = dataclasses.field(default_factory=list)  # releases that failed
    failures: list = dataclasses.field(default_factory=list)  # problems found while releasing
    # Dumps stream into borg through named pipes (else they are staged as files), and why.
    stream_dumps: bool = False
    keep_streams: bool = False  # every reader gets the whole dump (borgmatic retries borg create)
    transfer_reason: str = ""
    streams: list = dataclasses.field(default_factory=list)  # stream.ProducerHandle, in start order
    owner_pid: int = 0  # the process the run belongs to (borgmatic); streamers end when it is gone

    def state(self, plugin: str) -> dict:
        """A plugin's scratch space for this run (lives in this process only)."""
        return self.plugin_state.setdefault(plugin, {})

    def dump_path(self, plugin: str, filename: str) -> tuple[Path, str]:
        """Where a plugin stages a dump file, and the path it gets in the archive
        (`emg-borg/dumps/<plugin>/<filename>`); the directory is created, private."""
        archive_path = f"{DUMPS_DIR}/{plugin}/{filename}"
        staged = self.runtime.staging / archive_path
        staged.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return staged, archive_path

    def stream_dump(self, plugin: str, filename: str, *, label: str, argv: tuple, footer: str,
                    pass_fds=(), head_check=None) -> stream.ProducerHandle:
        """Start a dump command whose output streams into borg at `emg-borg/dumps/<plugin>/<filename>`
        (only when `stream_dumps`). Call `carry()` on the handle once the consistency point is over;
        the manifest then records the size and sha256 the streamer counted. With `head_check`
        (emg_borg.core.streamer.head_problem) the dump's beginning is checked too, and a dump that
        fails it fails like an incomplete one."""
        fifo, archive_path = self.dump_path(plugin, filename)
        handle = stream.start_producer(self.runtime, self.ledger, self.owner_pid, name=f"{plugin}-{filename}",
                                       label=label, argv=argv, fifo=fifo, archive_path=archive_path, footer=footer,
                                       pass_fds=pass_fds, keep=self.keep_streams,
                                       head_check=head_check)
        self.streams.append(handle)
        return handle

    def borg_root(self, live_path) -> str:
        """The `R` root for a live path: `base/./path` when a snapshot covers it."""
        live_path = Path(live_path)
        if self.snapshot is not None and self.snapshot.covers(live_path):
            return f"{self.snapshot.base}/./{str(live_path).lstrip('/')}"
        return str(live_path)

    def real_path(self, live_path, walked_from=None) -> Path:
        """Where borg reads a live path: inside the snapshot when the snapshot covers it, or
        covers `walked_from`, the root whose walk reaches it."""
        live_path = Path(live_path)
        if self.snapshot is not None and self.snapshot.covers(walked_from or live_path):
            return self.snapshot.real(live_path)
        return live_path


@dataclasses.dataclass
class ArchivedLayout:
    """What a restore knows of the archived installation: the manifest's paths and the DB
    profile of the archived server.cfg (the one being restored)."""

    emgdir: str
    server_cfg: str
    spooldir: str
    node_id: int | None
    db: Any  # emg_borg.emg.layout.DbProfile or None


@dataclasses.dataclass
class RestoreRun:
    """One restore; the restore hooks read it and report through `done`, `todo` and `later`."""

    config: Any
    hook: Any
    repository: Any
    archive: Any  # emg_borg.lifecycle.archives.Archive
    layout: ArchivedLayout
    target: Path
    categories: tuple
    fetcher: Callable[[Dump], Path]
    load_database: bool = False
    force_database: bool = False
    dry_run: bool = False
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    actions: list = dataclasses.field(default_factory=list)
    remaining: list = dataclasses.field(default_factory=list)
    unwritten: list = dataclasses.field(default_factory=list)  # borg's warnings: paths it could not write
    deferred: list = dataclasses.field(default_factory=list)  # (what, step): database loads, run after the files

    @property
    def manifest(self):
        return self.archive.manifest

    def live(self, path) -> Path:
        """Where the live (absolute) or archive-relative `path` lies under the restore target."""
        return Path(self.target) / str(path).lstrip("/")

    def done(self, text: str) -> None:
        # The closing checklist shows these; logged only for -v, so a terminal shows them once.
        logger.debug("%s", text)
        self.actions.append(text)

    def todo(self, text: str) -> None:
        self.remaining.append(text)

    def later(self, what: str, step: Callable[[], None]) -> None:
        """Run `step()` after the files are restored: a restore hook checks (and refuses) at once
        and leaves the irreversible part (replacing a database) for last."""
        self.deferred.append((what, step))

    def fetch_dump(self, dump: Dump) -> Path:
        """The archived dump, extracted into a private temporary directory (removed when the
        restore ends) and checked against the manifest's size and sha256."""
        return self.fetcher(dump)


@dataclasses.dataclass
class VerifyRun:
    """A verify drill's loading step: the dump's plugin loads it into `scratch_db`, a throwaway
    database named in the form that plugin understands."""

    config: Any
    layout: ArchivedLayout | None
    scratch_db: str | None
    load_dump: bool = False
