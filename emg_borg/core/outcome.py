"""How a backup run ended: what `emg_borg_run_finished` hands to the plugins.

A run spans separate processes: `before-backup` (which may fail), borg, then `after-backup`
(success) or `on-error` (failure). Whichever process ends the run describes its end here.
"""

from __future__ import annotations

import dataclasses

BEFORE_BACKUP, AFTER_BACKUP, ON_ERROR = "before-backup", "after-backup", "on-error"


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """The end of one backup run, as the process that ended it saw it."""

    command: str  # before-backup (it failed), after-backup or on-error
    succeeded: bool
    finished: float  # seconds since the epoch
    started: float | None = None  # when before-backup began, if this process knows
    error: str | None = None  # the error that ended the run (one line, errors.describe), if this process saw one
    manifest: dict | None = None  # the manifest the run staged, if it got that far and is still there

    @property
    def duration(self) -> float | None:
        return None if self.started is None else max(0.0, self.finished - self.started)
