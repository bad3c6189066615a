"""Parsing server.cfg and discovering the layout: unit tests on small files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emg_borg.emg import layout, servercfg
from emg_borg.errors import ConfigError

VENDOR_SAMPLE = """\
ROTATELOGS=100M:5
PDULOG
ROUTELOGDB
DBPROFILE=emg
DB emg <
HOST=127.0.0.1
PORT=3306
USERNAME=emguser
PASSWORD=secret
DBNAME=emg
TYPE=MYSQL
INSTANCES=4
>
CONNECTOR mgp-in1 <
TYPE=INCOMING
PROTOCOL=MGP
ADDRESS=127.0.0.1:7185
USERS=users
>
"""


def test_vendor_sample_parses():
    cfg = servercfg.parse(VENDOR_SAMPLE, Path("server.cfg"))
    assert cfg.get("ROTATELOGS") == "100M:5"
    assert cfg.has_flag("PDULOG") and cfg.entry("PDULOG").value is None
    db = cfg.block("DB", "emg")
    assert db.get("PASSWORD") == "secret" and db.line == 5
    assert cfg.block("CONNECTOR", "mgp-in1").entry("USERS").line == 18


def test_comments_blank_lines_and_values_with_equals_signs():
    cfg = servercfg.parse("# comment\n\n  KEY = a=b \nflag2\n", Path("s"))
    assert cfg.get("KEY") == "a=b" and cfg.has_flag("FLAG2")


@pytest.mark.parametrize("text, line, words", [
    ("A=1\nthis is wrong\n", 2, "cannot parse"),
    ("DB x <\nA=1\n", 1, "never closed"),
    ("A=1\n>\n", 2, "closes no block"),
    ("DB x <\nCONNECTOR y <\n>\n", 2, "is not closed"),
])
def test_syntax_errors_name_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as error:
        servercfg.parse(text, Path("/etc/emg/server.cfg"))
    assert str(error.value).startswith(f"/etc/emg/server.cfg:{line}: ")
    assert words in str(error.value)


def make_emgdir(tmp_path, text, files=("users", "routing", "license", "client.cfg")):
    emgdir = tmp_path / "etc" / "emg"
    emgdir.mkdir(parents=True)
    (emgdir / "server.cfg").write_text(text)
    for name in files:
        (emgdir / name).write_text(name)
    return emgdir


def emg_section(emgdir, **overrides):
    return {"emgdir": str(emgdir), "server_cfg": None, "spooldir": None, "logdir": None, "bindir": None, **overrides}


def test_default_spool_inside_emgdir_is_data_not_config(tmp_path):
    emgdir = make_emgdir(tmp_path, VENDOR_SAMPLE)
    (emgdir / "log").mkdir()
    found = layout.discover(emg_section(emgdir), environ={})
    assert found.spooldir == emgdir / "spool"
    assert layout.category_of(emgdir / "spool" / "seqno.hdb", found.roots) == "data"
    assert layout.category_of(emgdir / "log" / "general", found.roots) == "logs"
    assert layout.category_of(emgdir / "server.cfg", found.roots) == "config"
    assert found.db.database == "emg" and found.db.port == 3306
    assert "secret" not in repr(found.db)
    assert set(found.known_files) == {"server.cfg", "users", "routing", "license", "client.cfg"}


def test_references_outside_emgdir_relative_and_absolute(tmp_path):
    outside = tmp_path / "srv" / "blacklist"
    outside.parent.mkdir()
    outside.write_text("x")
    emgdir = make_emgdir(tmp_path, f"SPOOLDIR=/var/spool/emg\nROUTING=routing\nBLACKLIST={outside}\n"
                                   f"PLUGIN p <\nLIBRARY=/opt/emg/lib/p.so\nCONFIG=p.cfg\n>\n")
    (emgdir / "p.cfg").write_text("")
    found = layout.discover(emg_section(emgdir), environ={})
    refs = {r.keyword: r for r in found.references}
    assert refs["ROUTING"].path == emgdir / "routing" and refs["ROUTING"].exists
    assert refs["BLACKLIST"].path == outside and layout.category_of(outside, found.roots) == "config"
    assert refs["LIBRARY"].exists is False and refs["LIBRARY"].category == "executables"
    assert refs["CONFIG"].block == "PLUGIN p" and refs["CONFIG"].line == 6
    assert found.spooldir == Path("/var/spool/emg")
    assert any(r.path == outside for r in found.roots)


def test_symlinked_log_directory_and_emglogdir(tmp_path):
    emgdir = make_emgdir(tmp_path, "")
    real_logs = tmp_path / "var" / "log" / "emg"
    real_logs.mkdir(parents=True)
    (emgdir / "log").symlink_to(real_logs)
    found = layout.discover(emg_section(emgdir), environ={})
    assert found.logdir == real_logs
    assert layout.category_of(real_logs / "general", found.roots) == "logs"
    other = tmp_path / "elsewhere"
    other.mkdir()
    found = layout.discover(emg_section(emgdir), environ={"EMGLOGDIR": str(other)})
    assert found.logdir == other


def test_dbprofile_naming_missing_block_is_an_error_with_line(tmp_path):
    emgdir = make_emgdir(tmp_path, "A=1\nDBPROFILE=nope\n")
    with pytest.raises(ConfigError, match=r"server.cfg:2: DBPROFILE=nope names no 'DB nope <' block"):
        layout.discover(emg_section(emgdir), environ={})


def test_nodeid(tmp_path):
    emgdir = make_emgdir(tmp_path, "NODEID=3\n")
    assert layout.discover(emg_section(emgdir), environ={}).node_id == 3
    (emgdir / "server.cfg").write_text("NODEID=x\n")
    with pytest.raises(ConfigError, match="server.cfg:1: NODEID must be an integer"):
        layout.discover(emg_section(emgdir), environ={})


def test_missing_emgdir_and_server_cfg(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        layout.discover(emg_section(tmp_path / "nope"), environ={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="server.cfg not found"):
        layout.discover(emg_section(tmp_path / "empty"), environ={})


def test_bindir_with_versioned_symlinks_is_executables(tmp_path):
    emgdir = make_emgdir(tmp_path, "")
    (emgdir / "bin").mkdir()
    (emgdir / "bin" / "emgd-7.2.0-50785").write_text("")
    os.symlink("emgd-7.2.0-50785", emgdir / "bin" / "emgd")
    found = layout.discover(emg_section(emgdir), environ={})
    assert layout.category_of(emgdir / "bin" / "emgd", found.roots) == "executables"
