"""The process that carries a streamed dump into borg: `python -m emg_borg.core.streamer SPEC`.

before-backup starts the producer (a dump command) inside the consistency point with its stdout on a
pipe, and then this process (mode `dump`): a drain thread reads that pipe at the producer's own
pace into a disk buffer (`dump_buffer`), counting and hashing every byte, and the main thread
serves the buffer into a named pipe in the staging area, which `borg create --read-special` stores
as the dump's archive member. A second instance (mode `manifest`) serves `emg-borg/manifest.json`
through a named pipe once every dump has passed, so the manifest carries each dump's size and
sha256: the patterns file names the dumps before the manifest, and borg reads its roots in order.

No archive may look good with a bad dump in it. When the producer fails or ends without its
completion line, the buffer's disk is full, borg reaches the manifest before a dump, or any
process but the run's own borg (a descendant of the run's borgmatic) opens a pipe, the failure is
recorded and borg is stopped (SIGTERM) before this end of the pipe closes: borg never sees the end
of a truncated file, and its `create` fails. Each streamer stays until the release, serving a
retried `borg create` again when the spec says `keep` (borgmatic's `retries`), and exits by itself
once the run's owner (borgmatic) is gone, removing its pipe so that no later borg waits on it.

It imports only the standard library and small core modules: it starts right after the
consistency point, next to a running dump.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from emg_borg.core import proc
from emg_borg.core.dump_buffer import CHUNK, DumpBuffer
from emg_borg.core.files import write_private
from emg_borg.core.named_pipe import release_pipe, stop_readers, write_all
from emg_borg.core.stream_guard import (Owner, Refused, check_readers, next_reader, read_status, refuse_readers,
                                        watching, write_status)

F_SETPIPE_SZ = 1031  # Linux: a larger pipe lets the producer run ahead of short stalls
READER_CHECK_SECONDS = 2.0  # how often the readers of a pipe being served are looked at


def last_line(path: str) -> str:
    with contextlib.suppress(OSError):
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else ""
    return ""


def fail(spec: dict, status: dict, error: str, fd: int | None, owner: Owner) -> int:
    """Stop the run's borg if it is reading (before it can see an end of file), record the
    failure (a full disk may refuse the record: borg is stopped all the same), close."""
    if fd is not None:
        status["stopped_readers"] = stop_readers(spec["fifo"], ours=owner.ours)
        with contextlib.suppress(OSError):
            os.close(fd)
    status.update(state="failed", error=error, ended=time.time())
    with contextlib.suppress(OSError):
        write_status(spec["status"], status)
    return 1


def stop_producer(spec: dict) -> None:
    proc.kill_group_if(spec["producer_pgid"], spec.get("producer_started"), signal.SIGKILL)


def head_problem(head: bytes, check: dict | None) -> str | None:
    """Why a dump's beginning is not what `check` expects, or None when it is (or there is no
    check). `check`: `regex`, searched line by line in the first HEAD bytes; `expected`, what its
    groups must be, joined by ':'; `message`, the failure, with {found} and {expected} filled in."""
    if not check:
        return None
    match = re.search(check["regex"].encode(), head, re.MULTILINE)
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


def drain_and_judge(spec: dict, buffer: DumpBuffer, stop: threading.Event) -> None:
    """The drain thread: the producer's output into the buffer, then its verdict: a non-zero
    exit or a missing completion line is the buffer's error."""
    try:
        judge(spec, buffer, stop)
    except Exception as error:  # noqa: BLE001 - the server must learn of it, or borg would wait
        stop_producer(spec)
        buffer.finish(f"{spec['label']}: {type(error).__name__}: {error}")


def judge(spec: dict, buffer: DumpBuffer, stop: threading.Event) -> None:
    if not buffer.drain(0, stop):
        stop_producer(spec)
        buffer.finish(buffer.error)
        return
    code = exit_status(spec["exit_fd"])
    error = None
    if code != 0:
        why = last_line(spec["stderr"]) or "no error output"
        error = f"{spec['label']} failed (exit {code if code is not None else 'unknown'}): {why}"
    elif spec["footer"].encode() not in buffer.tail:
        error = f"{spec['label']} is incomplete: no '{spec['footer']}' line at its end"
    else:
        error = head_problem(buffer.head, spec.get("head_check"))
    buffer.finish(error)


