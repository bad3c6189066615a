"""The restore side end to end: archives made by real borgmatic with borgmatic-example.yaml,
extracted, restored and verified with real borg 1.4 and the throwaway MariaDB. Assertions are on
what lands on disk (byte for byte), rows in the database, exit codes and messages."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (Emg, borg_create_from, borg_extract_all, borg_list, dump_path, run, run_emg_borg,
                      set_borg_environment, start_named)
from emg_borg.demo import sample
from emg_borg.plugins.seqno import DEFAULT_MARGIN


def seqno(message_id: int) -> bytes:
    """What restore writes to SPOOLDIR/seqno for `message_id` with the default margin."""
    return b"%d\n" % (message_id + DEFAULT_MARGIN)

pytestmark = [pytest.mark.e2e, pytest.mark.runs_restore]


def unchanged_state(emg) -> dict:
    """What a test that only reads the shared installation must leave as it was: every file of
    its tree and repository (size and modification time), and its database's tables."""
    files = {}
    for top in (emg.tree.root, emg.repo):
        for path in sorted(top.rglob("*")):
            if path.is_file() and not path.name.startswith("lock."):
                info = path.stat()
                files[str(path)] = (info.st_size, info.st_mtime_ns)
    tables = emg.mariadb.sql(f"SHOW TABLES FROM {emg.database}").split()
    checksums = emg.mariadb.sql(f"CHECKSUM TABLE {', '.join(tables)}", emg.database)
    return {"files": files, "tables": checksums}


@pytest.fixture(scope="module")
def shared_archive(tmp_path_factory, mariadb):
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_borg_environment(monkeypatch, tmp_path_factory)
        emg = Emg(tmp_path_factory.mktemp("archived"), mariadb)
        emg.borgmatic_create()
    return emg, unchanged_state(emg)


@pytest.fixture
def archived(shared_archive):
    """A sample installation with one archive made by borgmatic, made once per module (per
    worker under pytest-xdist) for the tests that only read it: they extract, list and restore
    into directories of their own. That they changed neither its tree, nor its repository, nor
    its database is checked after each of them."""
    emg, before = shared_archive
    yield emg
    assert unchanged_state(emg) == before, "a test changed the shared installation"


def rel(path) -> str:
    return str(path).lstrip("/")


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file below `root`, by path relative to it, with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def newest(emg) -> str:
    return borg_list(emg.repo)[-1]


def config_files(emg) -> dict[str, bytes]:
    return {rel(p): p.read_bytes() for p in emg.tree.config_files()}


def spool_files(emg) -> dict[str, bytes]:
    """The live spool as the archive holds it: everything but the stale live seqno."""
    return {rel(p): b for p, b in ((emg.tree.spooldir / k, v) for k, v in files_under(emg.tree.spooldir).items())
            if p.name != "seqno"}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]


def test_extract_config_yields_exactly_the_config_files(archived, tmp_path):
    emg = archived
    destination = tmp_path / "out"
    result = emg.emg_borg("extract", "--repository", str(emg.repo), "--categories", "config", "--destination", str(destination))
    assert f"into {destination}" in result.stdout
    assert files_under(destination) == config_files(emg)


def test_default_extract_has_config_spool_and_dump_but_no_logs(archived, tmp_path):
    emg = archived
    destination = tmp_path / "out"
    emg.emg_borg("extract", "--repository", str(emg.repo), "--destination", str(destination))
    extracted = files_under(destination)
    assert not [p for p in extracted if p.startswith(rel(emg.tree.logdir))]
    for path, content in {**config_files(emg), **spool_files(emg)}.items():
        assert extracted[path] == content, path
    assert extracted[rel(emg.tree.spooldir / "seqno")] == b"1049\n"
    manifest = json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)[0]
    assert manifest["dump_bytes"] == len(extracted[f"emg-borg/dumps/mysql/{emg.database}.sql"])
    assert "emg-borg/manifest.json" not in extracted

    # --categories logs gives the log files and nothing else; executables were never backed up.
    logs = tmp_path / "logs"
    result = emg.emg_borg("extract", "--repository", str(emg.repo), "--categories", "logs,executables",
                          "--destination", str(logs))
    assert set(files_under(logs)) == {rel(emg.tree.logdir / n) for n in
                                      ("general", "general.1", "debug", "connector.mgp-in1", "pdu.smpp-out1", "security")}
    assert "holds no executables" in result.stderr


def test_dry_run_lists_by_category_and_writes_nothing(archived, tmp_path):
    emg = archived
    destination = tmp_path / "out"
    result = emg.emg_borg("extract", "--repository", str(emg.repo), "--dry-run", "--json", "--destination", str(destination))
    plan = json.loads(result.stdout)["categories"]
    assert set(plan) == {"config", "data", "database"}
    assert {i["path"] for i in plan["config"] if i["type"] == "-"} == set(config_files(emg))
    assert [i["path"] for i in plan["database"] if i["type"] == "-"] == [f"emg-borg/dumps/mysql/{emg.database}.sql"]
    assert not destination.exists()
    text = emg.emg_borg("extract", "--repository", str(emg.repo), "--dry-run", "--categories", "logs").stdout
    assert "logs (7 items" in text and rel(emg.tree.logdir / "security") in text


