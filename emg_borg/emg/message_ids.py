"""EMG's message ids: 64-bit, and with `NODEID=n` each node's ids in a range of their own."""

from __future__ import annotations

from emg_borg.errors import EmgBorgError

MAX_MESSAGE_ID = 2**63 - 1  # EMG's ids are signed 64-bit


def node_range(node_id: int, digits: int) -> tuple[int, int]:
    """The ids of node `node_id` when the node id is carried above the low `digits` digits
    (unverified EMG layout: `[seqno] node_digits` lets an operator adjust it)."""
    low = node_id * 10**digits
    return low, low + 10**digits - 1


def parse_message_id(text: str, source: str) -> int:
    """The message id a command printed: its last non-empty line, one decimal number."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise EmgBorgError(f"{source} printed no message id")
    try:
        value = int(lines[-1])
    except ValueError:
        raise EmgBorgError(f"{source} printed {lines[-1][:32]!r}, not a message id (one decimal number)")
    if value < 0:
        raise EmgBorgError(f"{source} printed a negative message id {value}")
    if value > MAX_MESSAGE_ID:
        raise EmgBorgError(f"{source} printed {value}, beyond the largest message id {MAX_MESSAGE_ID}")
    return value
