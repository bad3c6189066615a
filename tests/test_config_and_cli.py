"""The TOML configuration and the command line: errors name the file, the line and the key;
every problem of a file is listed; every command and option explains itself; the README's
defaults are the code's."""

from __future__ import annotations

import argparse
import re
import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from conftest import ROOT, run_emg_borg
from emg_borg import config
from emg_borg.cli.parser import build_parser
from emg_borg.errors import ConfigError
from emg_borg.lifecycle import session

MANAGER = session.plugin_manager()
SCHEMA = session.schema(MANAGER)


def load_text(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(path, SCHEMA), path


def test_defaults(tmp_path):
    cfg, _ = load_text(tmp_path, "")
    assert cfg["emg"]["emgdir"] == "/etc/emg"
    assert cfg["backup"]["runtime_dir"] == "/var/lib/emg-borg"
    assert cfg["backup"]["categories"] == ["config", "data", "database", "logs"]
    assert cfg["snapshot"]["provider"] == "auto"
    assert cfg["mysql"]["lock"] == "required" and cfg["mysql"]["lock_timeout"] == 10
    assert cfg["seqno"]["query"] == "SELECT MAX(id) FROM routelog"
    assert cfg["seqno"]["margin"] == 10_000_000  # the safe default: never reuse an id


@pytest.mark.parametrize("text, line, key, words", [
    ('[emg]\nemgdir = "/x"\nspool = "/y"\n', 3, "emg.spool", "unknown key"),
    ('[backup]\n\ncategories = ["config", "mail"]\n', 3, "backup.categories", "unknown item 'mail'"),
    ("[seqno]\nmargin = \"ten\"\n", 2, "seqno.margin", "expected a integer"),
    ('[mysql]\nlock = "maybe"\n', 2, "mysql.lock", "must be one of"),
    ("[mysql]\nlock_timeout = 0\n", 2, "mysql.lock_timeout", "must be positive"),
    ("[mysql]\nenabled = 1\n", 2, "mysql.enabled", "expected a boolean"),
    ('[snapshot]\n\nlvm_snapshot_size = "lots"\n', 3, "snapshot.lvm_snapshot_size", 'expected e.g. "10%ORIGIN"'),
    ("[mysql]\nport = 99999\n", 2, "mysql.port", "must be a TCP port"),
    ("[seqno]\nmargin = -1\n", 2, "seqno.margin", "must not be negative"),
    ("[seqno]\ncommand_timeout = 0\n", 2, "seqno.command_timeout", "must be positive"),
])
def test_bad_values_name_file_line_and_key(tmp_path, text, line, key, words):
    with pytest.raises(ConfigError) as error:
        load_text(tmp_path, text)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'c.toml'}:{line}: {key}: "), message
    assert words in message


