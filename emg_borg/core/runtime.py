"""The runtime directory, the ledger and the run lock, shared by the separate before/after processes.

borgmatic runs `before-backup` and `after-backup` as two processes, so whatever the first one
creates (snapshots, clones, mounts, staging files) is written to a ledger in the runtime
directory before it is created; the second process, or the next run after a crash, releases
what the ledger lists. The run lock says which run owns the runtime directory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
from pathlib import Path

from emg_borg.core import proc
from emg_borg.core.files import write_private
from emg_borg.errors import EmgBorgError, LockedError

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox"}
CORE = "core"  # the ledger owner of the core's own resources (the staging area)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class RuntimeDir:
    """The stable directory holding the patterns file, the lock, the ledger, staging and mounts."""

    def __init__(self, root):
        self.root = Path(root)
        self.patterns = self.root / "patterns"
        self.lock = self.root / "lock"
        self.ledger = self.root / "ledger.json"
        self.staging = self.root / "staging"
        self.snapshots = self.root / "snapshots"

    @property
    def instance_tag(self) -> str:
        """`emg-borg-<8 hex digits of the runtime_dir path>`: the name every snapshot, clone and
        volume of this installation carries, so that two EMG instances (two configurations,
        two runtime directories) never take or clean up each other's snapshots."""
        return "emg-borg-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:8]

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def staged(self, live_path) -> Path:
        """Where a staging file that lands in the archive at `live_path` is written."""
        return self.staging / str(live_path).lstrip("/")


class Ledger:
    """A persisted list of resources to release, each {"owner": plugin, "kind": ..., ...}."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict] = []
        self.meta: dict = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
                self.entries, self.meta = data.get("entries", []), data.get("meta", {})
            except (ValueError, OSError, AttributeError) as error:
                raise EmgBorgError(f"{path}: unreadable ledger ({error}); inspect and remove it by hand")

    def save(self) -> None:
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
        with contextlib.suppress(FileNotFoundError):
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


class RunLock:
    """The run lock: a file created exclusively, naming the owning process and run id."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"pid": 0, "run_id": "unknown", "started": "unknown"}

    def held_by_other_live_run(self, owner: int) -> dict | None:
        info = self.read()
        if info and info.get("pid") != owner and proc.alive(int(info.get("pid") or 0)):
            return info
        return None

    def acquire(self, owner: int, run_id: str) -> dict | None:
        """Take the lock. Return the stale lock's info when a dead run's lock was replaced."""
        stale = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                info = self.read() or {}
                pid = int(info.get("pid") or 0)
                if pid and proc.alive(pid):
                    raise LockedError(
                        f"another emg-borg backup is running (pid {pid}, run {info.get('run_id')}, started "
                        f"{info.get('started')}); lock file {self.path}"
                    )
                stale = info
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": owner, "run_id": run_id, "started": now_iso(), "host": socket.gethostname()}, f)
            return stale
        raise LockedError(f"cannot take the run lock {self.path}: another run keeps creating it")

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
