"""Built-in plugin: the EMG database (MySQL/MariaDB) as a data source.

It holds the consistency point's lock (`lock`), reads the message id inside it (`message_id`),
begins and finishes the dump (`dump`), and at restore reads the live id and loads the dump
(`restore`). Its settings are the `[mysql]` table and `[seqno] query` (`settings`). The hooks
here only dispatch; each is a no-op when the installation has no MySQL database.
"""

from __future__ import annotations

import shutil

from emg_borg.errors import EmgBorgError
from emg_borg.external import mysql as mysql_client
from emg_borg.hookspecs import hookimpl
from emg_borg.plugins.mysql import dump, lock, message_id, replica
from emg_borg.plugins.mysql import restore as restoring
from emg_borg.plugins.mysql.settings import NAME, TABLES, connection_settings, enabled, query_one, replica_given


@hookimpl
def emg_borg_config_tables():
    return TABLES


@hookimpl
def emg_borg_preflight(run):
    """Connect as the backup will, check the global read lock's privilege, run the [seqno]
    query and find mysqldump; take no lock."""
    if not enabled(run.config, run.layout):
        return None
    problems = []
    settings = connection_settings(run.config, run.layout)
    if "database" in run.categories and not shutil.which(run.config["mysql"]["mysqldump"]):
        problems.append(f"{run.config['mysql']['mysqldump']}: command not found (install the MariaDB/MySQL client)")
    try:
        connection = mysql_client.connect(settings)
    except EmgBorgError as error:
        return problems + [str(error)]
    try:
        if replica_given(run.config) and "database" in run.categories:  # else no dump is taken there
            problems += replica.decide(run, connection)
        if run.config["mysql"]["lock"] != "none" and not lock.has_reload(connection):
            problems.append(f"{settings.describe()}: the user lacks the RELOAD privilege needed for the global read lock")
        if not run.config["seqno"]["command"]:
            query, args, _, _ = message_id.node_query(run.config, run.layout.node_id)
            try:
                row = query_one(connection, query, args)
            except Exception as error:  # noqa: BLE001
                problems.append(f"[seqno] query {query!r} failed: {error}")
            else:
                value = row[0] if row else None  # None: an empty table, a warning at backup time
                if value is not None and not str(value).isdigit():
                    problems.append(f"[seqno] query {query!r} returned {value!r}, not a message id (a whole number)")
    finally:
        connection.close()
    return problems


@hookimpl
def emg_borg_hold_consistency_point(run):
    if not enabled(run.config, run.layout):
        return None
    if "database" in run.categories:
        dump.prepare(run)  # here, not in the lock's context: before any holder's freeze begins
    return lock.global_read_lock(run)


@hookimpl
def emg_borg_capture_message_id(run):
    return message_id.capture(run, lock.session(run)) if enabled(run.config, run.layout) else None


@hookimpl
def emg_borg_begin_dumps(run):
    if enabled(run.config, run.layout) and "database" in run.categories:
        dump.begin(run)


@hookimpl
def emg_borg_finish_dumps(run):
    try:
        finished = dump.finish(run)
    finally:
        lock.close(run)
    return [finished] if finished else None


@hookimpl
def emg_borg_manifest_fields(run):
    binlog = run.state(NAME).get("binlog")
    return {"binlog": binlog} if binlog else None


@hookimpl
def emg_borg_release(run):
    # The dump and connection live in the before-backup process only; on failure, stop them.
    try:
        dump.abort(run)
    finally:
        lock.close(run)
    # What a killed run left (the ledger says so): its staged mysqldump is stopped, and
    # replication it stopped is resumed, by whoever releases next.
    dump.stop_left_dumps(run)
    replica.resume_left(run)


@hookimpl
def emg_borg_live_message_id(restore):
    return restoring.live_message_id(restore) if enabled(restore.config, restore.layout) else None


@hookimpl
def emg_borg_restore_dump(restore, dump):
    if dump.plugin != NAME:
        return None
    if not enabled(restore.config, restore.layout):
        restore.todo(f"the archive holds a MySQL dump of {dump.database}, but no MySQL database is configured here "
                     f"([mysql] enabled, or a DB profile in server.cfg); load {dump.path} by hand")
        return True
    restoring.restore_dump(restore, dump)
    return True


@hookimpl
def emg_borg_verify_options(verify):
    if verify.load_dump and not verify.scratch_db:
        return ["--load-dump needs --scratch-db NAME (a throwaway database to load the MySQL dump into)"]
    problem = restoring.scratch_db_problem(verify.scratch_db) if verify.scratch_db else None
    return [problem] if problem else None


@hookimpl
def emg_borg_verify_dump(verify, dump, path):
    if dump.plugin != NAME:
        return None
    return restoring.verify_dump(verify, dump, path)

