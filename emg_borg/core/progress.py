"""Progress of long steps (a dump, an extraction, a load): a log level of its own.

Progress lines are logged at `PROGRESS`, between DEBUG and INFO. The command line shows them when
stderr is a terminal and leaves them out otherwise (borgmatic's log, cron mail), where only the
summary of each step belongs.
"""

from __future__ import annotations

import logging
import time

PROGRESS = 15
logging.addLevelName(PROGRESS, "PROGRESS")
INTERVAL = 2.0  # seconds between two progress lines of one step


class Throttle:
    """Calls through at most once per `interval` seconds."""

    def __init__(self, interval: float = INTERVAL):
        self.interval, self.last = interval, time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True
