"""The disk buffer between a dump command and borg: the dump is drained at its own pace.

A database dump that cannot write stops reading its socket, and the server drops it after
`net_write_timeout` (60 s by default): a borg that starts late (the repository lock held by
another node, a cache sync, a slow SSH start) must never hold the dump back. So a drain thread
reads the producer's output as it comes, hashes it and appends it to a file; the streamer serves
borg from that file. While borg reads steadily the drain keeps at most `SOFT_LIMIT` bytes ahead of
it (the producer waits a moment, as it would on a pipe), and the bytes borg has read are punched
out of the file: the dump never lies on disk whole. When borg has not come yet or has stalled for
`SPILL_AFTER` seconds, the drain goes on regardless: the disk holds what borg has not read yet,
and only while it lags. While borg keeps up, the buffer holds at most HELD_BOUND bytes. With `keep` (borgmatic's `retries`: a retried `borg create` reads the dump
again) nothing is punched, and each reader gets the whole dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import threading
import time

CHUNK = 256 * 1024  # one read of the producer's output (and one write into borg's pipe)
SOFT_LIMIT = CHUNK  # how far the drain runs ahead of the reader before it waits (plus one read)
# Seconds the producer may be held while the reader takes nothing (or has not come): far below
# the server's net_write_timeout (60 s by default), long enough for borg to start normally.
SPILL_AFTER = 5.0
TAIL = 512  # bytes kept of the end, for the completion line
HEAD = 1 << 16  # bytes kept of the beginning, for a head check
PUNCH_UNIT = 64 * 1024  # what borg has read is given back in these steps
# The most the buffer holds on disk while borg keeps up: the lead it may take, one read, and
# what is not yet given back.
HELD_BOUND = SOFT_LIMIT + CHUNK + PUNCH_UNIT

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give the blocks of [offset, offset + length) back to the file system; False where it
    cannot (then the buffer keeps them until the release)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    return _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


class DumpBuffer:
    """A producer's output on its way to readers: appended by `drain`, read with `read_at`."""

    def __init__(self, path: str, keep: bool):
        self.path, self.keep = path, keep
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.unlink(path)  # only this descriptor uses it: nothing of the dump outlives the process
        self.size = 0  # bytes drained so far
        self.digest = hashlib.sha256()
        self.tail = b""
        self.head = b""
        self.done = False  # the producer's output has ended and been judged (or the drain failed)
        self.drained_at: float | None = None
        self.error: str | None = None  # why the drain failed (a full disk)
        self.served = 0  # how far the current reader got
        self.punched = 0  # bytes before this offset are given back
        self.peak_bytes = 0  # the most the buffer ever held on disk
        self.reading = False  # a reader is attached
        self.progress_at = time.monotonic()  # when the reader last accepted data
        self.spilling = False  # draining regardless of the reader, until it has caught up
        self.spilled = False  # it ever did: the reader lagged, and HELD_BOUND did not apply
        self.hold_started: float | None = None  # since when the drain waits for the reader
        self.punch_works = True
        self.condition = threading.Condition()

    def held_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def _may_drain(self) -> bool:
        """Whether the drain may read more now. It waits while it is `SOFT_LIMIT` ahead of the
        reader (or no reader has come yet), but never for more than `SPILL_AFTER` seconds
        without the reader taking anything; then it spills (goes on regardless) until the
        reader has caught up. With `keep` it never waits: the disk holds the whole dump anyway."""
        if self.size - self.served < SOFT_LIMIT:
            self.spilling, self.hold_started = False, None
            return True
        if self.keep:
            return True
        if self.hold_started is None:
            self.hold_started = time.monotonic()
        if time.monotonic() - max(self.hold_started, self.progress_at) >= SPILL_AFTER:
            self.spilling = self.spilled = True
        return self.spilling

    def drain(self, source: int, stop: threading.Event) -> bool:
        """Read `source` to its end into the buffer (the drain thread's body); False when the
        buffer could not take it (`error` says why). `finish` then says the output is judged."""
        try:
            while not stop.is_set():
                with self.condition:
                    while not self._may_drain() and not stop.is_set():
                        self.condition.wait(0.1)
                data = os.read(source, CHUNK)
                if not data:
                    break
                self.digest.update(data)
                self.tail = (self.tail + data)[-TAIL:]
                if len(self.head) < HEAD:
                    self.head += data[:HEAD - len(self.head)]
                view, offset = memoryview(data), self.size
                while view:
                    written = os.pwrite(self.fd, view, offset)
                    view, offset = view[written:], offset + written
                with self.condition:
                    self.size += len(data)
                    self.peak_bytes = max(self.peak_bytes, self.held_bytes())
                    self.condition.notify_all()
        except OSError as error:
            with self.condition:
                self.error = (f"{error.strerror or error} writing the dump's buffer {self.path} "
                              f"({self.size} bytes drained, {self.size - self.served} not yet read by borg)")
                self.condition.notify_all()
            # The dump is lost: give its disk back at once, so that the streamers can still record
            # why (their status files live on the same, full, file system). No reader is served
            # from here on: `next_chunk` sees the error first.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            return False
        return True

    def finish(self, error: str | None) -> None:
        """The output is complete and judged: `error` says why it must not reach borg whole."""
        with self.condition:
            self.error, self.drained_at, self.done = error, time.time(), True
            self.condition.notify_all()

    def start_reader(self) -> None:
        with self.condition:
            self.reading, self.served, self.progress_at = True, 0, time.monotonic()
            self.condition.notify_all()

    def stop_reader(self) -> None:
        with self.condition:
            self.reading = False
            self.condition.notify_all()

    def next_chunk(self, timeout: float) -> bytes | None:
        """The next bytes for the current reader; b"" at the end of the output, None when
        nothing came within `timeout` (or the drain failed: see `error`)."""
        with self.condition:
            if self.served >= self.size and not self.done and self.error is None:
                self.condition.wait(timeout)
            if self.error is not None:
                return None
            if self.served >= self.size:
                return b"" if self.done else None
            length = min(CHUNK, self.size - self.served)
            offset = self.served
        return os.pread(self.fd, length, offset)

    def passed(self, length: int) -> None:
        """The reader took `length` more bytes: give back what it read, then wake the drain (in
        this order, or the drain writes its next chunk before the punch and passes HELD_BOUND)."""
        served = self.served + length  # only the reader's thread moves `served`
        upto = served - served % PUNCH_UNIT
        if not self.keep and self.punch_works and upto > self.punched:
            self.punch_works = punch_hole(self.fd, self.punched, upto - self.punched)
            self.punched = upto
        with self.condition:
            self.served = served
            self.progress_at = time.monotonic()
            self.condition.notify_all()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