def test_patterns_file_works_with_plain_borg_extract(archived, tmp_path):
    emg = archived
    text = emg.emg_borg("patterns", "--repository", str(emg.repo), "--categories", "config").stdout
    assert f"! pp:{rel(emg.tree.logdir)}" in text and f"R {rel(emg.tree.emgdir)}" in text
    patterns = tmp_path / "patterns"
    patterns.write_text(text)
    destination = tmp_path / "out"
    destination.mkdir()
    subprocess.run(["borg", "extract", "--patterns-from", str(patterns), f"{emg.repo}::{newest(emg)}"],
                   cwd=destination, check=True)
    assert files_under(destination) == config_files(emg)


def test_patterns_for_nested_logs_work_with_plain_borg_extract(archived, tmp_path):
    """The logs lie inside EMGDIR: their root is an `R` line, and plain borg extracts them with exit 0
    (no "Include pattern ... never matched" warning)."""
    emg = archived
    text = emg.emg_borg("patterns", "--repository", str(emg.repo), "--categories", "logs").stdout
    assert f"R {rel(emg.tree.logdir)}" in text and f"pp:{rel(emg.tree.logdir)}" not in text
    patterns = tmp_path / "patterns"
    patterns.write_text(text)
    destination = tmp_path / "out"
    destination.mkdir()
    result = subprocess.run(["borg", "extract", "--patterns-from", str(patterns), f"{emg.repo}::{newest(emg)}"],
                            cwd=destination, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(files_under(destination)) == {rel(p) for p in emg.tree.logdir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_at_picks_the_right_one_of_three_archives(emg, mariadb, tmp_path):
    ids = [1049, 2000, 3000]
    for number, message_id in enumerate(ids):
        if number:
            time.sleep(1.1)  # archive names and times have one-second resolution
            mariadb.sql(f"INSERT INTO routelog (id, connector) VALUES ({message_id}, 'mgp-in1')", emg.database)
        emg.borgmatic_create()
    listed = json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)
    assert [a["message_id"] for a in listed] == ids[::-1]
    assert all(a["snapshot_provider"] == "none" and a["dump_bytes"] > 0 for a in listed)
    times = {a["message_id"]: datetime.datetime.fromisoformat(a["time"]) for a in listed}
    table = emg.emg_borg("archives", "--repository", str(emg.repo)).stdout.splitlines()
    assert table[0].split() == ["time", "message", "id", "provider", "freeze", "ms", "dump", "node", "archive"]
    assert [line.split()[1] for line in table[1:]] == ["3000", "2000", "1049"]
    assert [line.split()[-1] for line in table[1:]] == [a["name"] for a in listed]

    def seqno_at(*selection) -> bytes:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        emg.emg_borg("extract", "--repository", str(emg.repo), "--categories", "data", "--destination", str(out), *selection)
        return (out / rel(emg.tree.spooldir) / "seqno").read_bytes()

    middle = times[2000]
    assert seqno_at("--at", middle.astimezone().strftime("%Y-%m-%d %H:%M:%S")) == b"2000\n"  # local, no zone
    in_other_zone = middle.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    assert seqno_at("--at", in_other_zone.isoformat()) == b"2000\n"  # ISO 8601 with a zone
    assert seqno_at("--at", (times[3000] + datetime.timedelta(days=1)).isoformat()) == b"3000\n"
    assert seqno_at() == b"3000\n"  # latest
    assert seqno_at("--archive", listed[2]["name"]) == b"1049\n"

    too_early = (times[1049] - datetime.timedelta(seconds=1)).isoformat()
    result = emg.emg_borg("extract", "--repository", str(emg.repo), "--at", too_early, check=False)
    assert result.returncode == 2 and "no archive" in error_lines(result)[0] and "the first archive is from" in result.stderr

    # Archives without a manifest do not count.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "note").write_text("not emg-borg\n")
    borg_create_from(emg.repo, "not-emg-borg", plain)
    assert len(json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)) == 3
    assert seqno_at() == b"3000\n"


def test_restore_on_empty_target_rebuilds_config_spool_and_database(emg, mariadb, tmp_path):
    emg.write_config("none", "[seqno]\nmargin = 1000\n")
    emg.borgmatic_create()
    mariadb.sql(f"DROP DATABASE {emg.database}")  # the database is lost with the machine
    target = tmp_path / "target"
    target.mkdir()

    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target))
    restored = files_under(target)
    assert {k: v for k, v in restored.items() if not k.endswith("/seqno")} == {**config_files(emg), **spool_files(emg)}
    assert restored[rel(emg.tree.spooldir / "seqno")] == b"2049\n"
    assert "2049 from the archive's message id 1049 + margin 1000" in result.stdout
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert "loaded the dump" in result.stdout and "start emgd" in result.stdout
    assert "check that emgd accepts the restored license" in result.stdout
    assert "made on another machine" not in result.stderr
    assert sample.DB_PASSWORD not in result.stdout + result.stderr


