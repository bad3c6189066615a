"""Telling the plugins how a backup run ended (`emg_borg_run_finished`), from whichever process
ends it.

`before-backup`, borg and `after-backup` or `on-error` are separate processes, so what the end
of a run needs from its beginning travels in the runtime directory: the exact start time in
the ledger's meta (`started_at`, written once before-backup has succeeded) and the staged
manifest, read here before the release removes it. A failing plugin is a warning: how a run is
reported never changes whether it succeeded.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time

from emg_borg.core import stream
from emg_borg.core.manifest import ARCHIVE_PATH
from emg_borg.core.outcome import AFTER_BACKUP, BEFORE_BACKUP, ON_ERROR, RunOutcome  # noqa: F401 - re-exported
from emg_borg.core.run import BackupRun
from emg_borg.errors import describe

logger = logging.getLogger(__name__)

STARTED_AT = "started_at"  # ledger meta: seconds since the epoch when before-backup began


def staged_manifest(run: BackupRun) -> dict | None:
    """The manifest the run staged, while it is still there (before the release)."""
    return stream.staged_manifest(run.runtime, run.runtime.staging / ARCHIVE_PATH)


def started_at(run: BackupRun) -> float | None:
    """When the run's before-backup began: exact from the ledger, else its start to the second."""
    value = run.ledger.meta.get(STARTED_AT)
    if isinstance(value, (int, float)):
        return float(value)
    started = run.ledger.meta.get("started")
    try:
        return datetime.datetime.fromisoformat(started).timestamp() if started else None
    except ValueError:
        return None


def report(run: BackupRun, command: str, *, succeeded: bool, started: float | None = None,
           manifest: dict | None = None, error: BaseException | None = None) -> None:
    """Call every plugin's `emg_borg_run_finished`, each on its own."""
    outcome = RunOutcome(command=command, succeeded=succeeded, finished=time.time(), started=started,
                         error=describe(error) if error is not None else None, manifest=manifest)
    given = {"run": run, "outcome": outcome}
    for impl in reversed(run.hook.emg_borg_run_finished.get_hookimpls()):
        try:
            impl.function(*(given[name] for name in impl.argnames))  # as pluggy would: only what it asks for
        except Exception as failure:  # noqa: BLE001 - reporting must not change the run's result
            logger.warning("plugin %s could not record the end of the run: %s: %s", impl.plugin_name,
                           type(failure).__name__, failure)


@contextlib.contextmanager
def reported(run: BackupRun, command: str):
    """Report the run's end after the block: a failure when it raises; at a normal end, a success
    for `after-backup` and a failure for `on-error`. A `before-backup` that succeeds has not
    ended the run: it leaves its exact start time in the ledger for the process that will."""
    if command == BEFORE_BACKUP:
        started, manifest = time.time(), None
    else:
        started, manifest = started_at(run), staged_manifest(run)
    try:
        yield
    except BaseException as error:
        report(run, command, succeeded=False, started=started, manifest=manifest, error=error)
        raise
    if command == BEFORE_BACKUP:
        run.ledger.meta[STARTED_AT] = started
        run.ledger.save()
    else:
        report(run, command, succeeded=command == AFTER_BACKUP, started=started, manifest=manifest)