def serve_reader(fd: int, buffer: DumpBuffer, spec: dict, owner: Owner) -> None:
    """Give one reader the whole dump. Raises Refused (a reader that may not read), BrokenPipeError
    (the reader went away) or RuntimeError (the dump failed, the run ended)."""
    buffer.start_reader()
    next_check = time.monotonic() + READER_CHECK_SECONDS
    try:
        while True:
            data = buffer.next_chunk(0.5)
            if buffer.error is not None:
                raise RuntimeError(buffer.error)
            if data == b"":
                break
            if data is None:
                if owner.gone():
                    raise RuntimeError(f"the run ended while borg read {spec['label']}")
                continue
            write_all(fd, data)
            buffer.passed(len(data))
            if time.monotonic() >= next_check:
                if owner.gone():  # borgmatic was killed: its borg must not archive this dump
                    raise RuntimeError(f"the run's borgmatic ended while borg read {spec['label']}")
                check_readers(spec, owner, False)
                next_check = time.monotonic() + READER_CHECK_SECONDS
        if owner.gone():
            raise RuntimeError(f"the run's borgmatic ended while borg read {spec['label']}")
        check_readers(spec, owner, False)  # the last look before the end of file
    finally:
        buffer.stop_reader()


def stream_dump(spec: dict, owner: Owner) -> int:
    label = spec["label"]
    status = {"state": "waiting", "label": label, "pid": os.getpid(), "pid_started": proc.start_time(os.getpid()),
              "fifo": spec["fifo"], "started": time.time(), "reads": 0}
    write_status(spec["status"], status)
    with contextlib.suppress(OSError):
        fcntl.fcntl(0, F_SETPIPE_SZ, CHUNK)
    buffer = DumpBuffer(spec["buffer"], bool(spec.get("keep")))
    stop = threading.Event()
    threading.Thread(target=drain_and_judge, args=(spec, buffer, stop), daemon=True).start()
    previous: set[int] = set()
    try:
        while True:
            # A dump that failed before borg came still waits for it: borg is stopped inside the
            # dump's member, and never goes on to archive the rest without it.
            fd, previous = next_reader(spec["fifo"], watching(spec, owner), previous, owner.ours)
            if fd is None:
                if buffer.error is not None:
                    return fail(spec, status, buffer.error, None, owner)
                if status["reads"]:
                    return 0
                stop_producer(spec)
                return fail(spec, status, f"borg never read {label}: the run ended first", None, owner)
            owner.known |= {pid for pid in previous if owner.ancestor_of(pid)}
            status.update(state="streaming", opened=time.time())
            status.setdefault("first_opened", status["opened"])
            write_status(spec["status"], status)
            try:
                check_readers(spec, owner, status["reads"] > 0)
                serve_reader(fd, buffer, spec, owner)
            except BrokenPipeError:
                status.update(state="interrupted", error=f"borg stopped reading {label} after {buffer.served} bytes")
                write_status(spec["status"], status)
                os.close(fd)
                if buffer.keep:
                    continue  # a retried borg create reads it again
                stop_producer(spec)
                return fail(spec, status, status["error"], None, owner)
            except (Refused, RuntimeError) as error:
                stop_producer(spec)
                return fail(spec, status, str(error), fd, owner)
            # The status first: borg, seeing the end of this file, goes on to the manifest, whose
            # server reads this status.
            status.update(state="complete", bytes=buffer.size, sha256=buffer.digest.hexdigest(), ended=time.time(),
                          drained=buffer.drained_at, reads=status["reads"] + 1,
                          buffer_peak_bytes=buffer.peak_bytes, buffer_spilled=buffer.spilled, error=None)
            write_status(spec["status"], status)
            os.close(fd)
    finally:
        stop.set()
        status["buffer_peak_bytes"] = buffer.peak_bytes
        buffer.close()