def test_restore_dry_run_changes_nothing(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    mariadb.sql(f"DROP DATABASE {emg.database}")
    target = tmp_path / "target"
    target.mkdir()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--dry-run", "--json")
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["seqno"]["value"] == 1049 + DEFAULT_MARGIN
    assert any("would load the dump" in line for line in report["done"])
    assert list(target.iterdir()) == []
    assert mariadb.sql(f"SHOW DATABASES LIKE '{emg.database}'") == ""


def test_newer_live_database_raises_the_written_id(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    # A replicated standby kept receiving traffic after the backup.
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (5000, 'mgp-in1')", emg.database)
    target = tmp_path / "target"
    target.mkdir()

    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--skip-data")
    seqno_path = target / rel(emg.tree.spooldir) / "seqno"
    assert seqno_path.read_bytes() == seqno(5000)
    assert "the highest id in the live database 5000" in result.stdout
    assert "also seen: the archive's message id 1049" in result.stdout
    # --skip-data: configuration and seqno only; the live database was kept.
    assert {k for k in files_under(target) if k.startswith(rel(emg.tree.spooldir))} == {rel(emg.tree.spooldir / "seqno")}
    assert set(config_files(emg)) <= set(files_under(target))
    assert "left the database" in result.stdout and "recreates empty queues" in result.stdout
    assert mariadb.sql("SELECT MAX(id) FROM routelog", emg.database).split() == ["5000"]

    again = tmp_path / "again"
    again.mkdir()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(again), "--skip-data",
                          "--message-id", "7000")
    assert (again / rel(seqno_path.relative_to(target))).read_bytes() == seqno(7000)
    assert "from --message-id 7000" in result.stdout


@pytest.mark.parametrize("selection", [("--skip-data",), ("--categories", "config")], ids=["skip-data", "config"])
def test_restore_without_data_keeps_the_live_message_id_counter(emg, mariadb, tmp_path, selection):
    """The live spool stays, and its seqno.hdb counts on from ids newer than the archive: no
    seqno is written for it unless --message-id is given. But a pending seqno file (read into
    seqno.hdb at the next start) below the highest id known is raised, never left below it."""
    emg.borgmatic_create()
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (5000, 'mgp-in1')", emg.database)
    spool = emg.tree.spooldir
    assert (spool / "seqno").read_bytes() == b"1\n"  # the sample's stale pending file
    result = emg.emg_borg("restore", "--repository", str(emg.repo), *selection)
    assert (spool / "seqno").read_bytes() == seqno(5000)
    assert (f"raised the pending {spool / 'seqno'} from 1 to {5000 + DEFAULT_MARGIN} (the highest id in the live "
            f"database 5000 + margin {DEFAULT_MARGIN}") in result.stdout
    assert f"left the live spool {spool} as it is" in result.stdout and "recreates empty" not in result.stdout

    # A pending seqno already above every known id is left as it is, and none is written without one.
    (spool / "seqno").write_text(f"{10**12}\n")
    result = emg.emg_borg("restore", "--repository", str(emg.repo), *selection)
    assert (spool / "seqno").read_bytes() == b"%d\n" % 10**12
    assert f"left the pending {spool / 'seqno'} = {10**12}" in result.stdout
    (spool / "seqno").unlink()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), *selection)
    assert not (spool / "seqno").exists()
    assert f"wrote no {spool / 'seqno'}: the live message id counter {spool / 'seqno.hdb'} was kept" in result.stdout

    result = emg.emg_borg("restore", "--repository", str(emg.repo), *selection, "--message-id", "9000")
    assert (spool / "seqno").read_bytes() == seqno(9000)
    assert "from --message-id 9000" in result.stdout


