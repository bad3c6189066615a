"""State of one backup run, shared by the hooks and by the separate before/after processes.

borgmatic runs `before-backup` and `after-backup` as two processes, so whatever the first one
creates (snapshots, clones, mounts, staging files) is written to a ledger in the runtime
directory before it is created; the second process, or the next run after a crash, releases
what the ledger lists. The run lock says which run owns the runtime directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import datetime
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from emg_borg.emg.categories import within
from emg_borg.errors import EmgBorgError, LockedError

logger = logging.getLogger(__name__)

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox"}


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write a file atomically, readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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

    @property
    def manifest(self) -> Path:
        return self.staging / "emg-borg" / "manifest.json"

    @property
    def dumps(self) -> Path:
        return self.staging / "emg-borg" / "mysql"


@dataclasses.dataclass
class Snapshot:
    """A frozen view of the file system holding SPOOLDIR.

    `origin` is the live path the snapshot covers (a mount point or a subvolume); its content is
    visible at `base / origin` (relative), so borg reads `base/./<live path>` and archives the live
    path. `prune` lists single directories (real, on disk) that must never be archived, like the
    snapshot's own directory when a live root contains it; they are pruned by exact path, so
    roots below them (the snapshot itself) stay. `holes` lists other file systems mounted below
    `origin` that the snapshot does not contain: paths in them are not covered (read live).
    """

    provider: str
    origin: Path
    base: Path
    name: str
    device: str | None = None
    prune: list[Path] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)
    holes: list[Path] = dataclasses.field(default_factory=list)

    def covers(self, path) -> bool:
        path = Path(path)
        return within(path, self.origin) and not any(within(path, hole) for hole in self.holes)

    def real(self, live_path) -> Path:
        return self.base / str(live_path).lstrip("/")

    def to_dict(self) -> dict:
        return {
            "provider": self.provider, "origin": str(self.origin), "base": str(self.base),
            "name": self.name, "device": self.device, "details": self.details,
            **({"holes": [str(h) for h in self.holes]} if self.holes else {}),
        }


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
            except (ValueError, OSError) as error:
                raise EmgBorgError(f"{path}: unreadable ledger ({error}); inspect and remove it by hand")

    def save(self) -> None:
        write_private(self.path, json.dumps({"meta": self.meta, "entries": self.entries}, indent=1))

    def add(self, owner: str, kind: str, **data) -> dict:
        """Record a resource before it is created, so a crash mid-way still finds it."""
        entry = {"owner": owner, "kind": kind, **{k: str(v) if isinstance(v, Path) else v for k, v in data.items()}}
        self.entries.append(entry)
        self.save()
        return entry

    def of(self, owner: str, kind: str | None = None) -> list[dict]:
        """Entries of `owner` (and `kind`), newest first: the order to release them in."""
        return [e for e in reversed(self.entries) if e["owner"] == owner and (kind is None or e["kind"] == kind)]

    def remove(self, entry: dict) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
            self.save()

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_command_shell(pid: int) -> bool:
    """A shell started with `-c` just to run one command (as borgmatic runs each hook)."""
    if _comm(pid) not in SHELLS:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-c" in argv[1:3]


def run_owner_pid() -> int:
    """The process a run belongs to: the nearest ancestor that is not a one-command shell.

    borgmatic runs each hook through `sh -c`, so that shell differs between before-backup and
    after-backup while the borgmatic process above it is the same. A backup script's own shell
    (`bash backup.sh`) is the owner when a script drives the hooks, so two scripts started by
    the same cron daemon are two owners.
    """
    pid = os.getppid()
    while pid > 1 and _is_command_shell(pid):
        pid = _parent(pid)
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
        if info and info.get("pid") != owner and _pid_alive(int(info.get("pid") or 0)):
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
                if pid and _pid_alive(pid):
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


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclasses.dataclass
class BackupRun:
    """Everything one backup run knows; hooks read and fill it in."""

    config: Any
    runtime: RuntimeDir
    ledger: Ledger
    hook: Any
    dry_run: bool = False
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: str = dataclasses.field(default_factory=now_iso)
    layout: Any = None
    categories: tuple = ()
    provider: str = "none"
    snapshot: Snapshot | None = None
    message_id: int | None = None
    message_id_source: str | None = None
    binlog: dict | None = None
    dump_results: list = dataclasses.field(default_factory=list)
    lock_state: str = "not used"
    freeze_window_ms: float | None = None
    repository: str | None = None
    plugin_state: dict = dataclasses.field(default_factory=dict)  # per-plugin scratch space
    release_errors: list = dataclasses.field(default_factory=list)  # releases that failed
    failures: list = dataclasses.field(default_factory=list)  # problems found while releasing

    def borg_root(self, live_path) -> str:
        """The `R` root for a live path: `base/./path` when a snapshot covers it."""
        live_path = Path(live_path)
        if self.snapshot is not None and self.snapshot.covers(live_path):
            return f"{self.snapshot.base}/./{str(live_path).lstrip('/')}"
        return str(live_path)

    def real_path(self, live_path, walked_from=None) -> Path:
        """Where borg reads a live path: inside the snapshot when the snapshot covers it, or
        covers `walked_from`, the root whose walk reaches it."""
        live_path = Path(live_path)
        if self.snapshot is not None and self.snapshot.covers(walked_from or live_path):
            return self.snapshot.real(live_path)
        return live_path


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
