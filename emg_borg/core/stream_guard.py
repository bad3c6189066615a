"""Who may read a run's named pipes, and what happens to those that may not.

Only the run's own borg (a descendant of the borgmatic process that ran before-backup, its
`Owner`) may open a pipe; a reader is looked for anew for each `borg create` of the run (a
retry), and the other streamers of the run are watched: one that was killed leaves a pipe that
nobody would ever write, so its pipe is released for it (`release_orphans`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from emg_borg.core import proc
from emg_borg.core.files import write_private
from emg_borg.core.named_pipe import readers, release_named, stop_readers, wait_for_reader

SETTLE_SECONDS = 2.0
LOOK_SECONDS = 0.5


def write_status(path: str, status: dict) -> None:
    """Atomically replace the status file (read by after-backup, on-error and the manifest server)."""
    write_private(Path(path), json.dumps(status))


def read_status(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"state": "unknown"}


class Owner:
    """The process the run belongs to (borgmatic): the streamer gives up when it is gone, and
    only its descendants (its borg) may read a pipe."""

    def __init__(self, pid: int, started: str | None):
        self.pid, self.started = pid, started
        self.known: set[int] = set()  # the run's readers seen so far, ours also once it is gone
        self.borgs: dict[int, str | None] = {}  # the owner's borg processes seen, by start time
        self._descendant = proc.descends_from(pid)

    def gone(self) -> bool:
        return not proc.running(self.pid, self.started)

    def ancestor_of(self, pid: int) -> bool:
        return self._descendant(pid) and not self.gone()

    def ours(self, pid: int) -> bool:
        """A reader to stop rather than merely leave without its pipe: the run's borg."""
        return pid in self.known or self.ancestor_of(pid)

    def note_borgs(self) -> None:
        """Remember the owner's borg children (by start time): a borgmatic that is killed leaves
        its borg running, and that borg must not go on to archive the tree without the dump.
        The owner's children come from /proc (one small file), not from a scan of every process."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            children = [pid for pid in proc.pids_matching(lambda name: name.startswith("borg"))
                        if proc.parent(pid) == self.pid]
        for pid in children:
            started = proc.start_time(pid)
            if proc.comm(pid).startswith("borg") and self.borgs.get(pid) != started:
                self.borgs[pid] = started

    def stop_left_borgs(self) -> None:
        """SIGTERM the borg processes the (now gone) owner left running: borg ends its create
        without an archive."""
        for pid, started in self.borgs.items():
            if started is not None and proc.start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        self.borgs.clear()


class Refused(Exception):
    """A reader that may not read the pipe: the run fails with this message."""


def next_reader(fifo: str, give_up, previous: set[int], ours=None) -> tuple[int | None, set[int]]:
    """The write end of the pipe once a new reader has opened it, and who holds it; (None, ...)
    when `give_up()` says so. The readers of the last session may still hold their end, with
    bytes left to read: this end is not opened again until the run's own have let go (a writer
    would keep them from their end of file), another process's for at most SETTLE_SECONDS. A
    reader's descriptor shows in /proc only once its open() has returned, a moment after this
    end opened: the write end stays open until a reader that was not there before shows
    (closing it would give a new reader an empty file)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while not give_up():
        held = previous & set(readers(fifo))
        if not held or (time.monotonic() >= deadline and not any(ours(pid) for pid in held if ours)):
            break
        time.sleep(0.05)
    fd = wait_for_reader(fifo, give_up)
    if fd is None:
        return None, set()
    pause = 0.002
    try:
        while True:
            holders = set(readers(fifo))
            if holders - previous:
                fd, kept = -1, fd
                return kept, holders
            if give_up():
                return None, set()
            time.sleep(pause)
            pause = min(pause * 2, 1.0)  # a /proc scan costs: back off while nothing new comes
    finally:
        if fd >= 0:
            os.close(fd)


def release_orphans(spec: dict, ours) -> None:
    """Release the pipes of this run's other streamers that ended without saying why (killed):
    a borg waiting to open one would wait forever. Their status says so."""
    own = Path(spec["status"])
    for path in own.parent.glob("*.status.json"):
        status = read_status(str(path))
        if (path == own or status.get("state") not in ("waiting", "streaming", "interrupted")
                or not status.get("pid") or proc.running(status["pid"], status.get("pid_started"))):
            continue
        status.update(state="failed", ended=time.time(),
                      error=f"the streamer of {status.get('label', 'a dump')} (pid {status['pid']}) ended unexpectedly")
        with contextlib.suppress(OSError):
            write_status(str(path), status)
        if status.get("fifo"):
            release_named(status["fifo"], ours)


def watching(spec: dict, owner: Owner):
    """`give_up` for a wait: the owner gone (then the borg it left is stopped); meanwhile,
    every LOOK_SECONDS, the owner's borg is noted, and other streamers of the run that died are
    noticed and their pipes released."""
    next_look = [0.0]

    def give_up() -> bool:
        gone = owner.gone()
        if gone:
            owner.stop_left_borgs()
        elif time.monotonic() >= next_look[0]:
            next_look[0] = time.monotonic() + LOOK_SECONDS
            release_orphans(spec, owner.ours)
            owner.note_borgs()
        return gone
    return give_up


def check_readers(spec: dict, owner: Owner, read_before: bool) -> None:
    """Raise Refused when a process other than the run's borg holds the pipe, or when the pipe
    is opened again after a reader had it whole and the spec does not keep it for a retry."""
    label = spec.get("label", "the manifest")
    for pid in readers(spec["fifo"]):
        if not owner.ancestor_of(pid):
            raise Refused(f"another process (pid {pid}, {proc.comm(pid) or 'gone'}) opened the named pipe of {label}: "
                          f"only the run's own borg may read it, so the archive cannot be trusted")
    if read_before and not spec.get("keep"):
        raise Refused(f"{label} was opened a second time after borg had read it whole; a streamed dump is read "
                      f"once (with borgmatic's retries it is kept for a second reader)")


def refuse_readers(spec: dict, owner: Owner) -> None:
    """After a failure, while the run goes on (borgmatic may retry borg create): stop every borg
    of the run that opens the pipe again, so that no retry archives the tree without the dump;
    another opener only loses the pipe."""
    give_up, previous = watching(spec, owner), set()
    while True:
        fd, previous = next_reader(spec["fifo"], give_up, previous, owner.ours)
        if fd is None:
            return
        owner.known |= {pid for pid in previous if owner.ancestor_of(pid)}
        stop_readers(spec["fifo"], ours=owner.ours)
        os.close(fd)
