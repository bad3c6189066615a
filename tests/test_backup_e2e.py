"""The backup path end to end: real borgmatic with borgmatic-example.yaml, real borg 1.4, a
throwaway MariaDB, the sample EMG tree. Assertions are on what `borg list` and `borg extract`
show, and on what is (not) left on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import borg_cat, borg_list, leftovers, run
from emg_borg.core import proc
from emg_borg.demo import sample

pytestmark = pytest.mark.e2e


def rel(path) -> str:
    return str(path).lstrip("/")


def only_archive(emg) -> str:
    archives = borg_list(emg.repo)
    assert len(archives) == 1, archives
    return archives[0]


def test_borgmatic_create_archive_meets_contract(emg, mariadb):
    result = emg.borgmatic_create("-v", "1")
    assert "emg-borg: ready for borg" in result.stderr + result.stdout
    archive = only_archive(emg)
    paths = set(borg_list(emg.repo, archive))
    tree = emg.tree

    for path in tree.config_files():
        assert rel(path) in paths, path
    for name in ("general", "general.1", "debug", "connector.mgp-in1", "pdu.smpp-out1", "security"):
        assert rel(tree.logdir / name) in paths
    assert rel(tree.spooldir / "leveldb" / "000005.ldb") in paths
    assert rel(tree.spooldir / "seqno.hdb") in paths
    # executables are opt-in
    assert not any(p.startswith(rel(tree.bindir)) for p in paths)
    # exactly one seqno, the captured id, not the stale live one
    assert [p for p in paths if p.endswith("/seqno")] == [rel(tree.spooldir / "seqno")]
    assert borg_cat(emg.repo, archive, rel(tree.spooldir / "seqno")) == b"1049\n"

    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    for key in ("format_version", "created", "hostname", "emg_borg_version", "emgdir", "spooldir", "message_id",
                "snapshot_provider", "freeze_window_ms", "dumps", "categories"):
        assert key in manifest, key
    assert manifest["message_id"] == 1049
    assert manifest["snapshot_provider"] == "none"
    assert manifest["created"][-6] in "+-"  # ISO 8601 with a zone
    assert manifest["freeze_window_ms"] > 0
    assert manifest["categories"]["config"][0] == rel(tree.emgdir)
    assert manifest["categories"]["data"] == [rel(tree.spooldir)]
    assert manifest["format_version"] == 2
    assert manifest["categories"]["database"] == ["emg-borg/dumps"]
    [mysql] = manifest["dumps"]
    assert mysql["plugin"] == "mysql" and mysql["path"] == f"emg-borg/dumps/mysql/{emg.database}.sql"
    assert mysql["database"] == emg.database and mysql["binlog_file"].startswith("binlog.")
    assert mysql["path"] in paths

    dump = borg_cat(emg.repo, archive, mysql["path"])
    assert len(dump) == mysql["bytes"]
    import hashlib
    assert hashlib.sha256(dump).hexdigest() == mysql["sha256"]
    restored = emg.database + "_restored"
    mariadb.sql(f"CREATE DATABASE {restored}")
    subprocess.run(["mariadb", "--no-defaults", f"--socket={mariadb.socket}", "-uroot", restored], input=dump, check=True)
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", restored).split() == ["50", "1049"]

    # The password never lands in the archive's manifest or in the patterns, and nothing stays behind.
    assert sample.DB_PASSWORD.encode() not in borg_cat(emg.repo, archive, "emg-borg/manifest.json")
    assert leftovers(emg) == []


def test_live_seqno_in_spool_is_not_written(emg):
    before = (emg.tree.spooldir / "seqno").read_text()
    emg.emg_borg("before-backup")
    assert (emg.tree.spooldir / "seqno").read_text() == before
    patterns = (emg.runtime / "patterns").read_text()
    assert f"- pf:{emg.tree.spooldir}/seqno" in patterns
    assert sample.DB_PASSWORD not in patterns
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_second_concurrent_run_fails_clearly_and_keeps_first_run_intact(emg):
    emg.emg_borg("before-backup")
    # A different owner process: run through a separate long-lived parent.
    holder = subprocess.Popen(["sleep", "30"])
    try:
        ledger = json.loads((emg.runtime / "ledger.json").read_text())
        lock = json.loads((emg.runtime / "lock").read_text())
        lock.update(proc.identity(holder.pid))  # the lock names the holder: pid, start time and boot
        (emg.runtime / "lock").write_text(json.dumps(lock))
        second = emg.emg_borg("before-backup", check=False)
        assert second.returncode == 1
        assert "another emg-borg backup is running" in second.stderr
        # on-error from the failed second run must not release the first run's resources
        emg.emg_borg("on-error")
        assert json.loads((emg.runtime / "ledger.json").read_text()) == ledger
        assert (emg.runtime / "staging" / "emg-borg" / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_crashed_run_leftovers_are_released_by_next_run(emg):
    emg.emg_borg("before-backup")
    lock = json.loads((emg.runtime / "lock").read_text())
    lock["pid"] = 999999  # a process that does not exist: the earlier run crashed
    (emg.runtime / "lock").write_text(json.dumps(lock))
    result = emg.emg_borg("before-backup")
    assert "leftovers of an earlier run" in result.stderr
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []


def test_after_backup_is_idempotent_and_safe_without_before(emg):
    assert emg.emg_borg("after-backup").returncode == 0
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    second = emg.emg_borg("on-error")
    assert second.returncode == 0 and "nothing to release" in second.stderr
    assert leftovers(emg) == []


def test_dry_run_changes_nothing(emg):
    result = emg.emg_borg("before-backup", "--dry-run", "--json")
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["snapshot_provider"] == "none"
    assert {r["category"] for r in plan["roots"]} == {"config", "data", "logs"}
    assert not emg.runtime.exists()


@pytest.mark.parametrize("breakage, message", [
    ("password", "Access denied"),
    ("missing", "server.cfg not found"),
    ("malformed", "server.cfg:9: cannot parse"),
    ("unreachable", "cannot connect to MySQL"),
])
def test_bad_input_gives_one_line_and_leaves_nothing(emg, breakage, message):
    cfg = emg.tree.server_cfg
    text = cfg.read_text()
    if breakage == "password":
        cfg.write_text(text.replace(f"PASSWORD={sample.DB_PASSWORD}", "PASSWORD=wrong"))
    elif breakage == "missing":
        cfg.unlink()
    elif breakage == "malformed":
        lines = text.splitlines()
        lines.insert(8, "THIS LINE IS NOT EMG SYNTAX")
        cfg.write_text("\n".join(lines) + "\n")
    elif breakage == "unreachable":
        cfg.write_text(text.replace(f"PORT={emg.mariadb.port}", "PORT=1"))
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert sample.DB_PASSWORD not in result.stderr
    assert leftovers(emg) == [], leftovers(emg)


def test_failed_dump_fails_hook_and_borgmatic_makes_no_archive(emg, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mysqldump").write_text("#!/bin/sh\necho '-- partial dump'\necho 'mysqldump: Got error: 2013: Lost connection' >&2\nexit 2\n")
    (fake / "mysqldump").chmod(0o755)
    emg.write_config("none", f'[mysql]\nmysqldump = "{fake / "mysqldump"}"\n')
    result = emg.borgmatic_create(check=False)
    assert result.returncode != 0
    assert "mysqldump of %s failed (exit 2): mysqldump: Got error: 2013" % emg.database in result.stderr + result.stdout
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []


def test_password_never_in_argv_of_mysqldump(emg, tmp_path):
    """A mysqldump wrapper records its argv and the options file it was given."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "argv.log"
    (fake / "mysqldump").write_text(
        f"#!/bin/sh\necho \"$@\" >> {log}\nexec mysqldump \"$@\"\n"
    )
    (fake / "mysqldump").chmod(0o755)
    emg.write_config("none", f'[mysql]\nmysqldump = "{fake / "mysqldump"}"\n')
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    argv = log.read_text()
    assert "--defaults-extra-file=/dev/fd/" in argv and "--single-transaction" in argv
    assert sample.DB_PASSWORD not in argv