def test_unknown_table_and_toml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match=r"c.toml:2: unknown table \[mail\]"):
        load_text(tmp_path, "\n[mail]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"c.toml:3: TOML syntax error"):
        load_text(tmp_path, "[emg]\n\nemgdir = \n")


def test_generated_sample_is_valid_and_complete(tmp_path):
    text = session.sample_config(MANAGER)
    cfg, _ = load_text(tmp_path, text)
    for table, options in SCHEMA.tables.items():
        assert f"[{table}]" in text
        for key, option in options.items():
            assert f"{key} =" in text
            assert cfg[table][key] == option.default
    assert "\nmargin = 10000000\n" in text


def test_cli_config_generate_and_validate(tmp_path):
    generated = run_emg_borg("config", "generate").stdout
    path = tmp_path / "generated.toml"
    path.write_text(generated)
    ok = run_emg_borg("-c", str(path), "config", "validate")
    assert ok.returncode == 0 and "configuration is valid" in ok.stderr
    path.write_text('[emg]\nemgdir = 5\n')
    bad = run_emg_borg("-c", str(path), "config", "validate", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"emg-borg: error: {path}:2: emg.emgdir: expected a string, got 5"


def test_config_validate_lists_every_error_with_its_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[emg]\nemgdir = 5\n\n[mysql]\nlock = "maybe"\nport = 0\n\n[mail]\nx = 1\n\n[seqno]\nmargin = -3\n')
    result = run_emg_borg("-c", str(path), "config", "validate", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"emg-borg: error: {path}:2: emg.emgdir: expected a string, got 5",
        f"emg-borg: error: {path}:5: mysql.lock: must be one of required, best-effort, none; got 'maybe'",
        f"emg-borg: error: {path}:6: mysql.port: must be a TCP port (1-65535); got 0",
        f"emg-borg: error: {path}:8: unknown table [mail]; known: {', '.join(SCHEMA.tables)}",
        f"emg-borg: error: {path}:12: seqno.margin: must not be negative; got -3",
    ]


def test_cli_usage_errors_exit_2_with_a_usage_line_and_one_error_line(tmp_path):
    result = run_emg_borg(check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "usage: emg-borg [-h] [--version] [-c PATH] [-v] [-q] COMMAND ...",
        "emg-borg: error: the following arguments are required: COMMAND",
    ]
    result = run_emg_borg("restore", "--categories", check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[0].startswith("usage: emg-borg restore [-h]")
    assert lines[-1] == "emg-borg: error: restore: argument --categories: expected one argument"
    assert sum(line.startswith("emg-borg: error:") for line in lines) == 1 and "emg-borg: emg-borg" not in result.stderr
    missing = run_emg_borg("-c", str(tmp_path / "absent.toml"), "before-backup", check=False)
    assert missing.returncode == 2
    assert "configuration file not found" in missing.stderr


def _parsers(parser, path=("emg-borg",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_has_help():
    undocumented = []
    for path, parser in _parsers(build_parser()):
        if len(path) > 1 and not parser.description:
            undocumented.append(" ".join(path) + " (description)")
        for action in parser._actions:
            if action.help is None and not isinstance(action, argparse._SubParsersAction):
                undocumented.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                undocumented += [f"{' '.join(path)} {c.dest}" for c in action._choices_actions if not c.help]
    assert undocumented == []


def test_restore_help_tells_database_from_force_database():
    text = " ".join(run_emg_borg("restore", "--help").stdout.split())
    assert "Recover EMG on this machine" in text
    assert "load the dump even when the database already has tables" in text
    assert "drop a non-empty database and recreate it from the dump" in text


def readme_defaults() -> dict[str, str]:
    """`[table] key` -> the README's default cell, from the configuration reference table."""
    rows = {}
    section = (ROOT / "README.md").read_text().split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`["):
            continue
        table = re.match(r"`\[([\w.]+)\] ", cells[0]).group(1)
        for key in re.findall(r"`(?:\[[\w.]+\] )?(\w+)`", cells[0]):
            rows[f"{table}.{key}"] = cells[1]
    return rows


def test_the_readme_documents_every_key_with_the_code_s_default():
    documented = readme_defaults()
    wrong = []
    for table, options in SCHEMA.tables.items():
        for key, option in options.items():
            cell = documented.get(f"{table}.{key}")
            if cell is None:
                wrong.append(f"[{table}] {key} is not in the README's table")
                continue
            literal = re.fullmatch(r"`([^`]*)`", cell)
            if option.default is None:
                if literal and literal.group(1) not in ("—", ""):
                    wrong.append(f"[{table}] {key}: README says {cell}, the code has no default")
                continue
            shown = tomllib.loads(f"v = {literal.group(1)}")["v"] if literal else None
            if shown != option.default:
                wrong.append(f"[{table}] {key}: README says {cell}, the code says {config.toml_value(option.default)}")
    assert wrong == []


def test_runtime_dir_inside_emgdir_is_refused(tmp_path):
    emgdir = tmp_path / "emg"
    emgdir.mkdir()
    (emgdir / "server.cfg").write_text("")
    path = tmp_path / "c.toml"
    path.write_text(f'[emg]\nemgdir = "{emgdir}"\n[backup]\nruntime_dir = "{emgdir}/.emg-borg"\n[snapshot]\nprovider = "none"\n')
    result = run_emg_borg("-c", str(path), "before-backup", check=False)
    assert result.returncode == 2 and "lies inside the config root" in result.stderr
    assert not (emgdir / ".emg-borg").exists()


def test_config_validate_knows_the_snapshot_providers_of_plugins(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[emg]\nemgdir = "/etc/emg"\n\n[snapshot]\nprovider = "btrfz"\n')
    result = run_emg_borg("-c", str(path), "config", "validate", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"emg-borg: error: {path}:5: snapshot.provider: unknown snapshot provider "
                                     "'btrfz'; known: auto, btrfs, lvm, none, zfs")
