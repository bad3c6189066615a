"""The emg-borg lifecycle as pluggy hooks: each hook is one verb.

A backup (`emg-borg before-backup`) calls, in order:

    config_tables -> discover_layout -> snapshot_providers -> preflight
    -> [hold_consistency_point: (provider takes the snapshot) -> capture_message_id -> begin_dumps]
    -> finish_dumps -> backup_patterns -> manifest_fields

and `after-backup` / `on-error` call `release` (each plugin's on its own: one failing does not
stop the others). The process that ends a run (a failing `before-backup`, `after-backup`,
`on-error`) then calls `run_finished`. Snapshots are not taken by a hook but by a `SnapshotProvider` object
(`emg_borg.core.snapshot`) that a plugin offers through `snapshot_providers`; the core drives it.

A restore calls `live_message_id`, then `restore_dump` for each dump in the archive; a verify
drill calls `verify_options` before any work and `verify_dump` to load each dump into a
throwaway database. The built-in behaviour is a set of plugins
(`emg_borg.plugins.DEFAULT_PLUGINS`) registered exactly like third-party plugins, which load
from the `emg_borg` entry-point group.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from emg_borg.config import Config, Option
    from emg_borg.core.manifest import Dump
    from emg_borg.core.outcome import RunOutcome
    from emg_borg.core.run import BackupRun, RestoreRun, VerifyRun
    from emg_borg.core.snapshot import SnapshotProvider
    from emg_borg.emg.layout import Layout

PROJECT = "emg_borg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def emg_borg_config_tables() -> dict[str, dict[str, Option]] | None:
    """Declare this plugin's configuration: `{table: {key: Option(type, default, help, ...)}}`.
    Keys are checked, with file:line errors, like the core's; `config generate` shows them with
    their help text. A plugin may add keys to another's table but not redeclare a key."""


@hookspec(firstresult=True)
def emg_borg_discover_layout(config: Config) -> Layout:
    """Find the EMG installation: EMGDIR, SPOOLDIR, logs, executables, referenced files and the
    database profile, each path in one category. The first plugin that returns a layout wins."""


@hookspec
def emg_borg_snapshot_providers() -> list[SnapshotProvider] | None:
    """Offer snapshot providers: objects implementing `emg_borg.core.snapshot.SnapshotProvider`,
    selected by `[snapshot] provider` (their `name`) or, for `auto`, by the file system they claim."""


@hookspec
def emg_borg_preflight(run: BackupRun) -> list[str] | None:
    """Check, changing nothing, that what this plugin will need is there: commands,
    credentials, privileges. Return what is wrong, one line each. `before-backup --dry-run`
    reports the checks; a real run stops on a failed check before it takes anything. What was
    found fine and is worth showing (e.g. the replica the dump is taken on, its lag) may be
    appended to `run.notes`: `doctor` shows each as an ok line, the dry run logs it."""


@hookspec
def emg_borg_hold_consistency_point(run: BackupRun) -> contextlib.AbstractContextManager | None:
    """Return a context manager that holds the consistency point (e.g. a database global read
    lock) while the snapshot is taken, the message id read and the dumps begun; or None."""


@hookspec(firstresult=True)
def emg_borg_capture_message_id(run: BackupRun) -> int | None:
    """Return EMG's current message id, read inside the consistency point (set
    `run.message_id_source` to say how)."""


@hookspec
def emg_borg_begin_dumps(run: BackupRun) -> None:
    """Start dumps whose consistent view begins inside the consistency point; return only once
    it has begun. When `run.stream_dumps`, start a dump command with `run.stream_dump(...)`: its
    output streams into borg through a named pipe, counted and hashed for the manifest; else
    stage each dump at `run.dump_path(plugin, filename)`. Keep what is running in
    `run.state(plugin)` for `finish_dumps` and `release`."""


@hookspec
def emg_borg_finish_dumps(run: BackupRun) -> list[Dump] | None:
    """After the consistency point: wait for the dumps, check they are complete, and return one
    `Dump` each (`Dump.of_file` records size and sha256; a streamed dump's `handle.dump(...)`
    leaves them to the streamer); they are listed in the manifest."""


@hookspec
def emg_borg_backup_patterns(run: BackupRun) -> list[str] | None:
    """Contribute lines of the selection, in borg's pattern language: `R` roots (with borg 1.4's
    `/./` so archive paths equal live paths) and `!`/`-`/`+` lines (`pp:`, `pf:`, `sh:`, `fm:`,
    `re:`). borg reads them as its patterns file; for restic they are walked into its
    `--files-from-verbatim` list, each `/./` base becoming a stored root of the manifest."""


@hookspec
def emg_borg_manifest_fields(run: BackupRun) -> dict | None:
    """Contribute top-level fields to `emg-borg/manifest.json`."""


@hookspec
def emg_borg_release(run: BackupRun) -> None:
    """Release what this plugin holds in this process (running dumps, connections). Called after
    success and failure alike, and must be idempotent. Snapshots are released by their provider."""


@hookspec
def emg_borg_run_finished(run: BackupRun, outcome: RunOutcome) -> None:
    """A backup run ended: `before-backup` failed, `after-backup` released a finished run
    (`outcome.succeeded`), or `on-error` ran (a failure, even with nothing left to release).
    `outcome` says when the run started and ended, the error if this process saw it, and the
    manifest the run staged when it got that far. Called after everything is released; a
    plugin's failure here is logged as a warning and changes nothing else."""


@hookspec(firstresult=True)
def emg_borg_live_message_id(restore: RestoreRun) -> int | None:
    """The highest message id found in the live database at restore time, or None when there is
    none (no database, an empty one). Raise when the database cannot be read."""


@hookspec(firstresult=True)
def emg_borg_restore_dump(restore: RestoreRun, dump: Dump) -> bool | None:
    """Restore `dump` if this plugin made it (`dump.plugin`); return True when handled.

    Check first and refuse (raise) at once; leave the irreversible load to `restore.later(...)`,
    which runs after the files are restored. `restore.fetch_dump(dump)` extracts the dump and
    checks it against the manifest; report with `restore.done(...)` / `restore.todo(...)`, and
    only say what would be done when `restore.dry_run`."""


@hookspec
def emg_borg_verify_options(verify: VerifyRun) -> list[str] | None:
    """Check a verify drill's options for this plugin (e.g. the form of `--scratch-db`) before
    the repository is touched; return what is wrong."""


@hookspec(firstresult=True)
def emg_borg_verify_dump(verify: VerifyRun, dump: Dump, path: Path) -> tuple[bool, str] | None:
    """Load the extracted `dump` (already checked against the manifest) into the throwaway
    `verify.scratch_db`, check it, remove it again; return (ok, one-line detail). None when the
    dump is not this plugin's."""
