"""Which machine this is: recorded at backup, compared at restore (EMG licenses are per machine)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path


def machine_identity() -> dict:
    identity = {"hostname": socket.gethostname()}
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            identity["machine_id"] = Path(path).read_text().strip()
            break
    with contextlib.suppress(OSError):
        identity["product_uuid"] = Path("/sys/class/dmi/id/product_uuid").read_text().strip()
    return identity