def test_non_empty_database_is_replaced_only_with_force_database(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (5000, 'mgp-in1')", emg.database)
    target = tmp_path / "target"
    target.mkdir()

    refused = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--database", check=False)
    assert refused.returncode == 1
    assert len(error_lines(refused)) == 1 and "refusing to load the archived dump" in refused.stderr
    assert list(target.iterdir()) == []
    assert mariadb.sql("SELECT MAX(id) FROM routelog", emg.database).split() == ["5000"]

    mariadb.sql("CREATE TABLE extra_live (id INT PRIMARY KEY)", emg.database)  # not in the archived dump
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--force-database")
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    # Replaced, not merged: the live-only table is gone, and the count is the dump's own.
    assert mariadb.sql("SHOW TABLES LIKE 'extra_live'", emg.database) == ""
    assert "(5 tables)" in result.stdout and "dropped the database" in result.stdout
    # The id read before the dump replaced the table still wins.
    assert (target / rel(emg.tree.spooldir) / "seqno").read_bytes() == seqno(5000)
    assert "loaded the dump" in result.stdout


def test_database_is_loaded_last_and_not_after_an_incomplete_extraction(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (5000, 'mgp-in1')", emg.database)
    target = tmp_path / "target"
    users = target / rel(emg.tree.emgdir / "users")
    users.parent.mkdir(parents=True)
    users.write_text("old users\n")
    (target / rel(emg.tree.server_cfg)).write_text("# old server.cfg\n")
    subprocess.run(["chattr", "+i", str(users)], check=True)
    try:
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--force-database",
                              check=False)
    finally:
        subprocess.run(["chattr", "-i", str(users)], check=True)
    assert result.returncode == 1
    # The database still goes with the live files: not replaced after the failed extraction.
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["51", "5000"]
    assert "loaded the dump" not in result.stdout
    assert "not done because the files are incomplete: load the dump" in result.stdout
    # The configuration file that was there and was replaced is named.
    assert f"overwrote 1 existing configuration files with the archived ones (their previous content is not kept): " \
           f"{target / rel(emg.tree.server_cfg)}" in result.stdout

    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--force-database")
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    done = [line for line in result.stdout.splitlines() if "done:" in line]
    order = [what for line in done for what in ("extracted", "dropped the database", "loaded the dump") if what in line]
    assert order == ["extracted", "dropped the database", "loaded the dump"]


def test_restore_with_database_unreachable_restores_files_and_says_what_is_left(emg, tmp_path):
    emg.borgmatic_create()
    emg.write_config("none", "[mysql]\nport = 1\n")  # [mysql] overrides the archived DB profile
    target = tmp_path / "target"
    target.mkdir()
    # The live database might hold newer ids: without --message-id the restore stops, writing nothing.
    refused = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), check=False)
    assert refused.returncode == 1 and list(target.iterdir()) == []
    [error] = error_lines(refused)
    assert error.startswith("emg-borg: error: cannot read the live database's highest message id: cannot connect")
    assert "pass --message-id N" in error
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--message-id", "1200")
    assert (target / rel(emg.tree.spooldir) / "seqno").read_bytes() == seqno(1200)
    assert set(config_files(emg)) <= set(files_under(target))
    assert "load the database dump once MySQL runs" in result.stdout
    assert "the live database could not be read" in result.stdout
    # Asked for explicitly, the database step is a failure, before anything is written.
    again = tmp_path / "again"
    again.mkdir()
    failed = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(again), "--database",
                          "--message-id", "1200", check=False)
    assert failed.returncode == 1 and "cannot connect to MySQL" in error_lines(failed)[0]
    assert list(again.iterdir()) == []


def test_a_file_borg_cannot_write_fails_restore_and_verify(archived, tmp_path):
    """borg exits 1 (a warning) when it cannot write a file: that is a failed restore, not a
    restored one, and a failed verify."""
    emg = archived
    target = tmp_path / "target"
    users = target / rel(emg.tree.emgdir / "users")
    users.parent.mkdir(parents=True)
    users.write_text("old users\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["chattr", "+i", str(users), str(scratch)], check=True)
    try:
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target),
                              "--categories", "config", check=False)
        assert result.returncode == 1
        assert users.read_text() == "old users\n"
        todo = result.stdout.split("still to do:")[1]
        assert "NOT RESTORED" in todo and f"{rel(emg.tree.emgdir / 'users')}: open: [Errno 1] Operation not permitted" in todo
        assert (target / rel(emg.tree.server_cfg)).read_bytes() == emg.tree.server_cfg.read_bytes()
        errors = error_lines(result)
        assert len(errors) == 1 and "restore incomplete: borg could not write 1 path(s)" in errors[0]

        verified = emg.emg_borg("verify", "--repository", str(emg.repo), "--scratch-dir", str(scratch), check=False)
        assert verified.returncode == 1
        assert len(verified.stdout.splitlines()) == 1
        assert verified.stdout.startswith(f"verify FAILED: {newest(emg)}: extract: borg could not write")
    finally:
        subprocess.run(["chattr", "-i", str(users), str(scratch)], check=True)


def test_restore_moves_an_existing_spool_aside(emg, tmp_path):
    emg.borgmatic_create()
    target = tmp_path / "target"
    spool = target / rel(emg.tree.spooldir)
    (spool / "leveldb").mkdir(parents=True)
    (spool / "leveldb" / "000099.ldb").write_bytes(b"stale")
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--categories", "data")
    assert not (spool / "leveldb" / "000099.ldb").exists()
    assert {rel(spool / k) for k in files_under(spool) if k != "seqno"} == {
        k.replace(rel(emg.tree.spooldir), rel(spool), 1) for k in spool_files(emg)}
    aside, = [p for p in spool.parent.iterdir() if p != spool]
    assert aside.name.startswith("emg.emg-borg-before-restore-")
    assert (aside / "leveldb" / "000099.ldb").read_bytes() == b"stale"
    assert f"moved the existing spool {spool} aside to {aside}" in result.stderr
    assert f"done: moved the existing {spool} aside to {aside}" in result.stdout
    assert f"remove {aside} once EMG runs well" in result.stdout


