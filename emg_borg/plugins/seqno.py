"""Built-in plugin: EMG's message id, captured by a command, and the `seqno` file in the archive.

The vendor note: when `SPOOLDIR/seqno` (a text file) exists at emgd start-up, the message id is
read from it into `seqno.hdb`. The archive therefore carries `SPOOLDIR/seqno` holding the id
captured inside the consistency point, staged outside the live spool (which is never written
to); a `seqno` already in the live spool is excluded so the archive holds exactly one. The id
comes from `[seqno] command` when set (here), else from a database plugin's query.
"""

from __future__ import annotations

import logging
import shlex

from emg_borg.config import Option, not_negative, positive
from emg_borg.emg.message_ids import parse_message_id
from emg_borg.external.execute import run as run_command
from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)

# Ids are plentiful (a node has 10^16 of them) and a reused id mixes up delivery reports, so the
# default skips a day of traffic at about 100 messages per second that no backup recorded.
DEFAULT_MARGIN = 10_000_000


@hookimpl
def emg_borg_config_tables():
    return {"seqno": {
        "command": Option(str, None, "Command printing the current message id (used instead of a database query).",
                          example='"/usr/local/bin/emg-current-id"'),
        "command_timeout": Option((int, float), 5, "Seconds the [seqno] command may take (it runs inside the "
                                  "consistency point).", check=positive),
        "margin": Option(
            int, DEFAULT_MARGIN,
            "Added to the message id written back at restore, so ids are never reused: it covers ids emgd "
            "handed out that no backup saw (messages not yet logged, traffic since the backup). Ids are "
            "plentiful; skipping ten million costs nothing.",
            check=not_negative,
        ),
        "node_digits": Option(
            int, 16,
            "With NODEID=n in server.cfg, this node's ids lie in [n*10^node_digits, (n+1)*10^node_digits) "
            "(unverified EMG layout; adjust to your installation).",
            check=not_negative,
        ),
    }}


@hookimpl(tryfirst=True)
def emg_borg_capture_message_id(run):
    command = run.config["seqno"]["command"]
    if not command:
        return None
    # The command line may carry a secret: logs name it by its program only.
    argv = tuple(shlex.split(command))
    result = run_command(argv, what=f"[seqno] command ({argv[0]})", timeout=float(run.config["seqno"]["command_timeout"]), secret_args=True)
    value = parse_message_id(result.stdout, f"[seqno] command ({argv[0]})")
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
