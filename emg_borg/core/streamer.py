"""The process that carries a streamed dump into borg: `python -m emg_borg.core.streamer SPEC`.

before-backup starts the producer (a dump command) inside the consistency point with its stdout on a
pipe, and then this process (mode `dump`): it reads the pipe, counts and hashes every byte and
writes it into a named pipe in the staging area, which `borg create --read-special` stores as the
dump's archive member. A second instance (mode `manifest`) serves `emg-borg/manifest.json` through
a named pipe once every dump has passed, so the manifest carries each dump's size and sha256:
the patterns file names the dumps before the manifest, and borg reads its roots in that order.

No archive may look good with a bad dump in it. When the producer fails or ends without its
completion line, or borg reaches the manifest before a dump, the failure is recorded and borg
is stopped (SIGTERM to whoever reads the pipe) before this end of the pipe closes: borg never
sees the end of a truncated file, and its `create` fails. Each streamer exits by itself once the
run's owner (borgmatic) is gone; after-backup and on-error stop it otherwise.

It imports only the standard library and two small core modules: it starts next to a frozen
database, and must not wait for imports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from emg_borg.core.files import write_private
from emg_borg.core.proc import start_time

CHUNK = 1 << 20
F_SETPIPE_SZ = 1031  # Linux: a larger pipe lets the producer run ahead of short stalls in borg
READER_STOP_SECONDS = 10
HEAD_BYTES = 1 << 16  # how much of a dump's beginning a head check reads


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
    """The process the run belongs to; the streamer gives up when it is gone."""

    def __init__(self, pid: int, started: str | None):
        self.pid, self.started = pid, started

    def gone(self) -> bool:
        return start_time(self.pid) != self.started


def release_pipe(fifo: str, path_fd: int) -> None:
    """Make sure nobody waits on the pipe after this process, and nobody reads an end of file
    from it: through the O_PATH descriptor taken at start, open its write end (a reader blocked
    in open() gets through), stop every reader, then close and remove the name (a later open
    fails at once)."""
    writer = None
    with contextlib.suppress(OSError):
        writer = os.open(f"/proc/self/fd/{path_fd}", os.O_WRONLY | os.O_NONBLOCK)
    if writer is not None:
        stop_readers(fifo, os.fstat(path_fd))
        os.close(writer)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fifo)


def wait_for_reader(fifo: str, owner: Owner) -> int | None:
    """Open the named pipe for writing once a reader has opened it; None when the owner is gone.
    Polled (a blocking open could not notice that borgmatic ended)."""
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
        if owner.gone():
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def readers(fifo: str, wanted=None) -> list[int]:
    """The processes (borg) holding the named pipe open, found through /proc/PID/fd."""
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


def stop_readers(fifo: str, wanted=None) -> list[int]:
    """SIGTERM every reader of the pipe (borg ends its create without an archive); SIGKILL those
    still there after READER_STOP_SECONDS. `wanted`: the pipe's stat when its name is gone."""
    pids = readers(fifo, wanted)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + READER_STOP_SECONDS
    while time.monotonic() < deadline and any(pid in readers(fifo, wanted) for pid in pids):
        time.sleep(0.05)
    for pid in readers(fifo, wanted):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def last_line(path: str) -> str:
    with contextlib.suppress(OSError):
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else ""
    return ""


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fail(spec: dict, status: dict, error: str, fd: int | None) -> int:
    """Record the failure, stop borg if it is reading (before it can see an end of file), close."""
    status.update(state="failed", error=error, ended=time.time())
    write_status(spec["status"], status)
    if fd is not None:
        status["stopped_readers"] = stop_readers(spec["fifo"])
        write_status(spec["status"], status)
        with contextlib.suppress(OSError):
            os.close(fd)
    return 1


def stop_producer(spec: dict) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(spec["producer_pgid"], signal.SIGKILL)


def head_problem(head: bytes, check: dict | None) -> str | None:
    """Why a dump's beginning is not what `check` expects, or None when it is (or there is no
    check). `check`: `regex`, searched line by line in the first HEAD_BYTES; `expected`, what its
    groups must be, joined by ':'; `message`, the failure, with {found} and {expected} filled in."""
    if not check:
        return None
    match = re.search(check["regex"].encode(), head[:HEAD_BYTES], re.MULTILINE)
    found = b":".join(match.groups() or (match.group(0),)).decode(errors="replace") if match else "none"
    if found == check["expected"]:
        return None
    return check["message"].replace("{found}", found).replace("{expected}", check["expected"])