def test_discover_json(emg):
    data = json.loads(emg.emg_borg("discover", "--json").stdout)
    categories = {r["path"]: r["category"] for r in data["roots"]}
    assert categories[str(emg.tree.emgdir)] == "config"
    assert categories[str(emg.tree.spooldir)] == "data"
    assert categories[str(emg.tree.logdir)] == "logs"
    assert categories[str(emg.tree.blacklist)] == "config"
    assert data["database"]["database"] == emg.database
    assert "password" not in json.dumps(data["database"]).lower()


def test_run_example_yaml_is_used_verbatim_apart_from_paths(emg):
    text = emg.borgmatic_config().read_text()
    assert "before-backup" in text and "patterns_from" in text
    assert run(["borgmatic", "config", "validate", "--config", str(emg.borgmatic_config())]).returncode == 0


def backup_with_borg(emg, name="a"):
    """before-backup, plain borg create from the patterns file, after-backup: the archive's paths."""
    if not emg.repo.exists():
        emg.init_repo()
    emg.emg_borg("before-backup")
    emg.borg_create(name)
    emg.emg_borg("after-backup")
    return set(borg_list(emg.repo, name))


def test_config_file_inside_unselected_bin_is_still_archived(emg):
    plugin_cfg = emg.tree.bindir / "plugin-extra.cfg"
    plugin_cfg.write_text("RATE=5\n")
    with open(emg.tree.server_cfg, "a") as f:
        f.write("PLUGIN extra <\nCONFIG=bin/plugin-extra.cfg\n>\n")
    paths = backup_with_borg(emg)
    assert rel(plugin_cfg) in paths
    assert not any(p.startswith(rel(emg.tree.bindir) + "/emgd") for p in paths)
    assert rel(emg.tree.bindir / "libstats.so") not in paths


