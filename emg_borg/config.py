"""The emg-borg TOML configuration: schema, defaults, validation and a commented sample.

The schema is a table of `Option`s. Validation is strict: an unknown table or key, a value of the
wrong type or a value outside its choices is a `ConfigError` naming the file, the line and the
key, so an operator can fix it without guessing. TOML parsers do not report line numbers, so the
line is found by scanning the text for the key inside its table (`_KeyLines`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from emg_borg.emg.categories import CATEGORIES
from emg_borg.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/emg-borg/config.toml")
LOCK_MODES = ("required", "best-effort", "none")


@dataclasses.dataclass(frozen=True)
class Option:
    type: type | tuple
    default: Any = None
    help: str = ""
    choices: tuple = ()
    item_choices: tuple = ()  # for lists: allowed items
    check: Any = None  # value -> an error message, or None when the value is fine


def _positive(value):
    return None if value > 0 else f"must be positive; got {value!r}"


def _not_negative(value):
    return None if value >= 0 else f"must not be negative; got {value!r}"


def _port(value):
    return None if 1 <= value <= 65535 else f"must be a TCP port (1-65535); got {value!r}"


def _lvm_size(value):
    # lvcreate --extents N%{ORIGIN,VG,FREE,PVS} or --size N[unit]
    if re.fullmatch(r"\d+(\.\d+)?%(ORIGIN|VG|FREE|PVS)|\d+(\.\d+)?[bBsSkKmMgGtTpPeE]?", value):
        return None
    return f"expected e.g. \"10%ORIGIN\" or \"2G\"; got {value!r}"


SCHEMA: dict[str, dict[str, Option]] = {
    "emg": {
        "emgdir": Option(str, "/etc/emg", "EMG's configuration directory (EMGDIR), holding server.cfg."),
        "server_cfg": Option(str, None, "server.cfg path; default EMGDIR/server.cfg."),
        "spooldir": Option(str, None, "Override SPOOLDIR; default: SPOOLDIR= in server.cfg, else EMGDIR/spool."),
        "logdir": Option(str, None, "Override the log directory; default: $EMGLOGDIR, else EMGDIR/log."),
        "bindir": Option(str, None, "Where the EMG executables live; default EMGDIR/bin when present."),
    },
    "backup": {
        "runtime_dir": Option(
            str, "/var/lib/emg-borg",
            "Stable directory for the patterns file, staging area and snapshot mounts. Keep it "
            "the same on every run so borg's files cache recognises unchanged spool files.",
        ),
        "categories": Option(
            list, ["config", "data", "database", "logs"],
            "What to back up: config, data (the spool), database, logs, executables.",
            item_choices=CATEGORIES,
        ),
    },
    "snapshot": {
        "provider": Option(
            str, "auto",
            "auto picks btrfs, zfs or lvm by the file system holding SPOOLDIR; none backs up the "
            "live spool (not consistent). A plugin may add providers.",
        ),
        "lvm_snapshot_size": Option(str, "10%ORIGIN", "lvcreate --extents (with %) or --size for LVM snapshots.",
                                    check=_lvm_size),
    },
    "mysql": {
        "enabled": Option(bool, None, "Dump the EMG database; default: when server.cfg has a MySQL DB profile."),
        "host": Option(str, None, "Override the DB profile's HOST."),
        "port": Option(int, None, "Override the DB profile's PORT.", check=_port),
        "socket": Option(str, None, "Connect through this Unix socket instead of TCP."),
        "user": Option(str, None, "Override the DB profile's USERNAME."),
        "password_file": Option(str, None, "File holding the password (first line); overrides PASSWORD in server.cfg."),
        "database": Option(str, None, "Override the DB profile's DBNAME."),
        "dump_options": Option(list, [], "Extra mysqldump options, e.g. [\"--hex-blob\"]."),
        "lock": Option(
            str, "required",
            "Hold a global read lock around snapshot, message id and dump start: required (fail "
            "when it cannot be had), best-effort (warn and go on unlocked), none.",
            choices=LOCK_MODES,
        ),
        "lock_timeout": Option((int, float), 10, "Seconds to wait for the global read lock.", check=_positive),
        "mysqldump": Option(str, "mysqldump", "mysqldump command."),
        "mysql": Option(str, "mysql", "mysql client command (used to load dumps at restore)."),
    },
    "seqno": {
        "query": Option(str, "SELECT MAX(id) FROM routelog", "SQL that returns the current message id."),
        "command": Option(str, None, "Command printing the current message id (used instead of query)."),
        "margin": Option(
            int, 0,
            "Added to the message id written back at restore, so ids are never reused; cover the ids "
            "emgd may allocate between two backups beyond what the database shows.",
            check=_not_negative,
        ),
        "node_digits": Option(
            int, 16,
            "With NODEID=n in server.cfg, this node's ids lie in [n*10^node_digits, (n+1)*10^node_digits) "
            "(unverified EMG layout; adjust to your installation).",
            check=_not_negative,
        ),
    },
}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "number"
    return {str: "string", int: "integer", bool: "boolean", list: "array", float: "number"}[t]


def _type_ok(value, t) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


class _KeyLines:
    """Finds the line of `key` inside `[table]` in TOML text (1-based; None if not found)."""

    _header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"]+)\s*\]")
    _key = re.compile(r"^\s*\"?([A-Za-z0-9_\-]+)\"?\s*=")

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def find(self, table: str, key: str | None = None) -> int | None:
        current = None
        for number, line in enumerate(self.lines, 1):
            header = self._header.match(line)
            if header:
                current = header.group(1).strip('"')
                if key is None and current == table:
                    return number
                continue
            match = self._key.match(line)
            if key is not None and current == table and match and match.group(1) == key:
                return number
        return None


@dataclasses.dataclass
class Config:
    """Validated configuration: `section(name)` gives a dict with defaults filled in."""

    path: Path | None
    values: dict[str, dict[str, Any]]
    lines: _KeyLines = dataclasses.field(default_factory=lambda: _KeyLines(""), repr=False)

    def error(self, table: str, key: str, message: str) -> ConfigError:
        """A `ConfigError` about `[table] key`, naming the file and the key's line."""
        return ConfigError(message, self.path, self.lines.find(table, key), f"{table}.{key}")

    def section(self, name: str) -> dict[str, Any]:
        return self.values[name]

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.values[name]


