"""Hostile and broken input: whatever server.cfg or the TOML configuration holds, the answer is a
result or one error naming the file and line, never a traceback; dangerous layouts are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_emg_borg
from emg_borg import config
from emg_borg.emg import layout, servercfg
from emg_borg.emg.message_ids import parse_message_id
from emg_borg.errors import LINE_LIMIT, VALUE_LIMIT, ConfigError, EmgBorgError, describe, shortened
from emg_borg.lifecycle import session

SCHEMA = session.schema(session.plugin_manager())
CFG = Path("/etc/emg/server.cfg")
LINES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["SPOOLDIR=/var/spool/emg", "DB emg <", ">", "PDULOG", "# c", "CONNECTOR a <", "X=", "=x", "<"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINES, max_size=30).map("\n".join))
def test_server_cfg_parser_gives_a_result_or_an_error_with_its_line(text):
    try:
        parsed = servercfg.parse(text, CFG)
    except ConfigError as error:
        assert error.path == CFG and error.line is not None and 1 <= error.line <= max(1, len(text.splitlines()))
        assert "\n" not in str(error)
        return
    for _, entry in parsed.all_entries():
        assert entry.key == entry.key.upper()


TOML_VALUES = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.text(max_size=20),
                        st.lists(st.text(max_size=8), max_size=3), st.floats(allow_nan=False))
TABLES = st.sampled_from(["emg", "backup", "snapshot", "mysql", "seqno", "nope"])
KEYS = st.one_of(st.sampled_from(sorted({k for options in SCHEMA.tables.values() for k in options})), st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TABLES, st.dictionaries(KEYS, TOML_VALUES, max_size=4), max_size=4))
def test_any_toml_configuration_is_valid_or_every_error_names_its_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text("".join(f"[{table}]\n" + "".join(f"{key} = {config.toml_value(value)}\n"
                                                     for key, value in entries.items()) + "\n"
                            for table, entries in data.items()))
    try:
        config.load(path, SCHEMA)
    except ConfigError as error:
        for problem in error.problems:
            assert str(problem).startswith(f"{path}:") and problem.line is not None, str(problem)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_any_bytes_as_toml_give_a_config_or_a_config_error(tmp_path, raw):
    path = tmp_path / "c.toml"
    path.write_bytes(raw)
    try:
        config.load(path, SCHEMA)
    except ConfigError as error:
        assert str(error).startswith(str(path))


def cfg_tree(tmp_path, text: str) -> dict:
    emgdir = tmp_path / "emg"
    emgdir.mkdir(exist_ok=True)
    (emgdir / "server.cfg").write_bytes(text.encode() if isinstance(text, str) else text)
    return {"emgdir": str(emgdir), "server_cfg": None, "spooldir": None, "logdir": None, "bindir": None}


def test_a_nul_byte_is_an_error_on_its_line(tmp_path):
    with pytest.raises(ConfigError, match=r"server.cfg:2: a NUL byte"):
        layout.discover(cfg_tree(tmp_path, "PDULOG\nSPOOLDIR=/var/sp\0ol\n"))


def test_a_5_mb_line_gives_a_short_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        layout.discover(cfg_tree(tmp_path, "PDULOG\n" + "x y" * (5 * 2**20 // 3) + "\n"))
    assert str(error.value).startswith(f"{tmp_path / 'emg' / 'server.cfg'}:2: cannot parse 'x yx y")
    assert len(str(error.value)) < 300 and "characters)" in str(error.value)


@pytest.mark.parametrize("spool", ["/", "/./", "..", "../../../../../../.."])
def test_a_spool_that_is_or_holds_emgdir_or_root_is_refused(tmp_path, spool):
    with pytest.raises(ConfigError, match=r"server.cfg:1: SPOOLDIR .* which holds EMGDIR or is /"):
        layout.discover(cfg_tree(tmp_path, f"SPOOLDIR={spool}\n"))


@pytest.mark.parametrize("reference", ["../../../../../../../..", "..", "/"])
def test_a_reference_escaping_to_an_ancestor_of_emgdir_is_refused(tmp_path, reference):
    with pytest.raises(ConfigError, match=rf"server.cfg:2: ROUTING={reference} resolves to .* which holds EMGDIR or is /"):
        layout.discover(cfg_tree(tmp_path, f"PDULOG\nROUTING={reference}\n"))


def test_a_reference_through_dotdot_to_a_real_file_is_kept_by_its_real_path(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "routing").write_text("r\n")
    found = layout.discover(cfg_tree(tmp_path, "ROUTING=../shared/routing\n"))
    [ref] = [r for r in found.references if r.keyword == "ROUTING"]
    assert ref.exists and layout.category_of(tmp_path / "shared" / "routing", found.roots) == "config"


def test_runtime_dir_inside_the_spool_is_refused(tmp_path):
    tree = cfg_tree(tmp_path, f"SPOOLDIR={tmp_path}/spool\n")
    (tmp_path / "spool").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(f'[emg]\nemgdir = "{tree["emgdir"]}"\n[backup]\nruntime_dir = "{tmp_path}/spool/.eb"\n'
                    f'[snapshot]\nprovider = "none"\n[mysql]\nenabled = false\n')
    result = run_emg_borg("-c", str(path), "before-backup", check=False)
    assert result.returncode == 2 and "lies inside the data root" in result.stderr
    assert not (tmp_path / "spool" / ".eb").exists()


@pytest.mark.parametrize("printed, words", [
    ("", "printed no message id"),
    ("hello\n", "printed 'hello', not a message id"),
    ("-5\n", "printed a negative message id -5"),
    (f"{2**64}\n", "beyond the largest message id"),
    ("\0\1\2garbage" * 100, "not a message id"),
])
def test_a_seqno_command_printing_garbage_is_one_clear_error(printed, words):
    with pytest.raises(EmgBorgError, match=words) as error:
        parse_message_id(printed, "[seqno] command (x)")
    assert len(str(error.value)) < 200


def test_a_seqno_command_printing_garbage_fails_the_backup_and_leaves_nothing(tmp_path):
    from conftest import Emg, leftovers

    emg = Emg(tmp_path, None, extra_config='[mysql]\nenabled = false\n\n[seqno]\ncommand = "echo 18446744073709551616"\n')
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "emg-borg: error: [seqno] command (echo) printed 18446744073709551616, beyond the largest" in result.stderr
    assert leftovers(emg) == []


# Errors stay one short line, whatever value reached them.
NAME_TOO_LONG = "/x/" + "a" * (layout.NAME_MAX + 1) + "/b"
PATH_TOO_LONG = "/x/" + "a" * (5 * 2**20)


def _one_short_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < LINE_LIMIT, stderr[:2000]
    return lines[0]


@pytest.mark.parametrize("key, value, shown", [
    ("ROUTING", PATH_TOO_LONG, "the path is too long for the file system: '/x/aaa"),
    ("ROUTING", NAME_TOO_LONG, f"a name of {layout.NAME_MAX + 1} bytes where at most {layout.NAME_MAX} are allowed"),
    ("SPOOLDIR", PATH_TOO_LONG, "the path is too long for the file system: '/x/aaa"),
])
def test_a_server_cfg_path_too_long_for_the_file_system_is_one_line_naming_key_and_line(tmp_path, key, value, shown):
    from conftest import Emg, leftovers

    emg = Emg(tmp_path, None, extra_config="[mysql]\nenabled = false\n")
    cfg = emg.tree.server_cfg
    good = cfg.read_text()
    line = len(good.splitlines()) + 1
    cfg.write_text(f"{good}{key}={value}\n")
    expected = f"{cfg}:{line}: {key}: "
    for command, code in ((["before-backup"], 2), (["before-backup", "--dry-run"], 2), (["discover"], 2)):
        result = emg.emg_borg(*command, check=False)
        assert result.returncode == code, result.stderr[:2000]
        error = _one_short_line(result.stderr)
        assert error.startswith(f"emg-borg: error: {expected}") and shown in error, error
        assert "characters)…" in error
    doctor = emg.emg_borg("doctor", check=False)
    assert doctor.returncode == 1 and len(doctor.stdout) < 20 * LINE_LIMIT
    [fail] = [row for row in doctor.stdout.splitlines() if row.startswith("FAIL")]
    assert fail.startswith("FAIL server.cfg") and expected in fail and shown in fail and len(fail) < LINE_LIMIT
    assert leftovers(emg) == [] and cfg.read_text().startswith(good)

    cfg.write_text(good)
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


@pytest.mark.parametrize("text, words", [
    ("NODEID={huge}\n", "NODEID must be an integer, got 'xxx"),
    ("DBPROFILE={huge}\n", "DBPROFILE=xxx"),
    ("DBPROFILE=emg\nDB emg <\nPORT={huge}\n>\n", "PORT must be a number, got 'xxx"),
])
def test_a_huge_value_in_an_error_about_it_is_shortened(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words) as error:
        layout.discover(cfg_tree(tmp_path, text.format(huge="x" * 5 * 2**20)))
    assert f"…({5 * 2**20:,} characters)…" in str(error.value) and len(str(error.value)) < LINE_LIMIT


def test_a_long_text_in_an_unknown_key_is_no_file_and_no_error(tmp_path):
    found = layout.discover(cfg_tree(tmp_path, f"PLUGIN_OPTION={PATH_TOO_LONG}\nOTHER={NAME_TOO_LONG}\n"))
    assert found.references == []


def test_an_os_error_with_a_huge_file_name_is_one_short_line(tmp_path):
    emgdir = "/tmp/" + "d" * 10_000  # [emg] emgdir: every system call on it fails with ENAMETOOLONG
    path = tmp_path / "c.toml"
    path.write_text(f'[emg]\nemgdir = "{emgdir}"\n[snapshot]\nprovider = "none"\n[mysql]\nenabled = false\n')
    result = run_emg_borg("-c", str(path), "before-backup", check=False)
    assert result.returncode == 1
    error = _one_short_line(result.stderr)
    assert error.startswith("emg-borg: error: unexpected OSError: [Errno 36] File name too long: '/tmp/ddd"), error
    assert f"…({len(emgdir):,} characters)…{'d' * 20}" in error, error
    assert error.endswith("ddd' (run with -v for a traceback)"), error
    traceback = run_emg_borg("-v", "-c", str(path), "before-backup", check=False).stderr
    assert "Traceback" in traceback and max(map(len, traceback.splitlines())) <= LINE_LIMIT


def test_a_huge_config_path_is_one_short_line(tmp_path):
    config_path = str(tmp_path / ("c" * 10_000))
    result = run_emg_borg("-c", config_path, "before-backup", check=False)
    assert result.returncode == 2
    error = _one_short_line(result.stderr)
    assert error.startswith(f"emg-borg: error: {tmp_path}/ccc") and "characters)…" in error, error
    assert error.endswith("ccc: cannot read configuration: File name too long"), error
    doctor = run_emg_borg("-c", config_path, "doctor", "--borgmatic-config", "/x/" + "b" * 10_000, check=False)
    assert doctor.returncode == 1 and max(map(len, doctor.stdout.splitlines())) <= LINE_LIMIT


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=3000), st.integers(0, 6 * 2**20).map(lambda n: "/x/" + "a" * n + "/end")),
       st.integers(min_value=40, max_value=LINE_LIMIT))
def test_shortened_is_bounded_keeps_head_and_tail_and_leaves_short_text_alone(text, limit):
    short = shortened(text, limit)
    assert len(short) <= limit
    if len(text) <= limit:
        assert short == text
        return
    marker = f"…({len(text):,} characters)…"
    head, tail = short[:short.index(marker)], short[short.index(marker) + len(marker):]
    assert head and tail and text.startswith(head) and text.endswith(tail)
    assert len(short) == limit  # as much of the value as fits
    assert shortened(short, limit) == short


def test_describe_shortens_both_file_names_of_an_os_error():
    error = OSError(18, "Invalid cross-device link", "/a/" + "x" * 10_000, None, "/b/" + "y" * 10_000)
    text = describe(error)
    assert text.startswith("[Errno 18] Invalid cross-device link: '/a/xxx") and "' -> '/b/yyy" in text
    assert text.endswith("yyy'") and len(text) < 2 * VALUE_LIMIT + 60
    huge = describe(ValueError("x" * 10**6))
    assert huge.count("characters)") == 1 and len(huge) == LINE_LIMIT


def test_an_error_and_its_further_lines_are_each_cut_to_the_line_limit(monkeypatch, capsys):
    from emg_borg import cli

    def failing(args, manager):
        error = EmgBorgError("could not do it: " + "m" * 10**6)
        error.further = ["could not release: " + "f" * 10**6, "and a short one"]
        raise error

    monkeypatch.setitem(cli.COMMANDS, "discover", failing)
    assert cli.main(["discover"]) == 1
    lines = capsys.readouterr().err.splitlines()
    first, further, short = lines
    assert first.startswith("emg-borg: error: could not do it: mmm") and first.endswith("mmm")
    assert further.startswith("emg-borg: error: could not release: fff") and short == "emg-borg: error: and a short one"
    assert f"…({len('emg-borg: error: could not do it: ') + 10**6:,} characters)…" in first
    assert all(len(line) <= LINE_LIMIT for line in lines)
