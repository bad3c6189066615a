"""EMG's current message id from the database: the `[seqno] query`, limited to this node's ids."""

from __future__ import annotations

import logging

from emg_borg.emg.message_ids import node_range
from emg_borg.errors import EmgBorgError
from emg_borg.plugins.mysql.settings import DEFAULT_QUERY, query_one

logger = logging.getLogger(__name__)


def node_query(config, node_id):
    """The [seqno] query, limited to this node's ids when NODEID is set: (query, args, low, high)."""
    section = config["seqno"]
    query, args = section["query"], None
    low = high = None
    if node_id is not None:
        low, high = node_range(node_id, section["node_digits"])
        if query == DEFAULT_QUERY:
            query = DEFAULT_QUERY + " WHERE id BETWEEN %(node_min)s AND %(node_max)s"
    if "%(" in query:
        args = {"node_min": low if low is not None else 0, "node_max": high if high is not None else 2**63 - 1}
    return query, args, low, high


def capture(run, connection) -> int | None:
    """The id inside the consistency point; None (with a warning) when the query finds none."""
    query, args, low, high = node_query(run.config, run.layout.node_id)
    try:
        row = query_one(connection, query, args)
    except Exception as error:  # noqa: BLE001
        raise EmgBorgError(f"[seqno] query {query!r} failed: {error}")
    value = row[0] if row else None
    if value is None:
        # Never guess: a 0 written back at restore would make emgd reuse ids. Without an id the
        # archive has no seqno file and emgd keeps the restored seqno.hdb.
        logger.warning("[seqno] query %r returned no id (empty table?); no message id is captured", query)
        return None
    value = int(value)
    if low is not None and not low <= value <= high:
        raise EmgBorgError(f"message id {value} is outside node {run.layout.node_id}'s range {low}..{high}")
    run.message_id_source = "query"
    logger.info("message id %d (from [seqno] query)", value)
    return value