def test_restore_of_the_vendor_layout_moves_the_spool_aside_under_emg_borg_s_name(tmp_path):
    """The vendor default SPOOLDIR=EMGDIR/spool: the old spool lands in EMGDIR, under a name
    carrying emg-borg's mark (which the backup side excludes); each restore keeps its own."""
    emg = Emg(tmp_path, None, spooldir=tmp_path / "root" / "etc" / "emg" / "spool")
    emg.borgmatic_create()
    for number in (1, 2):
        (emg.tree.spooldir / "queue-stale.hdb").write_bytes(b"stale %d" % number)
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", "/", "--categories", "data")
        assert result.returncode == 0
    asides = sorted(p for p in emg.tree.emgdir.iterdir() if p.name.startswith("spool.emg-borg-before-restore-"))
    assert len(asides) == 2
    assert sorted((a / "queue-stale.hdb").read_bytes() for a in asides) == [b"stale 1", b"stale 2"]
    assert not (emg.tree.spooldir / "queue-stale.hdb").exists()
    assert not [p for p in emg.tree.spooldir.iterdir() if "before-restore" in p.name]


def test_restore_into_a_mounted_spool_keeps_the_old_content_in_a_hidden_directory(emg, tmp_path):
    if not shutil.which("mount"):
        pytest.skip("mount is missing")
    emg.borgmatic_create()
    target = tmp_path / "target"
    spool = target / rel(emg.tree.spooldir)
    spool.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "emg-borg-test", str(spool)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (spool / "queue-stale.hdb").write_bytes(b"stale")
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--categories", "data")
        aside, = [p for p in spool.iterdir() if p.name.startswith(".emg-borg-before-restore-")]
        assert (aside / "queue-stale.hdb").read_bytes() == b"stale"
        assert not (spool / "queue-stale.hdb").exists()
        assert (spool / "seqno").read_bytes() == seqno(1049)
        assert f"moved the existing spool {spool} aside to {aside}" in result.stderr
        assert os.path.ismount(spool)
    finally:
        subprocess.run(["umount", str(spool)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("captured", [None, 0], ids=["none", "zero"])
def test_restore_without_a_known_message_id_writes_no_seqno(tmp_path, captured):
    """An archive whose backup captured no message id (None: no database and no [seqno] command;
    or 0 from an empty routelog, with a seqno of 0), no live database, no --message-id: emgd must
    keep the restored seqno.hdb, so no seqno file is left in the spool, whatever the margin."""
    emg = Emg(tmp_path, None, extra_config="[seqno]\nmargin = 1000\n")
    emg.borgmatic_create()
    spool = rel(emg.tree.spooldir)
    archive = newest(emg)
    assert rel(emg.tree.spooldir / "seqno") not in borg_list(emg.repo, archive)

    def zero(work, manifest):
        assert manifest["message_id"] is None
        manifest["message_id"], manifest["seqno_path"] = 0, f"{spool}/seqno"
        (work / spool / "seqno").write_text("0\n")

    if captured == 0:
        archive = rebuilt_archive(emg, tmp_path, "zero-id", zero)
    target = tmp_path / "target"
    target.mkdir()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", archive, "--target", str(target))
    restored = target / spool
    assert not (restored / "seqno").exists()
    assert (restored / "seqno.hdb").read_bytes() == (emg.tree.spooldir / "seqno.hdb").read_bytes()
    assert f"no message id is known, so no {restored / 'seqno'} was written: emgd keeps the message id counter of " \
           f"the restored seqno.hdb" in result.stdout
    assert "wrote" not in result.stdout and "margin 1000" not in result.stdout and "= 1000" not in result.stdout

    report = json.loads(emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", archive, "--target",
                                     str(target), "--dry-run", "--json").stdout)
    assert report["seqno"]["value"] is None
    assert not [line for line in report["done"] if "seqno" in line and "write" in line]


def test_restore_in_place_repairs_the_live_installation(emg, mariadb):
    """The default target is /: the sample tree lives under the test's temp dir at its real
    paths, so this is the restore an operator runs on the machine itself."""
    emg.borgmatic_create()
    expected_config, expected_spool = config_files(emg), spool_files(emg)
    tree = emg.tree
    tree.server_cfg.write_text("# broken by an operator\n")
    (tree.emgdir / "users").unlink()
    tree.blacklist.unlink()
    shutil.rmtree(tree.spooldir)
    mariadb.sql("INSERT INTO routelog (id, connector) VALUES (1500, 'mgp-in1')", emg.database)

    # extract --in-place puts back configuration only, over the live paths
    emg.emg_borg("extract", "--repository", str(emg.repo), "--categories", "config", "--in-place")
    assert {rel(p): p.read_bytes() for p in tree.config_files()} == expected_config
    assert not tree.spooldir.exists()

    result = emg.emg_borg("restore", "--repository", str(emg.repo))
    assert {rel(tree.spooldir / k): v for k, v in files_under(tree.spooldir).items() if k != "seqno"} == expected_spool
    assert (tree.spooldir / "seqno").read_bytes() == seqno(1500)
    assert f"wrote {tree.spooldir / 'seqno'} = {1500 + DEFAULT_MARGIN} from the highest id in the live database 1500 + margin {DEFAULT_MARGIN}" in result.stdout
    assert (tree.logdir / "general").exists()  # logs were never touched


@pytest.mark.starts_emgd
@pytest.mark.parametrize("daemon", ["emgd", "emgd-7.2.0-50785"])
def test_restore_refuses_while_emgd_runs(emg, tmp_path, daemon):
    """emgd as installed (a symlink to the versioned binary, which names the process), or the
    versioned binary started directly."""
    emg.borgmatic_create()
    fake = tmp_path / "bin" / daemon
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    target = tmp_path / "target"
    target.mkdir()
    # An emgd elsewhere on this host (another test run's, a real one) is not the target's.
    elsewhere = start_named(fake, 60)
    try:
        dry = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--dry-run")
        assert f"emgd is running (pid {elsewhere.pid})" not in dry.stderr
    finally:
        elsewhere.kill()
        elsewhere.wait()
    process = start_named(fake, 60, cwd=target)  # the target's own emgd
    try:
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), check=False)
        assert result.returncode == 1
        errors = error_lines(result)
        assert len(errors) == 1 and "--force" in errors[0], errors
        # Ours among them: a real emgd on this machine (or another test session's) may be listed too.
        listed = re.search(r"emgd is running \(pid ([\d, ]+)\)", errors[0])
        assert listed and str(process.pid) in listed.group(1).split(", "), errors[0]
        assert list(target.iterdir()) == []
    finally:
        process.kill()
        process.wait()
    assert emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--skip-data").returncode == 0


