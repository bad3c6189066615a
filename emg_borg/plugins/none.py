"""Built-in plugin: the `none` snapshot provider, backing up the live spool.

A file-by-file copy of a running spool is not consistent (queues and delivery reports change
while borg reads them); the user chose this knowingly, and every run says so in the log.
"""

from __future__ import annotations

import logging

from emg_borg.core.snapshot import SnapshotProvider
from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)


class NoSnapshot(SnapshotProvider):
    name = "none"

    def take(self, run):
        if "data" in run.categories:
            logger.warning(
                "snapshot provider is none: the live spool %s is copied while emgd may change it; the copy is not "
                "consistent", run.layout.spooldir,
            )
        return None
        yield  # a generator that creates nothing

    def release(self, run, entry):
        return None


@hookimpl
def emg_borg_snapshot_providers():
    return [NoSnapshot()]
