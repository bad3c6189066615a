"""The run lock: which run owns the runtime directory, decided under flock(2).

A run's hooks are separate processes (before-backup, then after-backup or on-error, under one
borgmatic), so no process can hold a kernel lock for the whole run. The file `runtime_dir/lock`
names the run's owner instead: its pid, start time and boot (`proc.identity`), which name one
process even after the pid is reused. The file is replaced atomically (never seen empty or half
written) and, like the ledger, read, decided on and changed only in short critical sections
under an flock on the runtime directory (`RuntimeDir.guard`; the directory is the one file
that is never replaced). An owner that ended, is a zombie, or whose pid now names another
process has left a stale lock: the first run to look under the flock takes it over and releases
what the stale run's ledger lists; any other run then finds a live owner.
"""

from __future__ import annotations

import contextlib
import json
import socket

from emg_borg.core import proc
from emg_borg.core.files import TEMPORARY, read_private, write_private
from emg_borg.core.runtime import Ledger, RuntimeDir, now_iso
from emg_borg.errors import LockedError

NOTHING, OTHER, OURS = "nothing", "other", "ours"  # what after-backup finds (`claim`)


class RunLock:
    def __init__(self, runtime: RuntimeDir):
        self.runtime, self.path = runtime, runtime.lock

    def read(self) -> dict | None:
        """The lock's record; None when no run holds it. An unreadable one names no live process."""
        with self.runtime.guard():
            text = read_private(self.path)
        if text is None:
            return None
        with contextlib.suppress(ValueError):
            info = json.loads(text)
            if isinstance(info, dict):
                return info
        return {"run_id": "unknown", "started": "unknown"}

    @staticmethod
    def live(info: dict | None) -> bool:
        """Whether the record's owner still runs (`proc.running`)."""
        if not info:
            return False
        try:
            pid = int(info.get("pid") or 0)
        except (TypeError, ValueError):
            return False
        return proc.running(pid, info.get("pid_started"), info.get("boot"))

    @staticmethod
    def names(info: dict | None, owner_pid: int) -> bool:
        """Whether the record names the process `owner_pid` (and not an earlier one under its pid;
        a record of an older emg-borg has only the pid)."""
        me = proc.identity(owner_pid)
        keys = ("pid", "pid_started", "boot") if info and "pid_started" in info else ("pid",)
        return bool(info) and all(info.get(key) == me[key] for key in keys)

    def write(self, owner_pid: int, run_id: str, started: str) -> None:
        record = {**proc.identity(owner_pid), "run_id": run_id, "started": started, "host": socket.gethostname()}
        with self.runtime.guard():
            write_private(self.path, json.dumps(record) + "\n")

    def busy(self, info: dict) -> LockedError:
        return LockedError(f"another emg-borg backup is running (pid {info.get('pid')}, run {info.get('run_id')}, "
                           f"started {info.get('started')}); lock file {self.path}")

    def take(self, owner_pid: int, run_id: str, started: str, ledger: Ledger) -> dict | None:
        """before-backup: in one critical section, fail when a live run holds the lock, else write
        this run's record and read the ledger. Returns the record of a gone run whose lock was
        taken over (what its ledger lists is this run's to release), None when the lock was free."""
        with self.runtime.guard():
            info = self.read()
            if self.live(info):
                raise self.busy(info)
            self.write(owner_pid, run_id, started)
            ledger.load()
        return info

    def claim(self, owner_pid: int, ledger: Ledger, *, force: bool = False, dry_run: bool = False):
        """after-backup and on-error: in one critical section, read the lock and the ledger and
        take the run over unless another live run holds it. Returns (NOTHING, None) when no run
        left anything; (OTHER, record) when another live run holds the lock and not `force`;
        else (OURS, record), the lock then naming `owner_pid` (unless `dry_run`)."""
        with self.runtime.guard():
            info = self.read()
            ledger.load()
            if info is None and not ledger.entries:
                return NOTHING, None
            if self.live(info) and not self.names(info, owner_pid) and not force:
                return OTHER, info
            if not dry_run and not self.names(info, owner_pid):
                earlier = info or ledger.meta
                self.write(owner_pid, earlier.get("run_id", "unknown"), earlier.get("started", now_iso()))
        return OURS, info

    def give_up(self, owner_pid: int) -> None:
        """Remove the lock, unless it names another live run, and what a crash left of a write
        of the lock, the ledger or the patterns file (their temporary files)."""
        with self.runtime.guard():
            info = self.read()
            if info is not None and (self.names(info, owner_pid) or not self.live(info)):
                for leftover in self.runtime.root.glob(f".*{TEMPORARY}"):
                    leftover.unlink(missing_ok=True)
                self.path.unlink()
