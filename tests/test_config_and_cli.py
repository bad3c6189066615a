"""The TOML configuration and the command line: errors name the file, the line and the key."""

from __future__ import annotations

import pytest

from conftest import run_emg_borg
from emg_borg import config
from emg_borg.errors import ConfigError


def load_text(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(path), path


def test_defaults(tmp_path):
    cfg, _ = load_text(tmp_path, "")
    assert cfg["emg"]["emgdir"] == "/etc/emg"
    assert cfg["backup"]["runtime_dir"] == "/var/lib/emg-borg"
    assert cfg["backup"]["categories"] == ["config", "data", "database", "logs"]
    assert cfg["snapshot"]["provider"] == "auto"
    assert cfg["mysql"]["lock"] == "required" and cfg["mysql"]["lock_timeout"] == 10
    assert cfg["seqno"]["query"] == "SELECT MAX(id) FROM routelog" and cfg["seqno"]["margin"] == 0


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
    text = config.sample()
    cfg, _ = load_text(tmp_path, text)
    for table, options in config.SCHEMA.items():
        assert f"[{table}]" in text
        for key in options:
            assert f"{key} =" in text


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


def test_cli_usage_errors_exit_2_with_one_line(tmp_path):
    result = run_emg_borg("no-such-command", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    missing = run_emg_borg("-c", str(tmp_path / "absent.toml"), "before-backup", check=False)
    assert missing.returncode == 2
    assert "configuration file not found" in missing.stderr


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