def rebuilt_archive(emg, tmp_path, name, change) -> str:
    """A copy of the newest archive, changed by `change(directory, manifest)` and stored with
    plain borg under `name`."""
    work = borg_extract_all(emg.repo, newest(emg), tmp_path / f"rebuild-{name}")
    manifest_path = work / "emg-borg" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(work, manifest)
    manifest_path.write_text(json.dumps(manifest))
    borg_create_from(emg.repo, name, work)
    return name


@pytest.mark.slow
def test_message_id_out_of_range_is_a_usage_error(emg, mariadb, tmp_path):
    emg.borgmatic_create()

    def node_3(work, manifest):
        manifest["node_id"] = 3

    on_node_3 = rebuilt_archive(emg, tmp_path, "node-3", node_3)
    target = tmp_path / "target"
    target.mkdir()
    cases = [("0", None, "out of range"), ("-5", None, "out of range"), (str(2**63), None, "out of range"),
             ("7000", on_node_3, "outside node 3's range 30000000000000000 ... 39999999999999999")]
    for value, archive, message in cases:
        selection = ("--archive", archive) if archive else ()
        result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), *selection,
                              "--message-id", value, check=False)
        assert result.returncode == 2, (value, result.stderr)
        errors = error_lines(result)
        assert len(errors) == 1 and f"--message-id {value} " in errors[0] and message in errors[0], result.stderr
        assert list(target.iterdir()) == []
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), "--archive", on_node_3,
                          "--skip-data", "--message-id", str(3 * 10**16 + 7000))
    assert (target / rel(emg.tree.spooldir) / "seqno").read_bytes() == seqno(3 * 10**16 + 7000)


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_sigterm_removes_the_decrypted_dump(emg, mariadb, tmp_path, command):
    """Killed while the dump loads (a mysql client that hangs), restore and verify still remove
    their temporary directory holding the decrypted dump."""
    emg.borgmatic_create()
    marker = tmp_path / "mysql-started"
    hanging = tmp_path / "hanging-mysql"
    hanging.write_text(f"#!/bin/sh\necho $$ > {marker}\nexec sleep 60\n")
    hanging.chmod(0o755)
    emg.write_config("none", f'[mysql]\nmysql = "{hanging}"\n')
    temp = tmp_path / "tmp"
    temp.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    mariadb.sql(f"DROP DATABASE {emg.database}")
    args = {"restore": ("--target", str(target), "--database"),
            "verify": ("--load-dump", "--scratch-db", f"{emg.database}_scratch")}[command]
    process = subprocess.Popen(
        [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), command, "--repository", str(emg.repo), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate()
        assert [p.name.startswith(f"emg-borg-{'dump' if command == 'restore' else 'verify'}-") for p in temp.iterdir()] == [True]
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if marker.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(marker.read_text()), 9)
    assert process.returncode == 1
    assert "interrupted by SIGTERM" in stderr
    assert list(temp.iterdir()) == []


