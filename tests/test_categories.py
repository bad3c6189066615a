"""Unit tests of the restore side's pure parts: category selection and its borg patterns (checked
with borg's own pattern matcher), `--at` parsing, repository resolution,
`--scratch-db` parsing, borg error lines and progress lines."""

from __future__ import annotations

import datetime
import io
import logging
import os
from types import SimpleNamespace

import pytest

from borg.patterns import PatternMatcher, load_pattern_file

from emg_borg.emg import categories
from emg_borg.errors import UsageError
from emg_borg.external import borg as borg_module
from emg_borg.external.mysql import Connection
from emg_borg.lifecycle import archives, extract, verify

# The sample layout: logs inside EMGDIR, a blacklist outside it, the spool elsewhere.
SAMPLE = {
    "config": ["etc/emg", "srv/emg-shared/blacklist"],
    "data": ["var/spool/emg"],
    "logs": ["etc/emg/log"],
    "database": ["emg-borg/mysql"],
}
# The vendor default: the spool inside EMGDIR too.
VENDOR = {"config": ["etc/emg"], "data": ["etc/emg/spool"], "logs": ["etc/emg/log"], "executables": ["etc/emg/bin"]}

PATHS = [
    "etc/emg/server.cfg", "etc/emg/log/general", "etc/emg/log", "etc/emg/spool/seqno", "etc/emg/spool/leveldb/CURRENT",
    "etc/emg/bin/emgd", "etc/emg/logbook", "srv/emg-shared/blacklist", "srv/emg-shared/other", "var/spool/emg/seqno",
    "emg-borg/mysql/emg.sql", "emg-borg/manifest.json", "tmp/borgmatic.yaml",
]


def borg_selects(lines) -> set:
    """The PATHS that borg extract would extract with these pattern lines (borg's own matcher)."""
    roots, patterns = [], []
    load_pattern_file(io.StringIO("\n".join(lines) + "\n"), roots, patterns)
    matcher = PatternMatcher()
    matcher.add_inclexcl(patterns)
    matcher.add_includepaths(roots)
    return {p for p in PATHS if matcher.match(p)}


def by_category(manifest_categories, selected) -> set:
    return {p for p in PATHS if categories.category_of(p, manifest_categories) in selected}


def test_parse_categories():
    assert categories.parse(categories.DEFAULT_SELECTION) == ("config", "data", "database")
    assert categories.parse("logs, Config") == ("config", "logs")
    assert categories.parse("all") == categories.CATEGORIES
    with pytest.raises(UsageError, match="unknown category 'spool'"):
        categories.parse("config,spool")
    with pytest.raises(UsageError, match="no categories"):
        categories.parse(" , ")


def test_longest_root_decides_the_category():
    assert categories.category_of("etc/emg/server.cfg", SAMPLE) == "config"
    assert categories.category_of("etc/emg/log/general", SAMPLE) == "logs"
    assert categories.category_of("etc/emg/logbook", SAMPLE) == "config"  # a prefix is not a parent
    assert categories.category_of("/var/spool/emg/seqno", SAMPLE) == "data"
    assert categories.category_of("emg-borg/manifest.json", SAMPLE) is None


def test_config_patterns_prune_the_nested_log_root():
    lines = categories.pattern_lines(SAMPLE, ("config",))
    assert lines == ["! pp:etc/emg/log", "R etc/emg", "R srv/emg-shared/blacklist"]


@pytest.mark.parametrize("layout", [SAMPLE, VENDOR], ids=["sample", "vendor"])
@pytest.mark.parametrize("selected", [
    ("config",), ("data",), ("logs",), ("config", "data", "database"), ("config", "logs"), ("data", "logs"),
    ("executables",), ("config", "data", "database", "logs", "executables"),
])
def test_borg_extracts_exactly_the_selected_categories(layout, selected):
    if not any(layout.get(c) for c in selected):
        with pytest.raises(UsageError, match="holds none of the selected categories"):
            categories.pattern_lines(layout, selected)
        return
    assert borg_selects(categories.pattern_lines(layout, selected)) == by_category(layout, selected)


def test_three_nested_levels():
    layout = {"config": ["a"], "logs": ["a/b"], "data": ["a/b/c"]}
    lines = categories.pattern_lines(layout, ("config", "data"))
    assert lines == ["+ pp:a/b/c", "! pp:a/b", "R a"]
    global PATHS
    saved, PATHS = PATHS, ["a/x", "a/b/y", "a/b/c/z", "d"]
    try:
        assert borg_selects(lines) == {"a/x", "a/b/c/z"}
    finally:
        PATHS = saved


def test_selected_roots_and_missing():
    assert categories.selected_roots(VENDOR, ("config", "data")) == ["etc/emg"]
    assert categories.selected_roots(VENDOR, ("data",)) == ["etc/emg/spool"]
    assert categories.missing(SAMPLE, ("config", "executables")) == ["executables"]


def test_parse_when_local_and_zoned():
    naive = archives.parse_when("2026-11-20 14:00")
    assert naive == datetime.datetime(2026, 11, 20, 14, 0).astimezone()
    zoned = archives.parse_when("2026-11-20T14:00:00+05:30")
    assert zoned.utcoffset() == datetime.timedelta(hours=5, minutes=30)
    assert archives.parse_when("2026-11-20T08:30:00Z") == zoned
    with pytest.raises(UsageError, match="not a date and time"):
        archives.parse_when("last tuesday-ish")