def exit_status(fd: int) -> int | None:
    """The producer's exit code, which its `sh -c` wrapper writes to `fd` when it ends."""
    data = b""
    while chunk := os.read(fd, 64):
        data += chunk
    try:
        return int(data.strip())
    except ValueError:
        return None


def stream_dump(spec: dict, owner: Owner) -> int:
    label, footer = spec["label"], spec["footer"].encode()
    status = {"state": "waiting", "label": label, "pid": os.getpid(), "started": time.time()}
    write_status(spec["status"], status)
    with contextlib.suppress(OSError):
        fcntl.fcntl(0, F_SETPIPE_SZ, CHUNK)
    fd = wait_for_reader(spec["fifo"], owner)
    if fd is None:
        stop_producer(spec)
        return fail(spec, status, f"borg never read {label}: the run ended first", None)
    status.update(state="streaming", opened=time.time())
    write_status(spec["status"], status)
    digest, size, tail, head, check = hashlib.sha256(), 0, b"", b"", spec.get("head_check")
    try:
        while data := os.read(0, CHUNK):
            if check and len(head) < HEAD_BYTES:
                head += data[:HEAD_BYTES - len(head)]
                if len(head) == HEAD_BYTES and (problem := head_problem(head, check)):
                    stop_producer(spec)
                    return fail(spec, status, problem, fd)
            digest.update(data)
            size += len(data)
            tail = (tail + data)[-512:]
            write_all(fd, data)
    except BrokenPipeError:
        stop_producer(spec)
        return fail(spec, status, f"borg stopped reading {label} after {size} bytes", None)
    code = exit_status(spec["exit_fd"])
    if code != 0:
        why = last_line(spec["stderr"]) or "no error output"
        return fail(spec, status, f"{label} failed (exit {code if code is not None else 'unknown'}): {why}", fd)
    if footer not in tail:
        return fail(spec, status, f"{label} is incomplete: no '{spec['footer']}' line at its end", fd)
    if check and len(head) < HEAD_BYTES and (problem := head_problem(head, check)):  # a short dump
        return fail(spec, status, problem, fd)
    # The status first: borg, seeing the end of this file, goes on to the manifest, whose server
    # reads this status.
    status.update(state="complete", bytes=size, sha256=digest.hexdigest(), ended=time.time())
    write_status(spec["status"], status)
    os.close(fd)
    return 0


def serve_manifest(spec: dict, owner: Owner) -> int:
    status = {"state": "waiting", "label": "the manifest", "pid": os.getpid(), "started": time.time()}
    write_status(spec["status"], status)
    fd = wait_for_reader(spec["fifo"], owner)
    if fd is None:
        return fail(spec, status, "borg never read the manifest: the run ended first", None)
    with open(spec["template"]) as f:
        manifest = json.load(f)
    seconds = []
    for dump in manifest.get("dumps", []):
        streamed = spec["dumps"].get(dump["path"])
        if streamed is None:
            continue
        result = read_status(streamed)
        if result.get("state") != "complete":
            why = result.get("error") or (f"borg reached the manifest before reading {dump['path']} (was it "
                                          f"excluded? borgmatic needs read_special: true)")
            return fail(spec, status, why, fd)
        dump["bytes"], dump["sha256"] = result["bytes"], result["sha256"]
        seconds.append(result["ended"] - result["started"])
    if seconds and "dump_seconds" in manifest:  # a streamed dump lasts until borg has read it
        manifest["dump_seconds"] = round(max(seconds), 3)
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    with open(spec["final"], "wb") as f:
        f.write(data)
    status.update(state="complete", bytes=len(data), ended=time.time())
    write_status(spec["status"], status)
    write_all(fd, data)
    os.close(fd)
    return 0


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    # SIGTERM from a release ends the process at once; a reader gone shows as BrokenPipeError.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    owner = Owner(spec["owner"], spec.get("owner_started"))
    path_fd = os.open(spec["fifo"], os.O_PATH)
    code = 1
    try:
        code = stream_dump(spec, owner) if spec["mode"] == "dump" else serve_manifest(spec, owner)
    except Exception as error:  # noqa: BLE001 - whatever breaks must reach the status file
        status = read_status(spec["status"])
        if spec["mode"] == "dump":
            stop_producer(spec)
        fail(spec, status, f"{status.get('label', spec['mode'])}: {type(error).__name__}: {error}", None)
        # Before this process's end closes the pipe under a reading borg.
        status["stopped_readers"] = stop_readers(spec["fifo"])
        write_status(spec["status"], status)
    finally:
        # A run that failed or ended before borg came: no borg may wait on the pipe now. After
        # a success the pipe stays until the release (borg still looks at the path once it has
        # read it).
        if code != 0:
            release_pipe(spec["fifo"], path_fd)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