@pytest.mark.slow
def test_verify_passes_on_a_good_archive_and_fails_on_an_altered_dump(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    good = newest(emg)
    result = emg.emg_borg("verify", "--repository", str(emg.repo))
    assert result.stdout.startswith(f"verify OK: {good}") and "seqno 1049" in result.stdout

    scratch = f"{emg.database}_scratch"
    result = emg.emg_borg("verify", "--repository", str(emg.repo), "--load-dump", "--scratch-db", scratch, "--json")
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {c["name"]: c["ok"] for c in report["checks"]} == {
        "extract": True, "dump": True, "server.cfg": True, "seqno": True, "load": True}
    assert "5 tables loaded" in [c for c in report["checks"] if c["name"] == "load"][0]["detail"]
    assert mariadb.sql(f"SHOW DATABASES LIKE '{scratch}'") == ""  # dropped again

    def alter_dump(work, manifest):
        dump = work / dump_path(manifest)
        dump.write_bytes(dump.read_bytes().replace(b"'mgp-in1'", b"'mgp-XX1'", 1))

    altered = rebuilt_archive(emg, tmp_path, "altered-dump", alter_dump)
    result = emg.emg_borg("verify", "--repository", str(emg.repo), "--archive", altered, check=False)
    assert result.returncode == 1
    assert result.stdout.startswith(f"verify FAILED: {altered}: dump: the dump emg-borg/dumps/mysql/{emg.database}.sql: sha256")

    # restore will not load such a dump, and says why before touching the (empty) target
    mariadb.sql(f"DROP DATABASE {emg.database}")
    target = tmp_path / "target"
    target.mkdir()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", altered, "--target", str(target), check=False)
    assert result.returncode == 1 and "not loading it" in error_lines(result)[0]
    assert list(target.iterdir()) == []


def test_verify_fails_on_wrong_seqno_and_broken_server_cfg(emg, tmp_path):
    emg.borgmatic_create()

    def break_things(work, manifest):
        (work / manifest["seqno_path"]).write_text("17\n")
        cfg = work / manifest["server_cfg"].lstrip("/")
        cfg.write_text(cfg.read_text() + "THIS IS NOT EMG SYNTAX\n")

    broken = rebuilt_archive(emg, tmp_path, "broken", break_things)
    result = emg.emg_borg("verify", "--repository", str(emg.repo), "--archive", broken, "--json", check=False)
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["dump"]["ok"] and not checks["seqno"]["ok"] and not checks["server.cfg"]["ok"]
    assert "the manifest says 1049" in checks["seqno"]["detail"] and "cannot parse" in checks["server.cfg"]["detail"]


def test_restore_from_other_hardware_warns_about_the_license(emg, tmp_path):
    emg.borgmatic_create()

    def other_machine(work, manifest):
        manifest["machine"] = {"hostname": "old-emg", "machine_id": "0" * 32, "product_uuid": "OLD-UUID"}

    archive = rebuilt_archive(emg, tmp_path, "other-machine", other_machine)
    target = tmp_path / "target"
    target.mkdir()
    result = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", archive, "--target", str(target),
                          "--skip-data")
    assert "the archive was made on another machine" in result.stderr and "new EMG license key" in result.stderr
    assert "request a new license key" in result.stdout


def test_bad_input_gives_one_line_and_writes_nothing(archived, tmp_path):
    emg = archived
    not_repo = tmp_path / "not-a-repo"
    not_repo.mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    out = tmp_path / "out"
    repo = str(emg.repo)
    cases = [
        (("--repository", repo, "--categories", "config,spool"), 2, "unknown category 'spool'"),
        (("--repository", repo, "--archive", "no-such-archive"), 2, "archive 'no-such-archive' not found"),
        (("--repository", repo, "--at", "2001-01-01 00:00"), 2, "no archive in"),
        (("--repository", repo, "--at", "yesterday-ish"), 2, "not a date and time"),
        (("--repository", str(not_repo)), 1, "is not a valid repository"),
        (("--repository", repo, "--destination", str(busy)), 2, f"destination {busy} is not empty"),
        (("--repository", repo, "--destination", "/"), 2, "add --in-place"),
        ((), 2, "no repository"),
    ]
    for args, code, message in cases:
        result = run_emg_borg("extract", *args, *(() if "--destination" in args else ("--destination", str(out))),
                              check=False)
        assert result.returncode == code, (args, result.stderr)
        errors = error_lines(result)
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert not out.exists(), args
    assert [p.name for p in busy.iterdir()] == ["keep"]

    wrong = run([sys.executable, "-m", "emg_borg", "archives", "--repository", repo], check=False,
                env={**os.environ, "BORG_PASSPHRASE": "wrong"})
    assert wrong.returncode == 1 and "passphrase" in error_lines(wrong)[0].lower()


