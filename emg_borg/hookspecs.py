"""The emg-borg lifecycle as pluggy hooks: each hook is one verb.

A backup (`emg-borg before-backup`) calls, in order:

    discover_layout -> preflight -> cleanup_stale -> [hold_consistency_point:
        take_snapshot -> capture_message_id -> begin_dumps] -> finish_dumps
    -> backup_patterns -> manifest_fields

and `after-backup` / `on-error` call `release`. A restore (`emg_borg.lifecycle.restore`) calls
`live_message_id`, then `restore_database`, both before it extracts any file: the live id is read
before a dump could replace it, and a refusal leaves everything untouched. The built-in behaviour
is a set of plugins (`emg_borg.plugins.DEFAULT_PLUGINS`) registered exactly like third-party
plugins, which load from the `emg_borg` entry-point group.

`run` is an `emg_borg.lifecycle.run.BackupRun`; its attributes fill in as the lifecycle goes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from emg_borg.config import Config
    from emg_borg.emg.layout import Layout
    from emg_borg.lifecycle.restore import RestoreRun
    from emg_borg.lifecycle.run import BackupRun
    from emg_borg.lifecycle.run import Snapshot

PROJECT = "emg_borg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def emg_borg_discover_layout(config: Config) -> Layout:
    """Find the EMG installation: EMGDIR, SPOOLDIR, logs, executables, referenced files and the
    database profile, each path in one category. The first plugin that returns a layout wins."""


@hookspec
def emg_borg_preflight(run: BackupRun) -> list[str] | None:
    """Check, changing nothing, that what this plugin will need is there: commands,
    credentials, privileges. Return what is wrong, one line each. `before-backup --dry-run`
    reports the checks; a real run stops on a failed check before it takes anything."""


@hookspec
def emg_borg_cleanup_stale(run: BackupRun) -> None:
    """Remove leftovers of an earlier run that crashed: snapshots, clones and mounts that carry
    emg-borg's name. Log each removal. Never touch anything that is not emg-borg's."""


@hookspec
def emg_borg_snapshot_providers() -> list[str]:
    """Name the snapshot providers this plugin offers (values of `[snapshot] provider`)."""


@hookspec(firstresult=True)
def emg_borg_snapshot_provider(run: BackupRun, filesystem: str) -> str | None:
    """Name the snapshot provider able to snapshot `filesystem` (a `findmnt` FSTYPE such as
    `btrfs`, `zfs`, `fuse.zfs`, `ext4` on LVM). Used when `[snapshot] provider = "auto"`."""


@hookspec
def emg_borg_hold_consistency_point(run: BackupRun) -> contextlib.AbstractContextManager | None:
    """Return a context manager that holds the consistency point (e.g. a database global read
    lock) while the snapshot is taken, the message id read and the dumps begun; or None."""


@hookspec(firstresult=True)
def emg_borg_take_snapshot(run: BackupRun, provider: str) -> Snapshot | None:
    """Take an atomic snapshot of the file system holding SPOOLDIR with the named `provider`,
    record what must be released in `run.ledger`, and return the `Snapshot`; None if `provider`
    is not this plugin's."""


@hookspec(firstresult=True)
def emg_borg_capture_message_id(run: BackupRun) -> int | None:
    """Return EMG's current message id, read inside the consistency point."""


@hookspec
def emg_borg_begin_dumps(run: BackupRun) -> None:
    """Start database dumps whose transaction snapshot begins inside the consistency point.
    Return only once each dump's snapshot has begun; keep the running dumps in
    `run.plugin_state` for `emg_borg_finish_dumps`."""


@hookspec
def emg_borg_finish_dumps(run: BackupRun) -> None:
    """After the consistency point: wait for the dumps, verify them, record sizes and digests."""


@hookspec
def emg_borg_backup_patterns(run: BackupRun) -> list[str] | None:
    """Contribute lines of the borg patterns file: `R` roots (with borg 1.4's `/./` so archive
    paths equal live paths) and `!`/`-` exclusions."""


@hookspec
def emg_borg_manifest_fields(run: BackupRun) -> dict | None:
    """Contribute top-level fields to `emg-borg/manifest.json`."""


@hookspec
def emg_borg_release(run: BackupRun) -> None:
    """Release what this plugin recorded in `run.ledger` (unmount, destroy, remove), newest
    first. Must be idempotent: safe to call twice, or with nothing to release."""


@hookspec(firstresult=True)
def emg_borg_restore_database(restore: RestoreRun) -> bool | None:
    """Load the archived database dump into the target database. Return True when handled.

    Load only into a missing or empty database unless `restore.load_database`; refuse (raise) a
    non-empty one unless `restore.force_database`. `restore.fetch_dump()` extracts the dump and
    checks it against the manifest; report with `restore.done(...)` / `restore.todo(...)`, and
    only report what would be done when `restore.dry_run`."""


@hookspec(firstresult=True)
def emg_borg_live_message_id(restore: RestoreRun) -> int | None:
    """The highest message id found in the live database at restore time, or None when it
    cannot be read (the database is then not newer than the archive as far as we know)."""
