"""Named pipes that borg reads: waiting for a reader, finding who holds one open, stopping its
readers, and making sure nobody waits on one after its writer is gone."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time

READER_STOP_SECONDS = 10


def release_pipe(fifo: str, path_fd: int, ours=None) -> None:
    """Make sure nobody waits on the pipe after this, and nobody of ours reads an end of file
    from it: remove the name first (a later open fails at once), then, through the O_PATH
    descriptor, open its write end (a reader blocked in open() gets through), stop the readers
    that `ours` names, and close."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fifo)
    writer = None
    with contextlib.suppress(OSError):
        writer = os.open(f"/proc/self/fd/{path_fd}", os.O_WRONLY | os.O_NONBLOCK)
    if writer is not None:
        try:
            # A reader woken from open() shows in /proc a moment later: look for it a while.
            wanted, deadline = os.fstat(path_fd), time.monotonic() + 0.3
            while not readers(fifo, wanted) and time.monotonic() < deadline:
                time.sleep(0.01)
            stop_readers(fifo, wanted, ours)
        finally:
            os.close(writer)


def release_named(fifo: str, ours=None) -> None:
    """`release_pipe` for a pipe this process holds no descriptor of (another process's)."""
    try:
        path_fd = os.open(fifo, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        release_pipe(fifo, path_fd, ours)
    finally:
        os.close(path_fd)


def wait_for_reader(fifo: str, give_up) -> int | None:
    """Open the named pipe for writing once a reader has opened it; None when `give_up()` says
    so (the owner is gone, the dump failed). Polled: a blocking open could notice neither."""
    pause = 0.005
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nobody reads yet
                raise
        else:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            return fd
        if give_up():
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def readers(fifo: str, wanted=None) -> list[int]:
    """The processes holding the named pipe open, found through /proc/PID/fd."""
    try:
        wanted = wanted or os.stat(fifo)
    except OSError:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(fd.path)
                    if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
                        found.append(int(entry.name))
                        break
    return found


def stop_readers(fifo: str, wanted=None, ours=None) -> list[int]:
    """SIGTERM the readers of the pipe for which `ours(pid)` holds (all without it), so that
    borg ends its create without an archive; SIGKILL those still there after
    READER_STOP_SECONDS. Another process only loses its pipe. `wanted`: the pipe's stat when its
    name is gone."""
    pids = [pid for pid in readers(fifo, wanted) if ours is None or ours(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + READER_STOP_SECONDS
    while time.monotonic() < deadline and any(pid in readers(fifo, wanted) for pid in pids):
        time.sleep(0.05)
    for pid in readers(fifo, wanted):
        if pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
