"""What `emg-borg doctor` reports: one `Check` a line, `ok`, `warn` or `FAIL`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, FAIL
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def failed(checks: list[Check]) -> bool:
    return any(check.status == FAIL for check in checks)


@contextlib.contextmanager
def warnings_as_checks(name: str, checks: list[Check]):
    """While plugins and providers run, their log lines do not reach stderr: each warning becomes
    a `warn` check named `name`, the rest (progress) is dropped."""
    logger = logging.getLogger("emg_borg")
    collected: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            collected.append(record.getMessage())

    saved, logger.handlers = logger.handlers, [Collect(logging.WARNING)]
    try:
        yield
    finally:
        logger.handlers = saved
        checks.extend(Check(name, WARN, text) for text in collected)