def test_repository_from_borgmatic_config_and_borg_repo(archived, monkeypatch):
    emg = archived
    by_config = run_emg_borg("archives", "--borgmatic-config", str(emg.borgmatic_config()), "--json")
    assert json.loads(by_config.stdout)[0]["message_id"] == 1049
    monkeypatch.setenv("BORG_REPO", str(emg.repo))
    monkeypatch.delenv("BORG_PASSPHRASE")  # comes from the borgmatic configuration above, not here
    assert run_emg_borg("archives", "--borgmatic-config", str(emg.borgmatic_config())).returncode == 0
    monkeypatch.setenv("BORG_PASSPHRASE", "emg-borg-test-passphrase")
    assert "1049" in run_emg_borg("archives").stdout


def test_manifest_format_1_archives_still_list_verify_and_restore_and_a_newer_format_is_refused(emg, mariadb, tmp_path):
    emg.borgmatic_create()

    def as_format_1(work, manifest):
        # emg-borg 0.1's layout: one `mysql` object and the dump under emg-borg/mysql/.
        [dump] = manifest.pop("dumps")
        (work / "emg-borg" / "mysql").mkdir()
        (work / dump["path"]).rename(work / "emg-borg" / "mysql" / f"{dump['database']}.sql")
        shutil.rmtree(work / "emg-borg" / "dumps")
        manifest.update(format_version=1, categories={**manifest["categories"], "database": ["emg-borg/mysql"]},
                        mysql={"database": dump["database"], "dump": f"emg-borg/mysql/{dump['database']}.sql",
                               "bytes": dump["bytes"], "sha256": dump["sha256"]})

    old = rebuilt_archive(emg, tmp_path, "format-1", as_format_1)
    listed = json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)
    assert {row["name"]: row["dump_bytes"] for row in listed}[old] > 0
    verified = emg.emg_borg("verify", "--repository", str(emg.repo), "--archive", old)
    assert verified.stdout.startswith(f"verify OK: {old}") and f"emg-borg/mysql/{emg.database}.sql" in verified.stdout
    mariadb.sql(f"DROP DATABASE {emg.database}")
    target = tmp_path / "target"
    target.mkdir()
    restored = json.loads(emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", old, "--target",
                                       str(target), "--json").stdout)
    assert any(line.startswith(f"loaded the dump of {emg.database}") for line in restored["done"]), restored
    assert mariadb.sql("SELECT COUNT(*) FROM routelog", emg.database).strip() == "50"

    def as_format_99(work, manifest):
        manifest["format_version"] = 99

    future = rebuilt_archive(emg, tmp_path, "format-99", as_format_99)
    refused = emg.emg_borg("verify", "--repository", str(emg.repo), "--archive", future, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"emg-borg: error: archive {future}: manifest format_version 99 is newer than this emg-borg knows (1, 2); "
        f"upgrade emg-borg to read it")
    listed = emg.emg_borg("archives", "--repository", str(emg.repo), "--json")
    assert future not in [row["name"] for row in json.loads(listed.stdout)]
    assert f"archive {future}: manifest format_version 99 is newer" in listed.stderr


def test_an_old_spool_is_not_restored_blindly(emg, mariadb, tmp_path):
    emg.borgmatic_create()
    work = borg_extract_all(emg.repo, newest(emg), tmp_path / "work")
    three_days_ago = (datetime.datetime.now() - datetime.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S")
    entries = sorted(p.name for p in work.iterdir())
    subprocess.run(["borg", "create", "--timestamp", three_days_ago, f"{emg.repo}::old", *entries], cwd=work,
                   check=True, capture_output=True)
    target = tmp_path / "target"
    target.mkdir()
    refused = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", "old", "--target", str(target),
                           "--message-id", "2000", check=False)
    assert refused.returncode == 1 and list(target.iterdir()) == []
    [error] = error_lines(refused)
    assert error.startswith("emg-borg: error: archive old is 3.0 days old, more than [restore] max_spool_age (26h): "
                            "its spool holds queued messages and delivery reports that were handled since")
    assert "Restore with --skip-data" in error and "--old-spool" in error

    skipped = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", "old", "--target", str(target),
                           "--skip-data", "--message-id", "2000")
    assert "3.0 days old" in skipped.stdout
    assert not (target / rel(emg.tree.spooldir) / "queue-0000.hdb").exists()
    forced = emg.emg_borg("restore", "--repository", str(emg.repo), "--archive", "old", "--target", str(target),
                          "--old-spool", "--message-id", "2000")
    assert forced.returncode == 0 and (target / rel(emg.tree.spooldir) / "queue-0000.hdb").exists()
