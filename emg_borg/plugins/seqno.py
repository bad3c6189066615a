"""Built-in plugin: EMG's message id, captured by a command, and the `seqno` file in the archive.

The vendor note: when `SPOOLDIR/seqno` (a text file) exists at emgd start-up, the message id is
read from it into `seqno.hdb`. The archive therefore carries `SPOOLDIR/seqno` holding the id
captured inside the consistency point, staged outside the live spool (which is never written
to); a `seqno` already in the live spool is excluded so the archive holds exactly one.
"""

from __future__ import annotations

import logging
import shlex

from emg_borg.errors import EmgBorgError
from emg_borg.external.execute import run as run_command
from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)


def parse_message_id(text: str, source: str) -> int:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise EmgBorgError(f"{source} printed no message id")
    try:
        value = int(lines[-1])
    except ValueError:
        raise EmgBorgError(f"{source} printed {lines[-1]!r}, not a message id (one decimal number)")
    if value < 0:
        raise EmgBorgError(f"{source} printed a negative message id {value}")
    return value


def node_range(node_id: int, digits: int) -> tuple[int, int]:
    """The ids of node `node_id` when the node id is carried above the low `digits` digits."""
    low = node_id * 10**digits
    return low, low + 10**digits - 1


@hookimpl(tryfirst=True)
def emg_borg_capture_message_id(run):
    command = run.config["seqno"]["command"]
    if not command:
        return None
    # It runs inside the consistency point, so it gets no more time than the lock may be held.
    result = run_command(tuple(shlex.split(command)), what="[seqno] command",
                         timeout=float(run.config["mysql"]["lock_timeout"]))
    value = parse_message_id(result.stdout, f"[seqno] command {command!r}")
    run.message_id_source = "command"
    logger.info("message id %d (from [seqno] command)", value)
    return value


@hookimpl
def emg_borg_backup_patterns(run):
    live_seqno = run.layout.spooldir / "seqno"
    lines = [f"- pf:{run.real_path(live_seqno)}"]
    if run.message_id is not None:
        lines.append(f"R {run.runtime.staging}/./{str(live_seqno).lstrip('/')}")
    return lines
