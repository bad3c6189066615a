"""Restore and verify: the live database's message id, loading an archived dump, a scratch load."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from emg_borg.core.signals import Interrupted
from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql
from emg_borg.plugins.mysql.message_id import node_query
from emg_borg.plugins.mysql.settings import connection_settings, query_one

logger = logging.getLogger(__name__)
ER_NO_SUCH_TABLE = 1146


def quote_name(name: str) -> str:
    """A MySQL identifier in backquotes, safe for any database name."""
    return "`" + name.replace("`", "``") + "`"


def server_connection(settings: mysql.Connection):
    """A connection to the server with no database selected (the database may not exist yet)."""
    return mysql.connect(dataclasses.replace(settings, database=""))


def table_count(connection, database: str) -> int | None:
    """How many tables `database` has, or None when it does not exist."""
    if not query_one(connection, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))[0]:
        return None
    return int(query_one(connection, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,))[0])


def recreate_database(connection, database: str) -> None:
    """Drop `database` and create it again, empty, with its character set and collation, so that
    a dump loaded into it leaves no table of the old content behind."""
    charset, collation = query_one(
        connection, "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME = %s", (database,))
    logger.warning("dropping database %s (--force-database) to load the archived dump into it", database)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE {quote_name(database)}")
        cursor.execute(f"CREATE DATABASE {quote_name(database)} CHARACTER SET {charset} COLLATE {collation}")


def load_into(config, settings: mysql.Connection, dump_path, connection) -> int:
    """Create `settings.database` if missing, load the dump into it, and return its table count."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote_name(settings.database)}")
    logger.info("loading %s into %s", Path(dump_path).name, settings.describe())
    mysql.load_dump(config["mysql"]["mysql"], settings, dump_path, settings.database)
    return table_count(connection, settings.database) or 0


def live_message_id(restore) -> int | None:
    """The live database's highest id of this node; None when the database or its table is
    absent or empty. A database that cannot be read raises: the restore must not guess.

    The live database is the archived DB profile's, or the server `[mysql]` names instead: after
    a promotion, the former replica (the archived profile names the dead primary)."""
    settings = connection_settings(restore.config, restore.layout)
    try:
        connection = server_connection(settings)
    except EmgBorgError as error:
        moved = "" if overridden(restore.config) else (
            "; if the database now runs elsewhere (a promoted replica), name it in [mysql] host and port (or "
            "socket) of the emg-borg configuration")
        raise EmgBorgError(f"cannot read the live database's highest message id: {error}{moved}")
    try:
        note_server(restore, settings, connection)
        if not table_count(connection, settings.database):
            logger.info("live database %s does not exist or is empty: no live message id", settings.database)
            return None
        connection.select_db(settings.database)
        query, args, _, _ = node_query(restore.config, restore.layout.node_id)
        try:
            row = query_one(connection, query, args)
        except Exception as error:  # noqa: BLE001 - PyMySQL's errors carry the server's code
            if getattr(error, "args", (None,))[0] == ER_NO_SUCH_TABLE:
                logger.info("live database %s has no table for [seqno] query %r: no live message id",
                            settings.database, query)
                return None
            raise EmgBorgError(f"cannot read the live database's highest message id: [seqno] query {query!r} "
                               f"failed: {error}")
        return int(row[0]) if row and row[0] is not None else None
    finally:
        connection.close()


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def overridden(config) -> bool:
    return any(config["mysql"][key] for key in ("host", "port", "socket"))


def note_server(restore, settings: mysql.Connection, connection) -> None:
    """What emgd will meet on the live database: server.cfg (emgd's, restored as archived) may
    name another server than the one `[mysql]` named for the restore (the dead primary, the
    promoted replica being the live one); and a replica not promoted yet is read-only."""
    db = restore.layout.db
    if db is not None and overridden(restore.config) and not same_server(db, settings):
        cfg = restore.live(restore.layout.server_cfg)
        state = "restored" if "config" in restore.categories else "as archived"
        restore.todo(f"server.cfg's DB profile {db.label} ({cfg}, {state}) names {db.host or 'localhost'}:"
                     f"{db.port or 3306}, but the live database is {settings.describe()} ([mysql] of "
                     f"{restore.config.path}): point the profile's HOST and PORT at it before starting emgd, or emgd "
                     f"connects to the old server")
    if int(query_one(connection, "SELECT @@GLOBAL.read_only")[0]):
        restore.todo(f"the live database {settings.describe()} is read-only (a replica not promoted yet?): emgd "
                     f"cannot write to it. Promote it (STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0, and "
                     f"read_only off in its configuration) before starting emgd")


