"""Running processes, read from /proc (no psutil): whether emgd runs, and who owns a backup run."""

from __future__ import annotations

import os
from collections.abc import Callable

# The kernel keeps at most 15 characters of a process name in /proc/PID/comm.
COMM_LENGTH = 15
DELETED = " (deleted)"  # how /proc/PID/exe ends when the binary was replaced or removed


def comm(pid: int, proc="/proc") -> str:
    """The process's name as the kernel keeps it ("" when it is gone)."""
    try:
        with open(os.path.join(proc, str(pid), "comm")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat_fields(pid: int, proc="/proc") -> list[str]:
    """/proc/PID/stat from its third field on (after the name, which may hold spaces); [] when
    the process is gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent(pid: int, proc="/proc") -> int:
    """The parent's pid (0 when unknown)."""
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if len(fields) > 1 else 0


def descends_from(ancestor: int):
    """A test of whether a process is `ancestor` or one of its descendants (by parent pids)."""
    def check(pid: int) -> bool:
        while pid > 1:
            if pid == ancestor:
                return True
            pid = parent(pid)
        return False
    return check


def state(pid: int, proc="/proc") -> str | None:
    """R, S, D, Z, ...; None when there is no such process."""
    fields = _stat_fields(pid, proc)
    return fields[0] if fields else None


def start_time(pid: int, proc="/proc") -> str | None:
    """The start time in clock ticks since boot: with the pid it names one process, even after
    the pid is reused. None when there is no such process."""
    fields = _stat_fields(pid, proc)
    return fields[19] if len(fields) > 19 else None


def cmdline(pid: int, proc="/proc") -> list[bytes]:
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def boot_id(proc="/proc") -> str | None:
    """This boot's random id: a start time counts clock ticks since boot, so it names a process
    only together with the boot."""
    try:
        with open(os.path.join(proc, "sys/kernel/random/boot_id")) as f:
            return f.read().strip()
    except OSError:
        return None


def identity(pid: int) -> dict:
    """What names one process for as long as it runs, also to another process and after the pid
    is reused: its pid, its start time and the boot."""
    return {"pid": pid, "pid_started": start_time(pid), "boot": boot_id()}


def running(pid: int, started: str | None, boot: str | None = None) -> bool:
    """Whether the process that `identity` described still runs: not ended, not a zombie (an
    ended process nobody has reaped yet), not another process under a reused pid, not from an
    earlier boot. Without `started` (a record from an older emg-borg) the pid alone decides."""
    if pid <= 0 or (boot is not None and boot != boot_id()):
        return False
    fields = _stat_fields(pid)
    if len(fields) <= 19 or fields[0] == "Z":
        return False
    return started is None or fields[19] == started


def kill_group_if(pgid: int, started: str | None, sig: int) -> bool:
    """Send `sig` to the process group `pgid` only while its leader is still the process that
    started at `started`: once the leader is gone its pid may name someone else's group. True
    when the signal was sent. (The leader may be a zombie: its group may still hold processes.)"""
    if pgid <= 0 or started is None or start_time(pgid) != started:
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _names(pid_dir: str) -> list[str]:
    """The names a process goes by: its `comm` and the file name of its executable."""
    names = []
    try:
        with open(os.path.join(pid_dir, "comm")) as f:
            names.append(f.read().strip())
    except OSError:  # the process ended while we looked
        return names
    try:
        exe = os.readlink(os.path.join(pid_dir, "exe"))
    except OSError:  # a kernel thread, a process that ended, or one we may not inspect
        return names
    names.append(os.path.basename(exe.removesuffix(DELETED)))
    return names


def pids_matching(matches: Callable[[str], bool], proc="/proc") -> list[int]:
    """Ids of the processes for which `matches(name)` holds for their comm or their executable's
    file name, lowest first."""
    found = []
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return found
    for entry in entries:
        if entry.name.isdigit() and any(matches(name) for name in _names(entry.path)):
            found.append(int(entry.name))
    return sorted(found)


def is_emgd(name: str) -> bool:
    """emgd itself, or a versioned binary such as `emgd-7.2.0-50785` (whose comm the kernel cuts
    to `emgd-7.2.0-5078`)."""
    return name == "emgd" or name.startswith("emgd-")


def emgd_pids(proc="/proc", within=None) -> list[int]:
    """Ids of the running emgd processes, however the binary is named. With `within` (a restore
    into another root than `/`: a chroot, a new machine's disk mounted elsewhere) only those
    running in that tree, by their root or working directory."""
    found = pids_matching(is_emgd, proc)
    if within is None or os.path.realpath(within) == "/":
        return found
    top = os.path.realpath(within)

    def inside(pid: int) -> bool:
        for link in ("root", "cwd"):
            try:
                path = os.path.realpath(os.readlink(os.path.join(proc, str(pid), link)))
            except OSError:
                continue
            if path == top or path.startswith(top + os.sep):
                return True
        return False

    return [pid for pid in found if inside(pid)]
