"""Streamed dumps: a producer writes into a named pipe that borg reads, with no copy on disk.

`start_producer` runs the dump command (inside the consistency point) with its stdout on a pipe,
through `sh -c` so that its exit code reaches the streamer; `ProducerHandle.carry` then starts the
streamer (`emg_borg.core.streamer`) that hashes the bytes on their way into the named pipe.
`serve_manifest` puts the manifest behind a named pipe too, served once every dump has passed.
Every process is written to the ledger (kind `stream`), so after-backup, on-error or the next
run stops it; `problems` tells a release what did not reach borg whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from emg_borg.core.files import write_private
from emg_borg.core.manifest import Dump
from emg_borg.core.runtime import CORE, Ledger, RuntimeDir
from emg_borg.core.proc import descends_from, kill_group_if, start_time
from emg_borg.core.proc import state as process_state
from emg_borg.core.named_pipe import release_named
from emg_borg.core.stream_guard import read_status
from emg_borg.errors import EmgBorgError

KIND = "stream"
FINAL_MANIFEST = "manifest.final.json"
MANIFEST_TEMPLATE = "manifest.json"
# The producer's exit code reaches the streamer through a pipe on the wrapping shell's fd 0 (the
# producer itself reads /dev/null and does not hold that pipe).
_WRAPPER = '"$@" </dev/null; code=$?; echo $code >&0; exit $code'


def streams_dir(runtime: RuntimeDir) -> Path:
    return runtime.root / "streams"


def _ensure_dir(runtime: RuntimeDir, ledger: Ledger) -> Path:
    directory = streams_dir(runtime)
    if not directory.exists():
        ledger.add(CORE, "staging", path=directory)  # removed with everything in it at release
        directory.mkdir(mode=0o700, parents=True)
    return directory


class ProducerHandle:
    """A producer started into a pipe; `carry` connects it to its named pipe through a streamer."""

    def __init__(self, runtime, ledger, owner, label, fifo, archive_path, footer, process, out_fd, exit_fd, name,
                 keep=False, head_check=None):
        self.runtime, self.ledger, self.owner, self.label, self.keep = runtime, ledger, owner, label, keep
        self.fifo, self.archive_path, self.footer, self.process = Path(fifo), archive_path, footer, process
        self.out_fd, self.exit_fd, self.name, self.head_check = out_fd, exit_fd, name, head_check
        self.status = streams_dir(runtime) / f"{name}.status.json"
        self.started = start_time(process.pid)  # our child, not yet reaped: its pid is still its own

    def poll(self) -> int | None:
        """The producer's exit code (its shell exits with it), or None while it runs."""
        return self.process.poll()

    def failure(self) -> str | None:
        """Why the producer failed, when it has already ended with an error: the streamer need
        not wait for borg to say so."""
        code = self.process.poll()
        if not code:
            return None
        stderr = streams_dir(self.runtime) / f"{self.name}.stderr"
        lines = [line.strip() for line in stderr.read_text(errors="replace").splitlines() if line.strip()] \
            if stderr.exists() else []
        return f"{self.label} failed (exit {code}): {lines[-1] if lines else 'no error output'}"

    def carry(self) -> None:
        """Start the streamer that moves the producer's output into the named pipe."""
        directory = streams_dir(self.runtime)
        spec = {"mode": "dump", "label": self.label, "fifo": str(self.fifo), "status": str(self.status),
                "stderr": str(directory / f"{self.name}.stderr"), "footer": self.footer,
                "buffer": str(directory / f"{self.name}.buffer"), "keep": self.keep, "head_check": self.head_check,
                "producer_pgid": self.process.pid, "producer_started": self.started, "exit_fd": self.exit_fd,
                **self.owner}
        spawn_streamer(self.runtime, self.ledger, self.name, spec, self.out_fd, (self.exit_fd,), fifo=self.fifo)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for fd in (self.out_fd, self.exit_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_fd = self.exit_fd = -1

    def abort(self) -> None:
        """Stop the producer (the run failed before the streamer took over)."""
        kill_group_if(self.process.pid, self.started, signal.SIGKILL)
        self.process.wait()
        self._close_pipes()

    def dump(self, plugin: str, database: str, **details) -> Dump:
        """The manifest's entry: size and sha256 are filled in by the manifest's streamer."""
        return Dump(plugin, database, self.archive_path, None, None, {"transfer": "stream", **details})


def owner_of(pid: int) -> dict:
    return {"owner": pid, "owner_started": start_time(pid)}


def start_producer(runtime: RuntimeDir, ledger: Ledger, owner_pid: int, *, name: str, label: str, argv: tuple,
                   fifo: Path, archive_path: str, footer: str, pass_fds=(), keep=False,
                   head_check=None) -> ProducerHandle:
    """Start `argv` writing into a pipe, in a process group of its own, its stderr kept for the
    error line. Returns at once: the caller waits for the producer's consistent view to begin.
    `keep`: every reader of the run gets the whole output (borgmatic retries `borg create`).
    `head_check`: what the dump's beginning must say (streamer.head_problem), or None."""
    directory = _ensure_dir(runtime, ledger)
    fifo = Path(fifo)
    fifo.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.mkfifo(fifo, 0o600)
    out_read, out_write = os.pipe()
    exit_read, exit_write = os.pipe()
    stderr = open(directory / f"{name}.stderr", "wb")
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, "sh", *argv], stdin=exit_write, stdout=out_write, stderr=stderr,
            pass_fds=pass_fds, start_new_session=True,  # its own process group, killed as one
        )
    finally:
        stderr.close()
        os.close(out_write)
        os.close(exit_write)
    ledger.add(CORE, KIND, pgid=process.pid, leader_started=start_time(process.pid), fifo=fifo, label=label)
    return ProducerHandle(runtime, ledger, owner_of(owner_pid), label, fifo, archive_path, footer, process,
                          out_read, exit_read, name, keep, head_check)