def manifest_bytes(spec: dict) -> bytes:
    """The manifest with each streamed dump's size and sha256; RuntimeError when a dump has not
    reached borg whole."""
    with open(spec["template"]) as f:
        manifest = json.load(f)
    seconds = []
    for dump in manifest.get("dumps", []):
        streamed = spec["dumps"].get(dump["path"])
        if streamed is None:
            continue
        result = read_status(streamed)
        if result.get("state") != "complete":
            raise RuntimeError(result.get("error") or f"borg reached the manifest before reading {dump['path']} (was "
                                                      f"it excluded? borgmatic needs read_special: true)")
        dump["bytes"], dump["sha256"] = result["bytes"], result["sha256"]
        dump["buffer_peak_bytes"] = result.get("buffer_peak_bytes")  # disk it took while borg lagged
        dump["buffer_spilled"] = result.get("buffer_spilled")  # borg lagged more than SPILL_AFTER
        dump["borg_wait_seconds"] = round(result["first_opened"] - result["started"], 3)  # borg's start
        seconds.append(result["drained"] - result["started"])
    if seconds and "dump_seconds" in manifest:  # a streamed dump lasts until the drain has it all
        manifest["dump_seconds"] = round(max(seconds), 3)
    return (json.dumps(manifest, indent=2) + "\n").encode()


def serve_manifest(spec: dict, owner: Owner) -> int:
    status = {"state": "waiting", "label": "the manifest", "pid": os.getpid(),
              "pid_started": proc.start_time(os.getpid()), "fifo": spec["fifo"], "started": time.time(), "reads": 0}
    write_status(spec["status"], status)
    previous: set[int] = set()
    while True:
        fd, previous = next_reader(spec["fifo"], watching(spec, owner), previous, owner.ours)
        if fd is None:
            if status["reads"]:
                return 0
            return fail(spec, status, "borg never read the manifest: the run ended first", None, owner)
        owner.known |= {pid for pid in previous if owner.ancestor_of(pid)}
        try:
            check_readers(spec, owner, status["reads"] > 0)
            data = manifest_bytes(spec)
        except (Refused, RuntimeError) as error:
            return fail(spec, status, str(error), fd, owner)
        write_private(Path(spec["final"]), data)
        status.update(state="complete", bytes=len(data), ended=time.time(), reads=status["reads"] + 1)
        write_status(spec["status"], status)
        try:
            write_all(fd, data)
        except BrokenPipeError:
            pass  # borg went away: a retry reads it again, or the run fails without it
        os.close(fd)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    # SIGTERM from a release ends the process at once; a reader gone shows as BrokenPipeError.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    owner = Owner(spec["owner"], spec.get("owner_started"))
    path_fd = os.open(spec["fifo"], os.O_PATH | os.O_NOFOLLOW)
    code = 1
    try:
        code = stream_dump(spec, owner) if spec["mode"] == "dump" else serve_manifest(spec, owner)
    except Exception as error:  # noqa: BLE001 - whatever breaks must reach the status file
        status = read_status(spec["status"])
        if spec["mode"] == "dump":
            stop_producer(spec)
        fail(spec, status, f"{status.get('label', spec['mode'])}: {type(error).__name__}: {error}", None, owner)
        # Before this process's end closes the pipe under a reading borg.
        status["stopped_readers"] = stop_readers(spec["fifo"], ours=owner.ours)
        write_status(spec["status"], status)
    finally:
        # A failure: every borg of the run that comes back (a retry) is stopped too. Then the
        # run is over (its owner gone): no borg may wait on the pipe now. Until then the pipe
        # stays, also after a success: borg looks at the path again once it has read it, and a
        # retried borg create opens it again.
        if code != 0:
            with contextlib.suppress(Exception):
                refuse_readers(spec, owner)
        if owner.gone():
            owner.stop_left_borgs()
        release_pipe(spec["fifo"], path_fd, owner.ours)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
