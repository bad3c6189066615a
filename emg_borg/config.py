"""The emg-borg TOML configuration: schema, defaults, validation and a commented sample.

The core declares its own tables (`[emg]`, `[backup]`, `[snapshot] provider`); every plugin
adds its tables and keys through the `emg_borg_config_tables` hook, so the schema a file is
checked against is the merge of both (`Schema.merge`). Validation is strict and complete: every
unknown table or key, value of the wrong type or outside its choices is reported, each as a
`ConfigError` naming the file, the line and the key. TOML parsers do not report line numbers, so
the line is found by scanning the text for the key inside its table (`_KeyLines`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from emg_borg.emg.categories import CATEGORIES
from emg_borg.errors import ConfigError, ConfigErrors, EmgBorgError

DEFAULT_CONFIG_PATH = Path("/etc/emg-borg/config.toml")


@dataclasses.dataclass(frozen=True)
class Option:
    """One key: its type, default, the sample's comment, and what values it accepts."""

    type: type | tuple
    default: Any = None
    help: str = ""
    choices: tuple = ()
    item_choices: tuple = ()  # for lists: allowed items
    check: Callable[[Any], str | None] | None = None  # value -> an error message, or None when fine
    example: str | None = None  # shown commented out in the sample when there is no default


Tables = dict[str, dict[str, Option]]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float | None:
    """`26h`, `2d`, `90m`, `3600s` (or a bare number of seconds) in seconds; None if it is none."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    return float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else None


def positive(value):
    return None if value > 0 else f"must be positive; got {value!r}"


def not_negative(value):
    return None if value >= 0 else f"must not be negative; got {value!r}"


def tcp_port(value):
    return None if 1 <= value <= 65535 else f"must be a TCP port (1-65535); got {value!r}"


CORE_TABLES: Tables = {
    "emg": {
        "emgdir": Option(str, "/etc/emg", "EMG's configuration directory (EMGDIR), holding server.cfg."),
        "server_cfg": Option(str, None, "server.cfg path; default EMGDIR/server.cfg.", example='"/etc/emg/server.cfg"'),
        "spooldir": Option(str, None, "Override SPOOLDIR; default: SPOOLDIR= in server.cfg, else EMGDIR/spool.",
                           example='"/var/spool/emg"'),
        "logdir": Option(str, None, "Override the log directory; default: $EMGLOGDIR, else EMGDIR/log.",
                         example='"/var/log/emg"'),
        "bindir": Option(str, None, "Where the EMG executables live; default EMGDIR/bin when present.",
                         example='"/opt/emg/bin"'),
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
        "tool": Option(
            str, "borg",
            "The backup tool that reads what before-backup prepares. borg: borgmatic's borg create reads the "
            "patterns file (runtime_dir/patterns); restic: restic backup --tag emg-borg --files-from-verbatim "
            "runtime_dir/restic-files (dumps are then always staged). The restore side reads this tool's "
            "repository.",
            choices=("borg", "restic"),
        ),
        "stream_dumps": Option(
            str, "auto",
            "How dumps reach borg. auto: streamed through a named pipe (no copy on disk) when before-backup's "
            "--borgmatic-config shows borg will read it (read_special: true, one repository), else staged as "
            "files in runtime_dir; always: stream (a preflight error when that cannot work); never: stage.",
            choices=("auto", "always", "never"),
        ),
    },
    "restore": {
        "max_spool_age": Option(
            str, "26h",
            "Restore refuses spool data older than this without --old-spool: queued messages and delivery "
            "reports in an old spool were handled since and would be sent or matched again. Units s, m, h, d.",
            check=lambda value: None if duration_seconds(value) is not None else
            f"expected a duration like \"26h\", \"2d\" or \"90m\"; got {value!r}",
        ),
    },
    "snapshot": {
        "provider": Option(
            str, "auto",
            "auto picks the provider by the file system holding SPOOLDIR (btrfs, zfs, lvm); none "
            "backs up the live spool (not consistent). A plugin may add providers.",
        ),
    },
}


class Schema:
    """The tables a configuration may hold: the core's, merged with every plugin's."""

    def __init__(self, tables: Tables):
        self.tables = tables

    @classmethod
    def merge(cls, contributions) -> Schema:
        """CORE_TABLES plus each contribution (a plugin's tables); a plugin may add keys to a table
        another declared, but never declare a key twice."""
        tables: Tables = {name: dict(options) for name, options in CORE_TABLES.items()}
        for contribution in contributions:
            for table, options in (contribution or {}).items():
                merged = tables.setdefault(table, {})
                for key, option in options.items():
                    if key in merged:
                        raise EmgBorgError(f"two plugins declare the configuration key [{table}] {key}")
                    merged[key] = option
        return cls(tables)

    def defaults(self) -> dict[str, dict[str, Any]]:
        return {table: {key: _copy(option.default) for key, option in options.items()}
                for table, options in self.tables.items()}


def _copy(value):
    return list(value) if isinstance(value, list) else value


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
    """A validated configuration: `config[table][key]`, defaults filled in."""

    path: Path | None
    values: dict[str, dict[str, Any]]
    lines: _KeyLines = dataclasses.field(default_factory=lambda: _KeyLines(""), repr=False)
    given: frozenset = frozenset()  # the tables the file has (a sub-table's presence may turn a feature on)

    def error(self, table: str, key: str, message: str) -> ConfigError:
        """A `ConfigError` about `[table] key`, naming the file and the key's line (`key` None:
        the table itself, its header's line)."""
        return ConfigError(message, self.path, self.lines.find(table, key), f"{table}.{key}" if key else table)

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.values[name]


def _option_problem(option: Option, value) -> str | None:
    if not _type_ok(value, option.type):
        return f"expected a {_type_name(option.type)}, got {value!r}"
    if option.choices and value not in option.choices:
        return f"must be one of {', '.join(option.choices)}; got {value!r}"
    if option.type is list:
        for item in value:
            if not isinstance(item, str):
                return f"items must be strings; got {item!r}"
            if option.item_choices and item not in option.item_choices:
                return f"unknown item {item!r}; choose from {', '.join(option.item_choices)}"
    return option.check(value) if option.check else None


def validate(data: dict, schema: Schema, path=None, text: str = "") -> Config:
    """Check `data` (parsed TOML) against `schema`; every problem found is reported at once."""
    lines = _KeyLines(text)
    errors: list[ConfigError] = []
    values = schema.defaults()
    given = set(data)
    for table, entries in list(data.items()):
        # `[db.replica]` parses as data["db"]["replica"]: a sub-table the schema declares as
        # "db.replica" is checked as a table of its own.
        for key, value in list(entries.items()) if isinstance(entries, dict) else ():
            if f"{table}.{key}" in schema.tables and isinstance(value, dict):
                data = {**data, table: {k: v for k, v in data[table].items() if k != key}, f"{table}.{key}": value}
                given.add(f"{table}.{key}")
    for table, entries in data.items():
        options = schema.tables.get(table)
        if options is None:
            errors.append(ConfigError(f"unknown table [{table}]; known: {', '.join(schema.tables)}",
                                      path, lines.find(table), None))
            continue
        if not isinstance(entries, dict):
            errors.append(ConfigError(f"{table} must be a table", path, lines.find(table, table), table))
            continue
        for key, value in entries.items():
            option = options.get(key)
            if option is None:
                problem = f"unknown key; known in [{table}]: {', '.join(options)}"
            else:
                problem = _option_problem(option, value)
            if problem:
                errors.append(ConfigError(problem, path, lines.find(table, key), f"{table}.{key}"))
            else:
                values[table][key] = value
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return Config(Path(path) if path is not None else None, values, lines, frozenset(given))


def load(path, schema: Schema) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found (pass -c PATH, or create it with `emg-borg config generate`)", path)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read configuration: {getattr(error, 'strerror', None) or error}", path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match.group(1)) if match else None
        reason = re.sub(r" \(at line.*", "", message)
        raise ConfigError(f"TOML syntax error: {reason}", path, line)
    return validate(data, schema, path, text)


def defaults(schema: Schema) -> Config:
    return validate({}, schema)


def sample(schema: Schema) -> str:
    """A commented sample configuration showing every key with its default."""
    out = ["# emg-borg configuration. Every key is optional; the value shown is the default.", ""]
    for table, options in schema.tables.items():
        # A sub-table (`[db.replica]`) turns its feature on by being there: shown commented out.
        off = "# " if "." in table else ""
        out.append(f"{off}[{table}]")
        for key, option in options.items():
            out.extend(textwrap.wrap(option.help, 98, initial_indent="# ", subsequent_indent="# "))
            if option.default is None:
                example = option.example or {str: '""', int: "0", bool: "true", list: "[]"}.get(option.type, '""')
                out.append(f"# {key} = {example}")
            else:
                out.append(f"{off}{key} = {toml_value(option.default)}")
        out.append("")
    return "\n".join(out)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