def test_archive_time_is_local_and_to_the_second():
    when = archives.archive_time({"start": "2026-11-20T14:00:00.750000"})
    assert when == datetime.datetime(2026, 11, 20, 14, 0).astimezone()
    assert when <= archives.parse_when("2026-11-20 14:00")


def test_repository_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BORG_REPO", raising=False)
    args = SimpleNamespace(repository="repo.borg", borgmatic_config=None)
    assert archives.resolve_repository(args).location == str(tmp_path / "repo.borg")
    assert archives.Repository("backup@host:emg.borg").location == "backup@host:emg.borg"
    assert archives.Repository("ssh://backup@host/./emg.borg").location == "ssh://backup@host/./emg.borg"
    with pytest.raises(UsageError, match="no repository"):
        archives.resolve_repository(SimpleNamespace(repository=None, borgmatic_config=None))
    monkeypatch.setenv("BORG_REPO", "/srv/emg.borg")
    assert archives.resolve_repository(SimpleNamespace(repository=None, borgmatic_config=None)).location == "/srv/emg.borg"


def test_borgmatic_config_repository_and_passphrase(tmp_path, monkeypatch):
    for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "borgmatic.yaml"
    config.write_text("repositories:\n  - path: /srv/one.borg\n    label: one\n  - path: /srv/two.borg\n"
                      "encryption_passcommand: cat /etc/emg-borg/borg-passphrase\n")
    repository = archives.borgmatic_repository(config)
    assert repository.location == "/srv/one.borg"
    assert repository.env["BORG_PASSCOMMAND"] == "cat /etc/emg-borg/borg-passphrase"
    assert "BORG_PASSCOMMAND" not in repr(repository)
    # borgmatic 1.x: sections, plain strings
    config.write_text("location:\n  repositories:\n    - /srv/old.borg\nstorage:\n  encryption_passphrase: s3cret\n")
    repository = archives.borgmatic_repository(config)
    assert repository.location == "/srv/old.borg" and repository.env["BORG_PASSPHRASE"] == "s3cret"
    monkeypatch.setenv("BORG_PASSPHRASE", "from-environment")
    assert archives.borgmatic_repository(config).env is None  # the environment wins
    config.write_text("keep_daily: 7\n")
    with pytest.raises(UsageError, match="lists no repositories"):
        archives.borgmatic_repository(config)
    config.write_text("repositories: [\n")
    with pytest.raises(UsageError, match="cannot parse borgmatic configuration"):
        archives.borgmatic_repository(config)


def test_scratch_db_spec():
    base = Connection(host="10.0.0.5", port=3306, socket=None, user="emguser", database="emg", password="pw")
    plain = verify.parse_scratch_db("emg_drill", base)
    assert (plain.host, plain.user, plain.database, plain.password) == ("10.0.0.5", "emguser", "emg_drill", "pw")
    other = verify.parse_scratch_db("root@127.0.0.1:3307/drill", base)
    assert (other.host, other.port, other.user, other.password) == ("127.0.0.1", 3307, "root", None)
    sock = verify.parse_scratch_db("root@socket:/run/mysqld/mysqld.sock/drill", base)
    assert (sock.socket, sock.host, sock.database) == ("/run/mysqld/mysqld.sock", None, "drill")
    with pytest.raises(UsageError, match="--scratch-db"):
        verify.parse_scratch_db("drill; DROP DATABASE emg", base)


def test_borg_error_line_plain_and_json():
    json_lines = ('{"type": "progress_percent", "message": "x"}\n'
                  '{"type": "log_message", "levelname": "ERROR", "message": "Archive nosuch does not exist"}\n')
    assert borg_module.error_line(json_lines) == "Archive nosuch does not exist"
    assert borg_module.error_line("some output\nRepository /x does not exist.\n") == "Repository /x does not exist."


def test_progress_logs_percent_every_interval(caplog):
    progress = extract.Progress("extracting data", interval=0)
    with caplog.at_level(logging.INFO, logger="emg_borg"):
        progress({"type": "progress_percent", "current": 512 * 1024, "total": 2 * 1024 * 1024,
                  "info": ["var/spool/emg/leveldb/000005.ldb"], "finished": False})
        progress({"type": "progress_percent", "finished": True})
    assert [r.getMessage() for r in caplog.records] == [
        "extracting data: 25% (512.0 KiB of 2.0 MiB) var/spool/emg/leveldb/000005.ldb"]
    quiet = extract.Progress("extracting data", interval=3600)
    with caplog.at_level(logging.INFO, logger="emg_borg"):
        quiet({"type": "progress_percent", "current": 1, "total": 2, "finished": False})
    assert len(caplog.records) == 1


def test_destination_checks(tmp_path):
    assert extract.check_destination(None, in_place=False) is None
    assert str(extract.check_destination(None, in_place=True)) == "/"
    with pytest.raises(UsageError, match="--in-place"):
        extract.check_destination("/", in_place=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        extract.check_destination(str(busy), in_place=False)
    assert extract.check_destination(str(busy), in_place=True) == busy
    archive = archives.Archive("host-emg-2026-11-20T14:00:00", datetime.datetime.now().astimezone(), {})
    first = extract.new_directory(archive, tmp_path)
    first.mkdir()
    assert extract.new_directory(archive, tmp_path).name == first.name + "-2"
    assert os.sep not in first.name
