"""emg-borg plugin: an SQLite database (an EMG Portal's, a site's own) as one more data source.

It declares its own `[sqlite]` table; copies the database with SQLite's online backup API inside
the consistency point, so the copy describes the same instant as the spool snapshot, the message
id and the MySQL dump; hands the copy to the manifest as a `Dump`; checks it in `emg-borg verify
--load-dump`; and puts it back in `emg-borg restore`. emg-borg's core knows nothing of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

from emg_borg.config import Option
from emg_borg.core.manifest import Dump
from emg_borg.errors import EmgBorgError
from emg_borg.hookspecs import hookimpl

NAME = "sqlite"
logger = logging.getLogger(__name__)


@hookimpl
def emg_borg_config_tables():
    return {"sqlite": {
        "path": Option(str, None, "SQLite database file to back up with EMG (none: this plugin does nothing).",
                       example='"/var/lib/emg-portal/portal.db"'),
    }}


def _configured(config) -> Path | None:
    path = config["sqlite"]["path"]
    return Path(path) if path else None


@hookimpl
def emg_borg_preflight(run):
    path = _configured(run.config)
    if path is None or "database" not in run.categories:
        return None
    if not path.is_file():
        return [f"[sqlite] path {path}: no such file"]
    try:
        with _read_only(path) as connection:
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        return [f"[sqlite] path {path}: not a readable SQLite database ({error})"]
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@hookimpl
def emg_borg_begin_dumps(run):
    """Inside the consistency point: the backup API copies every page in one step, under one read
    transaction, so the copy is consistent even while the database is written to."""
    path = _configured(run.config)
    if path is None or "database" not in run.categories:
        return
    staged, archive_path = run.dump_path(NAME, path.name)
    source, target = _read_only(path), sqlite3.connect(staged)
    try:
        source.backup(target)
    except sqlite3.Error as error:
        raise EmgBorgError(f"sqlite: cannot copy {path}: {error}")
    finally:
        target.close()
        source.close()
    run.state(NAME)["copy"] = (str(path), staged, archive_path)
    logger.info("sqlite: copied %s", path)


@hookimpl
def emg_borg_finish_dumps(run):
    copy = run.state(NAME).pop("copy", None)
    if copy is None:
        return None
    live, staged, archive_path = copy
    return [Dump.of_file(NAME, live, staged, archive_path, format="sqlite3")]


def _integrity(path: Path) -> tuple[bool, str]:
    try:
        with _read_only(path) as connection:
            verdict = connection.execute("PRAGMA integrity_check").fetchone()[0]
            tables = connection.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    except sqlite3.Error as error:
        return False, f"{path.name}: not a usable SQLite database ({error})"
    return verdict == "ok", f"{path.name}: integrity {verdict}, {tables} tables"


@hookimpl
def emg_borg_verify_dump(verify, dump, path):
    if dump.plugin != NAME:
        return None
    return _integrity(path)


@hookimpl
def emg_borg_restore_dump(restore, dump):
    """Put the database back where it was (or at `[sqlite] path`): only where none is, unless
    `--database`; the copy happens last, after the files, through a temporary file and a rename."""
    if dump.plugin != NAME:
        return None
    live = restore.live(_configured(restore.config) or dump.database)
    if live.exists() and not restore.load_database:
        restore.done(f"left {live} as it is (--database replaces it with the archived copy)")
        return True
    if restore.dry_run:
        restore.done(f"would restore {live} from {dump.path}")
        return True
    copy = restore.fetch_dump(dump)  # extracted and checked against the manifest's size and sha256

    def put_back():
        live.parent.mkdir(parents=True, exist_ok=True)
        temporary = live.with_name(f".{live.name}.emg-borg")
        shutil.copyfile(copy, temporary)
        os.replace(temporary, live)
        ok, detail = _integrity(live)
        if not ok:
            raise EmgBorgError(f"sqlite: restored {live} fails its check: {detail}")
        restore.done(f"restored {live} ({detail})")

    restore.later(f"restore {live}", put_back)
    return True
