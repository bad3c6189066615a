"""What a replica is and where it stands: its replication status, GTID positions, and why it
could not give the dump (`problems`, run by the preflight and by `doctor`)."""

from __future__ import annotations

import contextlib

from emg_borg.errors import EmgBorgError
from emg_borg.plugins.mysql.lock import has_privilege
from emg_borg.plugins.mysql.replica_guard import LOCK
from emg_borg.plugins.mysql.settings import REPLICA, query_one


def parse_gtids(position: str) -> dict[int, str]:
    """`0-1-8,1-2-5` as {domain: "server-seq"}."""
    gtids = {}
    for gtid in filter(None, (part.strip() for part in (position or "").split(","))):
        domain, _, rest = gtid.partition("-")
        gtids[int(domain)] = rest
    return gtids


def reached(replica_position: str, target: str) -> bool:
    """Whether the replica's position is exactly `target` in every domain `target` names."""
    have = parse_gtids(replica_position)
    return all(have.get(domain) == gtid for domain, gtid in parse_gtids(target).items())


def behind(replica_position: str, primary_position: str) -> int:
    """Transactions the replica still has to apply, summed over the primary's domains."""
    have = parse_gtids(replica_position)
    missing = 0
    for domain, gtid in parse_gtids(primary_position).items():
        seq = int(gtid.rpartition("-")[2])
        mine = int(have[domain].rpartition("-")[2]) if domain in have else 0
        missing += max(0, seq - mine)
    return missing


def slave_status(connection) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SLAVE STATUS")
        row = cursor.fetchone()
        return dict(zip([column[0] for column in cursor.description], row)) if row else {}


def gtid_position(connection, variable: str) -> str:
    return str(query_one(connection, f"SELECT @@{variable}")[0] or "")


def problems(replica, primary, settings) -> list[str]:
    """Why `replica` (a connection) cannot give a dump at `primary`'s consistency point; [] when it can."""
    name = settings.describe()
    version, read_only, server_id = query_one(replica, "SELECT VERSION(), @@read_only, @@server_id")
    if "mariadb" not in str(version).lower():
        return [f"replica {name} runs MySQL {version}: the replica path supports MariaDB GTID replication only"]
    primary_id = int(query_one(primary, "SELECT @@server_id")[0])
    if int(server_id) == primary_id:
        return [f"[{REPLICA}] reaches the primary itself ({name}, server id {server_id}), not a replica"]
    try:
        status = slave_status(replica)
    except Exception as error:  # noqa: BLE001 - PyMySQL's error for a missing privilege
        return [f"replica {name}: cannot read its replication status ({error_text(error)}): the user needs "
                "REPLICA MONITOR (or SUPER)"]
    if not status:
        return [f"replica {name} is not a replica (SHOW SLAVE STATUS is empty)"]
    found = []
    if int(status.get("Master_Server_Id") or 0) not in (0, primary_id):
        found.append(f"replica {name} replicates another source (server id {status['Master_Server_Id']} at "
                     f"{status.get('Master_Host')}:{status.get('Master_Port')}), not this primary (server id {primary_id})")
    if str(status.get("Using_Gtid", "No")).lower() == "no":
        found.append(f"replica {name} replicates by binary log file and position, not by GTID "
                     "(CHANGE MASTER TO MASTER_USE_GTID=slave_pos)")
    holder = query_one(replica, "SELECT IS_USED_LOCK(%s)", (LOCK,))[0]
    if holder is not None and holder != replica.thread_id() and status.get("Slave_SQL_Running") == "No":
        pass  # paused by another emg-borg run: checked again once this run holds the replica's lock
    elif status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
        error = status.get("Last_SQL_Error") or status.get("Last_IO_Error")
        state = f"IO thread {status.get('Slave_IO_Running')}, SQL thread {status.get('Slave_SQL_Running')}"
        found.append(f"replication on {name} is " + (f"broken ({state}): {error}" if error else f"stopped ({state})"))
    if int(read_only) != 1:
        found.append(f"replica {name} is not read-only: writes made there would be in the dump but not on the "
                     "primary (SET GLOBAL read_only = 1)")
    if not has_privilege(replica, {"REPLICATION SLAVE ADMIN", "SUPER"}):
        found.append(f"replica {name}: the user lacks REPLICATION SLAVE ADMIN (or SUPER), needed to stop the "
                     "replica at the consistency point and resume it")
    if not has_privilege(replica, {"PROCESS"}):
        found.append(f"replica {name}: the user lacks PROCESS, needed to see the dump's transaction begin there "
                     "(information_schema.INNODB_TRX)")
    if not gtid_position(primary, "gtid_binlog_pos"):
        found.append("the primary's @@gtid_binlog_pos is empty: no position to stop the replica at")
    return found


def describe(replica, primary, settings) -> list[str]:
    """For `doctor`: the replica's source, position and lag."""
    status = slave_status(replica)
    mine, theirs = gtid_position(replica, "gtid_slave_pos"), gtid_position(primary, "gtid_binlog_pos")
    lag = status.get("Seconds_Behind_Master")
    return [f"the dump is taken on replica {settings.describe()}, replicating from {status.get('Master_Host')}:{status.get('Master_Port')} "
            f"(server id {status.get('Master_Server_Id')}) by GTID, read-only",
            f"replica at GTID {mine or '(none)'}, primary at {theirs}: {behind(mine, theirs)} transaction(s) "
            f"behind, {'unknown' if lag is None else lag} s lag"]


def error_text(error) -> str:
    args = getattr(error, "args", ())
    return str(args[1]) if len(args) > 1 else str(error)


@contextlib.contextmanager
def talking_to(name: str, doing: str):
    """A server error while talking to the replica becomes one line naming it and the step."""
    import pymysql

    try:
        yield
    except pymysql.err.MySQLError as error:
        raise EmgBorgError(f"replica {name}: {error_text(error) or type(error).__name__} while {doing}") from None
