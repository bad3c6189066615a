"""The `[mysql]` table, and the connection settings: server.cfg's DB profile, overridden by it."""

from __future__ import annotations

from pathlib import Path

from emg_borg.config import Option, positive, tcp_port
from emg_borg.external import mysql

NAME = "mysql"
LOCK_MODES = ("required", "best-effort", "none")
DEFAULT_QUERY = "SELECT MAX(id) FROM routelog"
# A freeze takes 20-70 ms here and under a second even on a busy Btrfs; 5 s is far above that,
# yet below the time an SMSC or an application waits for EMG's answer before it gives up.
MAX_FREEZE = 5
STALL_TIMEOUT = 300  # over the server's own net_write_timeout (60 s): it gives up on a stuck client first
# A replica that has not applied the primary's last minute within another minute is lagging far
# more than a healthy one (usually well under a second) and would keep the run waiting.
MAX_REPLICA_WAIT = 60
REPLICA = "mysql.replica"

TABLES = {
    "mysql": {
        "enabled": Option(bool, None, "Dump the EMG database; default: when server.cfg has a MySQL DB profile.",
                          example="true"),
        "host": Option(str, None, "Override the DB profile's HOST (at restore too: after a promotion, name the "
                       "promoted replica here and in server.cfg).", example='"127.0.0.1"'),
        "port": Option(int, None, "Override the DB profile's PORT.", check=tcp_port, example="3306"),
        "socket": Option(str, None, "Connect through this Unix socket instead of TCP.",
                         example='"/run/mysqld/mysqld.sock"'),
        "user": Option(str, None, "Override the DB profile's USERNAME (a dedicated backup user is best).",
                       example='"emgbackup"'),
        "password_file": Option(str, None, "File holding the password (first line); overrides PASSWORD in server.cfg.",
                                example='"/etc/emg-borg/mysql-password"'),
        "database": Option(str, None, "Override the DB profile's DBNAME.", example='"emg"'),
        "dump_options": Option(list, [], "Extra mysqldump options, e.g. [\"--hex-blob\"]."),
        "lock": Option(
            str, "required",
            "Hold a global read lock around snapshot, message id and dump start: required (fail "
            "when it cannot be had), best-effort (warn and go on unlocked), none.",
            choices=LOCK_MODES,
        ),
        "lock_timeout": Option((int, float), 10, "Seconds to wait for the global read lock (and for the dump's "
                               "transaction to begin).", check=positive),
        "max_freeze": Option((int, float), MAX_FREEZE, "Seconds the global read lock may be held at the most: past "
                             "them the lock is released at once and the run fails. The server also ends the lock "
                             "by itself (the session's wait_timeout) if emg-borg is stopped or killed.",
                             check=positive),
        "stall_timeout": Option((int, float), STALL_TIMEOUT, "Seconds mysqldump's connection may pass no byte "
                                "either way: past them the dump is stopped and the run fails (a server that stops "
                                "answering mid-dump must not hold the backup, or borg, for ever).", check=positive),
        "mysqldump": Option(str, "mysqldump", "mysqldump command."),
        "mysql": Option(str, "mysql", "mysql client command (used to load dumps at restore)."),
    },
    # Present in the file: the dump is taken on this replica, at the consistency point (replica.py).
    "mysql.replica": {
        "host": Option(str, None, "The replica's host; unset connection keys fall back to [mysql] (and server.cfg).",
                       example='"10.0.0.12"'),
        "port": Option(int, None, "The replica's TCP port.", check=tcp_port, example="3306"),
        "socket": Option(str, None, "Connect to the replica through this Unix socket.",
                         example='"/run/mysqld/replica.sock"'),
        "user": Option(str, None, "User on the replica: needs SELECT, SHOW VIEW, TRIGGER, EVENT, PROCESS, REPLICA "
                       "MONITOR and REPLICATION SLAVE ADMIN (or SUPER).", example='"emgbackup"'),
        "password_file": Option(str, None, "File holding the replica user's password (first line).",
                                example='"/etc/emg-borg/replica-password"'),
        "max_wait": Option((int, float), MAX_REPLICA_WAIT, "Seconds the replica may take to catch up with the "
                           "primary, before and after the freeze; a replica further behind fails the run (or falls "
                           "back, see fallback).", check=positive),
        "fallback": Option(str, "fail", "When the replica is unfit (unreachable, stopped, broken, writable, another "
                           "source, too far behind) before the freeze: fail the run, or dump on the primary as "
                           "without a replica (logged, and recorded in the manifest).", choices=("fail", "primary")),
    },
    "seqno": {
        "query": Option(str, DEFAULT_QUERY, "SQL that returns the current message id (when no [seqno] command is set)."),
    },
}


def enabled(config, layout) -> bool:
    setting = config["mysql"]["enabled"]
    if setting is not None:
        return setting
    return layout is not None and layout.db is not None and layout.db.is_mysql


def connection_settings(config, layout) -> mysql.Connection:
    """Credentials from server.cfg's DB profile, overridden by `[mysql]`."""
    section = config["mysql"]
    db = layout.db if layout is not None else None
    password = db.password if db else None
    if section["password_file"]:
        password = read_password(config, "mysql", section["password_file"])
    database = section["database"] or (db.database if db else None)
    if not database:
        raise config.error("mysql", "database", "no database name: server.cfg has no DBPROFILE with DBNAME; set it here")
    return mysql.Connection(
        host=section["host"] or (db.host if db else None),
        port=section["port"] or (db.port if db else None),
        socket=section["socket"],
        user=section["user"] or (db.user if db else None),
        database=database,
        password=password,
    )


def replica_given(config) -> bool:
    return REPLICA in getattr(config, "given", ())


def replica_settings(config, layout) -> mysql.Connection:
    """The replica's connection: `[mysql.replica]`, each unset key the primary's."""
    primary = connection_settings(config, layout)
    section = config[REPLICA]
    password = primary.password
    if section["password_file"]:
        password = read_password(config, REPLICA, section["password_file"])
    tcp = section["host"] or section["port"]
    return mysql.Connection(
        host=section["host"] or primary.host,
        port=section["port"] or primary.port,
        # A replica given by host or port is reached by TCP, not through the primary's socket.
        socket=section["socket"] or (None if tcp else primary.socket),
        user=section["user"] or primary.user,
        database=primary.database,
        password=password,
    )


def read_password(config, table: str, filename: str) -> str:
    path = Path(filename)
    try:
        mode = path.stat().st_mode
        lines = path.read_text().splitlines()
    except OSError as error:
        raise config.error(table, "password_file", f"cannot read {path}: {error.strerror}")
    if mode & 0o077:
        raise config.error(table, "password_file", f"{path} can be read by others (mode {mode & 0o777:o}): "
                           f"chmod 600 {path}")
    return lines[0] if lines else ""


def query_one(connection, sql, args=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchone()
