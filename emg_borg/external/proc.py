"""Running processes, read from /proc (no psutil): enough to tell whether emgd runs."""

from __future__ import annotations

import os

# The kernel keeps at most 15 characters of a process name in /proc/PID/comm.
COMM_LENGTH = 15


def pids_named(name: str, proc="/proc") -> list[int]:
    """Ids of the processes whose name (`/proc/PID/comm`) is `name`, lowest first."""
    wanted = name[:COMM_LENGTH]
    found = []
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "comm")) as f:
                comm = f.read().strip()
        except OSError:  # the process ended while we looked
            continue
        if comm == wanted:
            found.append(int(entry.name))
    return sorted(found)
