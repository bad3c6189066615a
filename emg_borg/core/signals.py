"""Signals during work and during cleanup.

While emg-borg works, SIGTERM and SIGHUP become an `Interrupted` error (SIGINT already raises
KeyboardInterrupt), so the `finally` blocks that release snapshots and remove decrypted dumps run.
While it releases, the signals are held until the release is complete.
"""

from __future__ import annotations

import contextlib
import signal

from emg_borg.errors import EmgBorgError


class Interrupted(EmgBorgError):
    """SIGTERM or SIGHUP arrived; turned into an exception so that cleanup runs."""


@contextlib.contextmanager
def signals_raise():
    """While working, SIGTERM/SIGHUP raise `Interrupted` (SIGINT already raises)."""

    def handler(signum, frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; releasing everything")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so a release is never cut short.

    The signals are recorded by handlers rather than blocked: a blocked mask would be inherited
    by the commands the release runs (umount, zfs destroy), which could then not be stopped."""
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:
        raise Interrupted(f"interrupted by {signal.Signals(received[0]).name} (held until everything was released)")