def test_symlinked_emgdir_and_spooldir_are_archived_with_their_content(emg, tmp_path):
    real_spool = tmp_path / "data" / "emgspool"
    real_spool.parent.mkdir()
    emg.tree.spooldir.rename(real_spool)
    emg.tree.spooldir.symlink_to(real_spool)
    real_emgdir = tmp_path / "home" / "emg" / "etc"
    real_emgdir.parent.mkdir(parents=True)
    emg.tree.emgdir.rename(real_emgdir)
    emg.tree.emgdir.symlink_to(real_emgdir)
    paths = backup_with_borg(emg)
    assert rel(real_emgdir / "server.cfg") in paths and rel(real_emgdir / "license") in paths
    assert rel(real_spool / "leveldb" / "CURRENT") in paths
    assert rel(real_spool / "seqno") in paths  # the captured id, in the spool's real directory
    assert rel(emg.tree.emgdir) in paths and rel(emg.tree.spooldir) in paths  # the links themselves
    assert not any(p.startswith(rel(emg.tree.emgdir) + "/") for p in paths)


def test_no_message_id_means_no_seqno_file_not_a_zero(emg, mariadb):
    mariadb.sql("DELETE FROM routelog", emg.database)
    paths = backup_with_borg(emg)
    assert not [p for p in paths if p.endswith("/seqno")]
    manifest = json.loads(borg_cat(emg.repo, "a", "emg-borg/manifest.json"))
    assert manifest["message_id"] is None


def test_seqno_command_inside_the_point_and_binlog_still_recorded(emg):
    emg.write_config("none", '[seqno]\ncommand = "echo 777"\n')
    paths = backup_with_borg(emg)
    assert borg_cat(emg.repo, "a", rel(emg.tree.spooldir / "seqno")) == b"777\n"
    manifest = json.loads(borg_cat(emg.repo, "a", "emg-borg/manifest.json"))
    assert manifest["message_id_source"] == "command"
    assert manifest["dumps"][0]["binlog_file"].startswith("binlog.") and manifest["dumps"][0]["binlog_position"] > 0
    assert rel(emg.tree.spooldir / "queue-0000.hdb") in paths


def test_without_the_lock_no_binlog_position_is_claimed(emg):
    emg.write_config("none", '[mysql]\nlock = "none"\n')
    backup_with_borg(emg)
    manifest = json.loads(borg_cat(emg.repo, "a", "emg-borg/manifest.json"))
    assert manifest["consistency_lock"] == "none"
    assert "binlog_file" not in manifest["dumps"][0]


def test_a_spool_moved_aside_by_restore_is_not_archived(emg):
    aside = emg.tree.spooldir.parent / f"{emg.tree.spooldir.name}.emg-borg-before-restore-20261120-140000"
    aside.mkdir()
    (aside / "queue-0000.hdb").write_bytes(b"old")
    inside = emg.tree.emgdir / "spool.emg-borg-before-restore-20261120-140000"  # vendor layout: in EMGDIR
    inside.mkdir()
    (inside / "x").write_bytes(b"old")
    paths = backup_with_borg(emg)
    assert not [p for p in paths if "emg-borg-before-restore" in p]
    assert rel(emg.tree.emgdir / "server.cfg") in paths


