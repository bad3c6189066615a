"""`emg-borg verify`: a restore drill that changes nothing live.

It extracts an archive's configuration, spool and dump into a scratch directory and checks what a
restore depends on: the dump's size and sha256 against the manifest, that the restored server.cfg
parses, and that `seqno` holds the manifest's message id. With `--load-dump` it also loads the
dump into a throwaway database (`--scratch-db`), counts its tables and drops it again. The result
is an exit code and one verdict line, for monitoring; `--json` gives every check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

from emg_borg.emg import servercfg
from emg_borg.errors import EXIT_FAILURE, EXIT_OK, EmgBorgError, UsageError
from emg_borg.external import mysql
from emg_borg.lifecycle import extract as extraction
from emg_borg.lifecycle.archives import select
from emg_borg.lifecycle.backup import Interrupted, signals_raise
from emg_borg.lifecycle.restore import archived_layout, dump_problem
from emg_borg.plugins import mysql as mysql_plugin

logger = logging.getLogger(__name__)

_SCRATCH_DB = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?:socket:(?P<socket>/.+)/|(?P<host>[^/:]+)(?::(?P<port>\d+))?/)?(?P<name>[A-Za-z0-9_$]+)$")


def parse_scratch_db(spec: str, base: mysql.Connection | None) -> mysql.Connection:
    """`NAME`, `user@host:port/NAME` or `user@socket:/path/NAME` on top of the archived DB
    profile's connection. The profile's password is only sent when the user is the profile's."""
    match = _SCRATCH_DB.match(spec or "")
    if not match:
        raise UsageError(f"--scratch-db {spec!r}: expected NAME, user@host:port/NAME or user@socket:/path/NAME")
    parts = match.groupdict()
    base = base or mysql.Connection(host=None, port=None, socket=None, user=None, database="")
    user = parts["user"] or base.user
    where = {}
    if parts["socket"]:
        where = {"socket": parts["socket"], "host": None, "port": None}
    elif parts["host"]:
        where = {"socket": None, "host": parts["host"], "port": int(parts["port"]) if parts["port"] else None}
    password = base.password if user == base.user else None
    return dataclasses.replace(base, user=user, password=password, database=parts["name"], **where)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


def run(args, config) -> int:
    if args.load_dump and not args.scratch_db:
        raise UsageError("--load-dump needs --scratch-db NAME (a throwaway database)")
    if args.scratch_db:
        parse_scratch_db(args.scratch_db, None)  # a bad spec is a usage error before any work
    scratch_dir = Path(args.scratch_dir).resolve() if args.scratch_dir else None
    if scratch_dir is not None and scratch_dir.is_dir() and any(scratch_dir.iterdir()):
        raise UsageError(f"--scratch-dir {scratch_dir} is not empty")
    repository, archive = select(args)
    manifest = archive.manifest
    wanted = tuple(c for c in ("config", "data", "database") if (manifest.get("categories") or {}).get(c))
    checks: list[Check] = []
    # SIGTERM/SIGHUP become errors, so the scratch directory (with the decrypted dump) is removed.
    with signals_raise(), contextlib.ExitStack() as stack:
        if scratch_dir is None:
            scratch_dir = Path(tempfile.mkdtemp(prefix="emg-borg-verify-"))
            stack.callback(shutil.rmtree, scratch_dir, True)
        else:
            scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        extracted = extraction.extract(repository, archive, wanted, scratch_dir)
        if not extracted.complete:
            checks.append(Check("extract", False, extraction.incomplete(extracted)))
        else:
            checks.append(Check("extract", extracted.items > 0, f"{extracted.items} items of {', '.join(wanted)}"))
        checks.extend(file_checks(scratch_dir, manifest))
        if args.load_dump:
            checks.append(load_check(args, config, repository, archive, scratch_dir))
    return verdict(archive, checks, args.json)


def file_checks(root: Path, manifest: dict) -> list[Check]:
    checks = []
    mysql_entry = manifest.get("mysql")
    if mysql_entry:
        problem = dump_problem(root / mysql_entry["dump"], mysql_entry)
        checks.append(Check("dump", problem is None, problem or f"{mysql_entry['bytes']} bytes, sha256 matches"))
    else:
        checks.append(Check("dump", True, "the archive has no database dump"))
    cfg_path = root / str(manifest.get("server_cfg", "")).lstrip("/")
    try:
        cfg = servercfg.read(cfg_path)
        checks.append(Check("server.cfg", True, f"parses ({len(cfg.general)} settings, {len(cfg.blocks)} blocks)"))
    except EmgBorgError as error:
        checks.append(Check("server.cfg", False, str(error)))
    expected = manifest.get("message_id")
    if expected is None:
        checks.append(Check("seqno", False, "the manifest records no message id"))
    else:
        seqno = root / str(manifest.get("seqno_path") or "").lstrip("/")
        try:
            found = seqno.read_text().strip() if manifest.get("seqno_path") else None
        except OSError:
            found = None
        if found is None:
            checks.append(Check("seqno", False, f"{manifest.get('seqno_path')} is missing"))
        else:
            ok = found == str(expected)
            checks.append(Check("seqno", ok, f"{found}" + ("" if ok else f", the manifest says {expected}")))
    return checks


def load_check(args, config, repository, archive, root: Path) -> Check:
    """Load the dump into the scratch database, count tables, drop what was loaded."""
    mysql_entry = archive.manifest.get("mysql")
    if not mysql_entry:
        return Check("load", False, "the archive has no database dump to load")
    layout = archived_layout(repository, archive)
    base = None
    with contextlib.suppress(EmgBorgError):
        base = mysql_plugin.connection_settings(config, layout)
    settings = parse_scratch_db(args.scratch_db, base)
    try:
        connection = mysql_plugin.server_connection(settings)
    except EmgBorgError as error:
        return Check("load", False, str(error))
    try:
        tables = mysql_plugin.table_count(connection, settings.database)
        if tables:
            return Check("load", False, f"scratch database {settings.describe()} has {tables} tables; it must be empty or absent")
        try:
            loaded = mysql_plugin.load_into(config, settings, root / mysql_entry["dump"], connection)
        except Interrupted:
            raise  # a signal ends verify (after the cleanup), it is not a verdict on the archive
        except EmgBorgError as error:
            return Check("load", False, str(error))
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {mysql_plugin.quote_name(settings.database)}")
                if tables == 0:  # it existed, empty: leave it as it was
                    cursor.execute(f"CREATE DATABASE {mysql_plugin.quote_name(settings.database)}")
        return Check("load", loaded > 0, f"{loaded} tables loaded into {settings.describe()} (dropped again)")
    finally:
        connection.close()


def verdict(archive, checks: list[Check], as_json: bool) -> int:
    ok = all(check.ok for check in checks)
    if ok:
        line = f"verify OK: {archive.name}: " + "; ".join(f"{c.name} {c.detail}" for c in checks)
    else:
        line = f"verify FAILED: {archive.name}: " + "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
    if as_json:
        print(json.dumps({
            "ok": ok, "archive": archive.name, "time": archive.time.isoformat(timespec="seconds"),
            "message_id": archive.manifest.get("message_id"),
            "checks": [dataclasses.asdict(c) for c in checks],
        }, indent=2))
        (logger.info if ok else logger.error)("%s", line)
    else:
        print(line)
    return EXIT_OK if ok else EXIT_FAILURE
