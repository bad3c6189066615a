"""The runtime directory and the ledger, shared by the separate before/after processes.

borgmatic runs `before-backup` and `after-backup` as two processes, so whatever the first one
creates (snapshots, clones, mounts, staging files) is written to a ledger in the runtime
directory before it is created; the second process, or the next run after a crash, releases
what the ledger lists. The run lock (`core.runlock`) says which run owns the runtime directory;
the ledger is read and rewritten only under the runtime directory's flock (`RuntimeDir.guard`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path

from emg_borg.core import proc
from emg_borg.core.files import read_private, refuse_planted, write_private
from emg_borg.errors import EmgBorgError

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox"}
CORE = "core"  # the ledger owner of the core's own resources (the staging area)
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _directory_problem(directory: Path, below: bool) -> str | None:
    """Why root must not trust `directory` with its files: another user owns it, or another user
    may write in it. Above the runtime directory a sticky directory (/tmp) is fine: there only
    the owner of an entry may rename or remove it, and the next directory down is checked too."""
    uid = os.geteuid()
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None  # made by emg-borg, private
    if info.st_uid not in ({0, uid} if below else {uid}):
        return f"{directory} is owned by uid {info.st_uid}, not by {'root' if uid == 0 else f'uid {uid}'}"
    if info.st_mode & WRITABLE_BY_OTHERS and not (below and info.st_mode & stat.S_ISVTX):
        who = " and ".join(name for name, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                           if info.st_mode & bit)
        return f"{directory} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}; chmod go-w {directory})"
    return None


class RuntimeDir:
    """The stable directory holding the patterns file, the lock, the ledger, staging and mounts."""

    def __init__(self, root):
        self.root = Path(root)
        self.patterns = self.root / "patterns"
        self.lock = self.root / "lock"
        self.ledger = self.root / "ledger.json"
        self.staging = self.root / "staging"
        self.snapshots = self.root / "snapshots"
        self._guard_fd: int | None = None

    @property
    def instance_tag(self) -> str:
        """`emg-borg-<8 hex digits of the runtime_dir path>`: the name every snapshot, clone and
        volume of this installation carries, so that two EMG instances (two configurations,
        two runtime directories) never take or clean up each other's snapshots."""
        return "emg-borg-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:8]

    def unsafe(self) -> str | None:
        """Why the runtime directory cannot hold root's lock, ledger and patterns: it or a
        directory above it (as written and as resolved) may be changed by another user, who
        could then plant a link there or swap the directory. None when it is safe (or does not
        exist yet and would be made safe)."""
        top = Path(os.path.abspath(self.root))
        for path in dict.fromkeys((top, Path(os.path.realpath(top)))):
            for directory in (path, *path.parents):
                problem = _directory_problem(directory, below=directory != path)
                if problem:
                    return problem
        return None

    def ensure(self) -> None:
        """Make the directory (private), after checking that nobody else can change it and
        that no link or other file stands where emg-borg keeps its own."""
        problem = self.unsafe()
        if problem:
            raise EmgBorgError(f"runtime_dir {self.root} is not safe: {problem}")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for path in (self.lock, self.ledger, self.patterns):
            refuse_planted(path)

    @contextlib.contextmanager
    def guard(self):
        """Hold an exclusive flock on the runtime directory for a short critical section: every
        look at the run lock or the ledger that decides something, and every change of them,
        happens inside one. Reentrant within this object; a process that dies drops it."""
        if self._guard_fd is not None:
            yield
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # never inherited by a child
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._guard_fd = fd
            yield
        finally:
            self._guard_fd = None
            os.close(fd)

    def staged(self, live_path) -> Path:
        """Where a staging file that lands in the archive at `live_path` is written."""
        return self.staging / str(live_path).lstrip("/")


class Ledger:
    """A persisted list of resources to release, each {"owner": plugin, "kind": ..., ...}.

    Only the process whose run holds the run lock changes it, and only under the runtime
    directory's flock; it is read under the flock when the lock is taken (`load`)."""

    def __init__(self, runtime: RuntimeDir):
        self.runtime = runtime
        self.path = runtime.ledger
        self.entries: list[dict] = []
        self.meta: dict = {}

    def load(self) -> None:
        with self.runtime.guard():
            text = read_private(self.path)
        self.entries, self.meta = [], {}
        if text is None:
            return
        try:
            data = json.loads(text)
            self.entries, self.meta = list(data.get("entries", [])), dict(data.get("meta", {}))
        except (ValueError, AttributeError, TypeError) as error:
            raise EmgBorgError(f"{self.path}: unreadable ledger ({error}); inspect and remove it by hand")

    def save(self) -> None:
        with self.runtime.guard():
            write_private(self.path, json.dumps({"meta": self.meta, "entries": self.entries}, indent=1))

    def add(self, owner: str, kind: str, **data) -> dict:
        """Record a resource before it is created, so a crash mid-way still finds it."""
        entry = {"owner": owner, "kind": kind, **{k: str(v) if isinstance(v, Path) else v for k, v in data.items()}}
        self.entries.append(entry)
        self.save()
        return entry

    def of(self, owner: str | None = None, kind: str | None = None) -> list[dict]:
        """Entries of `owner` (and `kind`), newest first: the order to release them in."""
        return [e for e in reversed(self.entries)
                if (owner is None or e["owner"] == owner) and (kind is None or e["kind"] == kind)]

    def remove(self, entry: dict) -> None:
        """Forget a released resource. When the file cannot be rewritten (a full disk: the
        staging area is released last) the entry is forgotten here and the file catches up at the
        next save or is deleted when empty; the resource is gone either way."""
        if entry in self.entries:
            self.entries.remove(entry)
            try:
                self.save()
            except OSError:
                self.unsaved = True

    unsaved = False

    def delete(self) -> None:
        with self.runtime.guard(), contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _is_command_shell(pid: int) -> bool:
    """A shell started with `-c` just to run one command (as borgmatic runs each hook)."""
    if proc.comm(pid) not in SHELLS:
        return False
    return b"-c" in proc.cmdline(pid)[1:3]


def run_owner_pid() -> int:
    """The process a run belongs to: the nearest borgmatic ancestor, else the nearest ancestor
    that is not a one-command shell.

    borgmatic runs each hook through `sh -c` (and maybe a wrapper script), so those differ
    between before-backup and after-backup while the borgmatic process above them is the same,
    and runs borg after the hooks: the run lock and the dump streams live as long as it does. A
    backup script's own shell (`bash backup.sh`) is the owner when a script drives the hooks, so
    two scripts started by the same cron daemon are two owners.
    """
    pid = os.getppid()
    while pid > 1:
        if proc.comm(pid) == "borgmatic":
            return pid
        pid = proc.parent(pid)
    pid = os.getppid()
    while pid > 1 and _is_command_shell(pid):
        pid = proc.parent(pid)
    return pid if pid > 1 else os.getppid()