def test_dry_run_checks_the_database_login(emg):
    good = emg.emg_borg("before-backup", "--dry-run")
    assert "preflight checks passed" in good.stderr
    emg.tree.server_cfg.write_text(emg.tree.server_cfg.read_text().replace(f"PASSWORD={sample.DB_PASSWORD}", "PASSWORD=wrong"))
    bad = emg.emg_borg("before-backup", "--dry-run", check=False)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and "preflight check failed: cannot connect to MySQL" in errors[0] and "Access denied" in errors[0]
    assert not emg.runtime.exists()


def test_a_user_without_reload_fails_before_anything_is_taken(emg, mariadb):
    user = f"noreload{emg.database[-6:]}"
    mariadb.sql(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'; GRANT SELECT, PROCESS ON *.* TO '{user}'@'localhost';")
    (emg.tmp / "pw").write_text("pw\n")
    emg.write_config("none", f'[mysql]\nuser = "{user}"\nsocket = "{mariadb.socket}"\npassword_file = "{emg.tmp / "pw"}"\n')
    # A password file others can read is refused before anything is tried.
    (emg.tmp / "pw").chmod(0o644)
    readable = emg.emg_borg("before-backup", check=False)
    assert readable.returncode == 2
    assert readable.stderr.strip().endswith(f"mysql.password_file: {emg.tmp / 'pw'} can be read by others (mode 644): "
                                            f"chmod 600 {emg.tmp / 'pw'}")
    (emg.tmp / "pw").chmod(0o600)
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert "preflight check failed" in result.stderr and "lacks the RELOAD privilege" in result.stderr
    assert leftovers(emg) == []
    emg.write_config("none", f'[mysql]\nuser = "{user}"\nsocket = "{mariadb.socket}"\npassword_file = "{emg.tmp / "pw"}"\n'
                             'lock = "none"\n')
    assert "preflight checks passed" in emg.emg_borg("before-backup", "--dry-run").stderr  # no lock, no RELOAD needed


def test_an_unchanged_database_gives_a_byte_identical_dump_that_borg_stores_once(emg, mariadb):
    """No dump date, a stable row order: a second backup of an unchanged database adds almost
    nothing to the repository (before, the date in the last line made the last chunk new)."""
    mariadb.sql("CREATE TABLE bulk (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB; "
                "INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_20000", emg.database)
    emg.borgmatic_create()
    emg.borgmatic_create()
    first, second = borg_list(emg.repo)
    dumps = [json.loads(borg_cat(emg.repo, a, "emg-borg/manifest.json"))["dumps"][0] for a in (first, second)]
    assert dumps[0]["sha256"] == dumps[1]["sha256"] and dumps[0]["bytes"] > 4 * 2**20
    assert b"-- Dump completed\n" in borg_cat(emg.repo, second, dumps[1]["path"])[-200:]
    info = json.loads(subprocess.run(["borg", "info", "--json", f"{emg.repo}::{second}"], capture_output=True,
                                     check=True).stdout)
    added = info["archives"][0]["stats"]["deduplicated_size"]
    print(f"second backup of an unchanged {dumps[1]['bytes']} byte dump added {added} bytes "
          f"({100 * added / dumps[1]['bytes']:.2f}%)")
    assert added < 0.01 * dumps[1]["bytes"]


def test_progress_of_a_long_dump_shows_on_a_terminal_and_not_in_a_log(emg, tmp_path, monkeypatch):
    import pty
    import shutil

    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "mysqldump").write_text(f'#!/bin/sh\n{shutil.which("mysqldump")} "$@"; sleep 3\n')
    (slow / "mysqldump").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    argv = [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup"]
    piped = subprocess.run(argv, capture_output=True, text=True)
    assert piped.returncode == 0 and "MiB written" not in piped.stderr
    emg.emg_borg("after-backup")

    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    process.wait()
    os.close(controller)
    assert process.returncode == 0
    assert f"mysqldump {emg.database}: 0.0 MiB written".encode() in seen, seen.decode()
    emg.emg_borg("after-backup")
