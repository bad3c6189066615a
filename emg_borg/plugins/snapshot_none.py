"""Built-in plugin: the `none` snapshot provider, backing up the live spool.

A file-by-file copy of a running spool is not consistent (queues and delivery reports change
while borg reads them); the user chose this knowingly, and every run says so in the log.
"""

from __future__ import annotations

import logging

from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)


@hookimpl
def emg_borg_snapshot_providers():
    return ["none"]


@hookimpl(trylast=True)
def emg_borg_take_snapshot(run, provider):
    if provider != "none":
        return None
    if "data" in run.categories:
        logger.warning(
            "snapshot provider is none: the live spool %s is copied while emgd may change it; the copy is not "
            "consistent", run.layout.spooldir,
        )
    return None