def validate(data: dict, path=None, text: str = "") -> Config:
    lines = _KeyLines(text)
    values: dict[str, dict[str, Any]] = {}
    for table, entries in data.items():
        if table not in SCHEMA:
            raise ConfigError(
                f"unknown table [{table}]; known: {', '.join(SCHEMA)}", path, lines.find(table), None
            )
        if not isinstance(entries, dict):
            raise ConfigError(f"{table} must be a table", path, None, table)
    for table, options in SCHEMA.items():
        entries = data.get(table, {})
        section: dict[str, Any] = {}
        for key, value in entries.items():
            where = lines.find(table, key)
            full = f"{table}.{key}"
            option = options.get(key)
            if option is None:
                raise ConfigError(f"unknown key; known in [{table}]: {', '.join(options)}", path, where, full)
            if not _type_ok(value, option.type):
                raise ConfigError(
                    f"expected a {_type_name(option.type)}, got {value!r}", path, where, full
                )
            if option.choices and value not in option.choices:
                raise ConfigError(f"must be one of {', '.join(option.choices)}; got {value!r}", path, where, full)
            if option.type is list:
                for item in value:
                    if not isinstance(item, str):
                        raise ConfigError(f"items must be strings; got {item!r}", path, where, full)
                    if option.item_choices and item not in option.item_choices:
                        raise ConfigError(
                            f"unknown item {item!r}; choose from {', '.join(option.item_choices)}",
                            path, where, full,
                        )
            problem = option.check(value) if option.check else None
            if problem:
                raise ConfigError(problem, path, where, full)
            section[key] = value
        for key, option in options.items():
            if key not in section:
                default = option.default
                section[key] = list(default) if isinstance(default, list) else default
        values[table] = section
    return Config(Path(path) if path is not None else None, values, lines)


def load(path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found (pass -c PATH, or create it with `emg-borg config generate`)", path)
    except OSError as error:
        raise ConfigError(f"cannot read configuration: {error.strerror}", path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match.group(1)) if match else None
        reason = re.sub(r" \(at line.*", "", message)
        raise ConfigError(f"TOML syntax error: {reason}", path, line)
    return validate(data, path, text)


def defaults() -> Config:
    return validate({})


def sample() -> str:
    """A commented sample configuration showing every key with its default."""
    out = ["# emg-borg configuration. Every key is optional; the value shown is the default.", ""]
    for table, options in SCHEMA.items():
        out.append(f"[{table}]")
        for key, option in options.items():
            out.append(f"# {option.help}")
            if option.default is None:
                example = {str: '""', int: "0", bool: "true", list: "[]"}.get(option.type, '""')
                out.append(f"# {key} = {example}")
            else:
                out.append(f"{key} = {_toml_value(option.default)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