def spawn_streamer(runtime, ledger, name, spec, stdin, pass_fds=(), *, fifo=None) -> None:
    directory = streams_dir(runtime)
    spec_path = directory / f"{name}.spec.json"
    write_private(spec_path, json.dumps(spec))
    log = open(directory / f"{name}.log", "wb")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "emg_borg.core.streamer", str(spec_path)], stdin=stdin, stdout=subprocess.DEVNULL,
            stderr=log, pass_fds=pass_fds, start_new_session=True, cwd="/",
        )
    finally:
        log.close()
    started = start_time(process.pid)
    ledger.add(CORE, KIND, pgid=process.pid, leader_started=started, fifo=fifo, label=name)
    # Its status at once: a streamer that dies before it writes one is still found by the others,
    # which release its pipe (else a borg would wait on it for ever).
    # Only where the streamer has not written its own yet (a link cannot replace a file).
    first = Path(f"{spec['status']}.first")
    write_private(first, json.dumps({"state": "waiting", "label": spec.get("label", "the manifest"), "pid": process.pid,
                                     "pid_started": started, "fifo": spec["fifo"]}))
    with contextlib.suppress(FileExistsError):
        os.link(first, spec["status"])
    first.unlink()


def serve_manifest(runtime: RuntimeDir, ledger: Ledger, owner_pid: int, manifest: dict, fifo: Path,
                   streamed: list[ProducerHandle]) -> None:
    """Put the manifest behind the named pipe `fifo`, served with each streamed dump's size and
    sha256 once borg has read them all (the patterns file names the dumps first)."""
    directory = _ensure_dir(runtime, ledger)
    template = directory / MANIFEST_TEMPLATE
    write_private(template, json.dumps(manifest, indent=2) + "\n")
    fifo = Path(fifo)
    fifo.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.mkfifo(fifo, 0o600)
    spec = {"mode": "manifest", "fifo": str(fifo), "status": str(directory / "manifest.status.json"),
            "template": str(template), "final": str(directory / FINAL_MANIFEST),
            "dumps": {handle.archive_path: str(handle.status) for handle in streamed},
            "keep": any(handle.keep for handle in streamed), **owner_of(owner_pid)}
    spawn_streamer(runtime, ledger, "manifest", spec, subprocess.DEVNULL, fifo=fifo)


def staged_manifest(runtime: RuntimeDir, staged: Path) -> dict | None:
    """The run's manifest as far as it is known, without opening a named pipe (that would wait
    for a writer): the served manifest, else its template, else the staged file."""
    for path in (streams_dir(runtime) / FINAL_MANIFEST, streams_dir(runtime) / MANIFEST_TEMPLATE):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
    if staged.is_fifo():
        return None
    with contextlib.suppress(OSError, ValueError):
        return json.loads(staged.read_text())
    return None


def statuses(runtime: RuntimeDir) -> list[dict]:
    """What each streamer of the run recorded (its label, state, error, bytes)."""
    directory = streams_dir(runtime)
    return [read_status(str(path)) for path in sorted(directory.glob("*.status.json"))] if directory.is_dir() else []


def problems(runtime: RuntimeDir, unread: bool = True) -> list[str]:
    """Why the archive of this run cannot be trusted, one line per stream that did not reach
    borg whole; [] when every stream completed (or nothing was streamed). A stream that failed
    explains the others still waiting (borg was stopped before it reached them); streams borg
    never read count only with `unread` (after a borg that succeeded)."""
    found = sorted(statuses(runtime), key=lambda status: status.get("label") == "the manifest")
    errors = [s for s in found if s.get("state") == "failed"]
    if errors:
        stopped = {str(s.get("error")) for s in errors if s.get("stopped_readers")}
        return [f"{error}; borg was stopped, no archive was made" if error in stopped else error
                for error in dict.fromkeys(str(s.get("error")) for s in errors)]
    unread_labels = sorted((s.get("label") or "a stream" for s in found if s.get("state") != "complete"),
                           key=lambda label: label == "the manifest")
    if not unread or not unread_labels:
        return []
    return [f"borg did not read {' and '.join(unread_labels)}: the archive lacks "
            f"{'them' if len(unread_labels) > 1 else 'it'}; "
            f"borgmatic needs read_special: true and must not exclude emg-borg's named pipes"]


def release(entry: dict, run_owner: int) -> None:
    """Stop a stream's process group (if it is still the one recorded) and remove its pipe."""
    pgid = int(entry.get("pgid") or 0)
    if pgid and start_time(pgid) == entry.get("leader_started"):
        if entry.get("fifo"):
            # A borg of this run reading must not see the end of a cut-off dump; another reader
            # only loses the pipe.
            release_named(str(entry["fifo"]), ours=descends_from(run_owner))
        kill_group_if(pgid, entry.get("leader_started"), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while start_time(pgid) == entry.get("leader_started") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pgid, os.WNOHANG)  # our own child when the run fails inside before-backup
            if process_state(pgid) == "Z":
                break  # ended; its parent reaps it
            time.sleep(0.01)
        if start_time(pgid) == entry.get("leader_started") and process_state(pgid) not in ("Z", None):
            # Kept in the ledger, and the run lock with it: the dump may still hold its transaction.
            raise EmgBorgError(f"{entry.get('label', 'a stream')} (process group {pgid}) did not end after SIGKILL")
    if entry.get("fifo"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry["fifo"])