def same_server(db, settings: mysql.Connection) -> bool:
    """Whether the DB profile's HOST/PORT and the connection used reach the same server, as far
    as names tell: a socket is the local server's, and the profile's local names are alike."""
    local = (db.host or "localhost") in LOCAL_HOSTS
    if settings.socket:
        return local
    here = (settings.host or "localhost") in LOCAL_HOSTS
    same_host = (local and here) or settings.host == db.host
    return same_host and (settings.port or 3306) == (db.port or 3306)


def restore_dump(restore, dump) -> None:
    """Check at once (refusing a non-empty database without --force-database), load last."""
    settings = connection_settings(restore.config, restore.layout)
    try:
        connection = server_connection(settings)
    except EmgBorgError as error:
        if restore.load_database:
            raise
        logger.warning("database not restored: %s", error)
        moved = "" if overridden(restore.config) else (
            " (but if the database now runs elsewhere, a promoted replica, load nothing: name it in [mysql] host "
            "and port and restore again)")
        restore.todo(f"load the database dump once MySQL runs: emg-borg restore --archive {restore.archive.name} "
                     f"--categories database --database{moved}")
        return
    try:
        tables = table_count(connection, settings.database)
        if tables:
            if not restore.load_database:
                restore.done(f"left the database {settings.database} as it is: it has {tables} tables "
                             f"(--database --force-database replaces them with the archived dump)")
                return
            if not restore.force_database:
                raise EmgBorgError(
                    f"database {settings.database} on {settings.describe()} has {tables} tables; refusing to load the "
                    f"archived dump over it without --force-database"
                )
        if restore.dry_run:
            restore.done(f"would load the dump into {settings.describe()}")
            return
        path = restore.fetch_dump(dump)  # extracted and checked against the manifest before anything is written
    finally:
        connection.close()

    def load():
        # Last, after the files: a failed extraction must not leave a replaced database behind.
        connection = server_connection(settings)
        try:
            if tables:
                recreate_database(connection, settings.database)
                restore.done(f"dropped the database {settings.database} ({tables} tables) and created it empty "
                             f"(--force-database)")
            loaded = load_into(restore.config, settings, path, connection)
        finally:
            connection.close()
        restore.done(f"loaded the dump of {dump.database} into {settings.describe()} ({loaded} tables)")

    restore.later(f"load the dump into {settings.describe()}", load)


_SCRATCH_DB = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?:socket:(?P<socket>/.+)/|(?P<host>[^/:]+)(?::(?P<port>\d+))?/)?"
                         r"(?P<name>[A-Za-z0-9_$]+)$")
SCRATCH_DB_FORMS = "NAME, user@host:port/NAME or user@socket:/path/NAME"


def scratch_db_problem(spec: str) -> str | None:
    return None if _SCRATCH_DB.match(spec or "") else f"--scratch-db {spec!r}: expected {SCRATCH_DB_FORMS}"


def parse_scratch_db(spec: str, base: mysql.Connection | None) -> mysql.Connection:
    """`NAME`, `user@host:port/NAME` or `user@socket:/path/NAME` on top of the archived DB
    profile's connection. The profile's password is only sent when the user is the profile's."""
    parts = _SCRATCH_DB.match(spec).groupdict()
    base = base or mysql.Connection(host=None, port=None, socket=None, user=None, database="")
    user = parts["user"] or base.user
    where = {}
    if parts["socket"]:
        where = {"socket": parts["socket"], "host": None, "port": None}
    elif parts["host"]:
        where = {"socket": None, "host": parts["host"], "port": int(parts["port"]) if parts["port"] else None}
    password = base.password if user == base.user else None
    return dataclasses.replace(base, user=user, password=password, database=parts["name"], **where)


def verify_dump(verify, dump, path: Path) -> tuple[bool, str]:
    """Load the dump into the scratch database, count tables, drop what was loaded."""
    base = None
    try:
        base = connection_settings(verify.config, verify.layout)
    except EmgBorgError:
        pass  # no profile in the archive: the scratch spec must say everything
    settings = parse_scratch_db(verify.scratch_db, base)
    try:
        connection = server_connection(settings)
    except EmgBorgError as error:
        return False, str(error)
    try:
        tables = table_count(connection, settings.database)
        if tables:
            return False, f"scratch database {settings.describe()} has {tables} tables; it must be empty or absent"
        try:
            loaded = load_into(verify.config, settings, path, connection)
        except Interrupted:
            raise  # a signal ends verify (after the cleanup); it is not a verdict on the archive
        except EmgBorgError as error:
            return False, str(error)
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {quote_name(settings.database)}")
                if tables == 0:  # it existed, empty: leave it as it was
                    cursor.execute(f"CREATE DATABASE {quote_name(settings.database)}")
        return loaded > 0, f"{loaded} tables loaded into {settings.describe()} (dropped again)"
    finally:
        connection.close()
