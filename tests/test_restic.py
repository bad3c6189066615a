"""restic as the backup tool, with real restic (Debian 12's 0.14): the hooks prepare the same
consistency point and a `--files-from-verbatim` list, restic backs it up (a local repository and
an SFTP repository through OpenSSH's sshd on 127.0.0.1), and emg-borg lists, extracts, verifies
and restores from the repository given as restic users give it (RESTIC_REPOSITORY,
RESTIC_PASSWORD_FILE). Also: a Btrfs snapshot under write load, the second run's change
detection, failures that leave nothing behind, and `doctor`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import sshd
from test_consistency import WRITER, dump_max  # the writer that inserts row N, then writes N to the spool
from conftest import Emg, dump_path, leftovers, run, run_emg_borg, unavailable
from emg_borg.demo import sample
from emg_borg.plugins.seqno import DEFAULT_MARGIN

pytestmark = [pytest.mark.e2e]

PASSWORD = "restic password, never shown"


def rel(path) -> str:
    return str(path).lstrip("/")


def files_under(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def restic_env(tmp_path, monkeypatch):
    """restic's settings as its users give them: the repository and a password file in the
    environment; restic's cache in the test's directory."""
    if not shutil.which("restic"):
        unavailable("restic is missing (apt-get install restic; scripts/setup installs it)")
    for name in ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_REPOSITORY_FILE", "BORG_REPO"):
        monkeypatch.delenv(name, raising=False)
    secret = tmp_path / "secrets" / "restic-password"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("RESTIC_CACHE_DIR", str(tmp_path / "restic-cache"))
    monkeypatch.setenv("RESTIC_REPOSITORY", str(tmp_path / "repo.restic"))
    return tmp_path / "repo.restic"


def restic(*args, check=True):
    return run(["restic", *map(str, args)], check=check)


def use_restic(emg: Emg) -> Emg:
    text = emg.config_path.read_text()
    emg.config_path.write_text(text.replace("[backup]\n", '[backup]\ntool = "restic"\n', 1))
    return emg


@pytest.fixture
def restic_emg(emg, restic_env):
    restic("init")
    return use_restic(emg)


def backup(emg: Emg) -> dict:
    """One run as a resticprofile or systemd unit drives it: before-backup, restic backup with the
    list, after-backup (on-error when restic failed). restic's JSON summary."""
    emg.emg_borg("before-backup")
    result = restic("backup", "--tag", "emg-borg", "--json", "--files-from-verbatim", emg.runtime / "restic-files",
                    check=False)
    if result.returncode != 0:
        emg.emg_borg("on-error")
        raise AssertionError(f"restic backup failed: {result.stderr}")
    released = emg.emg_borg("after-backup")
    # With RESTIC_REPOSITORY in its environment, after-backup checks the run's snapshot.
    assert "holds the manifest and " in released.stderr, released.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def snapshots() -> list[dict]:
    return json.loads(restic("snapshots", "--json").stdout)


def expected_files(emg: Emg) -> dict[str, bytes]:
    """Configuration and spool as the archive holds them (the stale live seqno excluded)."""
    spool = {rel(emg.tree.spooldir / k): v for k, v in files_under(emg.tree.spooldir).items() if k != "seqno"}
    return {**{rel(p): p.read_bytes() for p in emg.tree.config_files()}, **spool}


def test_backup_archives_live_paths_and_the_restore_side_maps_them_back(restic_emg, tmp_path):
    emg = restic_emg
    summary = backup(emg)
    assert leftovers(emg) == []
    snapshot, = snapshots()
    assert "emg-borg" in snapshot["tags"]
    manifest_path = str(emg.runtime / "staging" / "emg-borg" / "manifest.json")
    assert manifest_path in snapshot["paths"]
    manifest = json.loads(restic("dump", "latest", manifest_path).stdout)
    assert manifest["backup_tool"] == "restic" and manifest["message_id"] == 1049
    assert manifest["stored_roots"] == {str(emg.runtime / "staging"): "/"}
    assert manifest["dump_transfer"] == "staged"
    assert summary["files_new"] == summary["total_files_processed"]

    listed = json.loads(emg.emg_borg("archives", "--json").stdout)
    assert [(a["name"], a["message_id"]) for a in listed] == [(snapshot["short_id"], 1049)]
    out = tmp_path / "extracted"
    emg.emg_borg("extract", "--destination", str(out))
    extracted = files_under(out)
    for path, content in expected_files(emg).items():
        assert extracted.pop(path) == content, path
    assert extracted.pop(rel(emg.tree.spooldir / "seqno")) == b"1049\n"
    dump = extracted.pop(dump_path(manifest))
    assert len(dump) == manifest["dumps"][0]["bytes"]
    assert extracted == {}  # no logs, no executables, no manifest, no stored (runtime) paths
    logs = tmp_path / "logs"
    emg.emg_borg("extract", "--categories", "logs", "--destination", str(logs))
    assert set(files_under(logs)) == {rel(p) for p in emg.tree.logdir.iterdir() if p.is_file()}
    plan = json.loads(emg.emg_borg("extract", "--dry-run", "--json", "--categories", "config").stdout)
    assert {i["path"] for i in plan["categories"]["config"] if i["type"] == "-"} == {
        rel(p) for p in emg.tree.config_files()}
    verdict = emg.emg_borg("verify", "--load-dump", "--scratch-db", f"{emg.database}_verify")
    assert verdict.stdout.startswith("verify OK"), verdict.stdout
    assert PASSWORD not in verdict.stdout + verdict.stderr


@pytest.mark.runs_restore
def test_restore_on_a_fresh_target_with_only_the_restic_settings(restic_emg, mariadb, tmp_path):
    """The machine is lost with its database; the new one has RESTIC_REPOSITORY and the password
    file, and no emg-borg configuration."""
    emg = restic_emg
    backup(emg)
    expected = expected_files(emg)
    mariadb.sql(f"DROP DATABASE {emg.database}")
    emg.tree.root.rename(tmp_path / "lost")
    target = tmp_path / "new-machine"
    target.mkdir()
    missing = tmp_path / "nothing" / "config.toml"
    listed = json.loads(run_emg_borg("-c", str(missing), "archives", "--json").stdout)
    assert [a["message_id"] for a in listed] == [1049]
    result = run_emg_borg("-c", str(missing), "restore", "--target", str(target))
    restored = files_under(target)
    assert restored.pop(rel(emg.tree.spooldir / "seqno")) == b"%d\n" % (1049 + DEFAULT_MARGIN)
    assert restored == expected
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert mariadb.sql("SELECT body FROM messagebody", emg.database).split() == ["hello"]
    assert "loaded the dump" in result.stdout and "start emgd" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr and sample.DB_PASSWORD not in result.stdout + result.stderr
    assert not [p for p in target.rglob("*") if ".emg-borg-before-restore-restic-" in p.name]


@pytest.mark.runs_restore
def test_restore_over_the_live_paths_moves_the_spool_aside_and_replaces_files(restic_emg):
    """Restore where the archive was made (the archive paths are the test tree's absolute paths):
    the changed configuration file and queue file are replaced, the old spool is moved aside."""
    emg = restic_emg
    backup(emg)
    expected = expected_files(emg)
    (emg.tree.emgdir / "users").write_text("changed after the backup\n")
    (emg.tree.spooldir / "queue-0001.hdb").write_bytes(b"newer")
    (emg.tree.spooldir / "stray.hdb").write_bytes(b"not in the archive")
    result = emg.emg_borg("restore", "--categories", "config,data")
    live = {rel(p): p.read_bytes() for p in emg.tree.config_files()}
    live.update({rel(emg.tree.spooldir / k): v for k, v in files_under(emg.tree.spooldir).items() if k != "seqno"})
    assert live == expected
    asides = [p for p in emg.tree.spooldir.parent.iterdir() if ".emg-borg-before-restore-" in p.name]
    assert len(asides) == 1 and (asides[0] / "stray.hdb").read_bytes() == b"not in the archive"
    assert "overwrote" in result.stdout and str(emg.tree.emgdir / "users") in result.stdout
    assert not [p for p in emg.tree.root.rglob("*") if "restic-" in p.name]


@pytest.fixture
def sftp_host(tmp_path, monkeypatch):
    """A backup host that allows SFTP only, reached as `backup-host` through an ssh
    configuration (the `ssh` first on PATH reads it), and a restic repository on it."""
    reason = sshd.available()
    if reason:
        pytest.skip(reason)
    with sshd.backup_host(tmp_path / "backup-host", sftp=True) as host:
        wrapper = sshd.ssh_wrapper(host, tmp_path / "ssh-bin")
        monkeypatch.setenv("PATH", f"{wrapper}{os.pathsep}{os.environ['PATH']}")
        yield host


@pytest.mark.runs_restore
def test_sftp_repository_backup_verify_and_restore(emg, restic_env, sftp_host, mariadb, tmp_path, monkeypatch):
    monkeypatch.setenv("RESTIC_REPOSITORY", f"sftp:backup-host:{sftp_host.directory}/emg.restic")
    restic("init")
    emg = use_restic(emg)
    backup(emg)
    assert leftovers(emg) == []
    assert "Accepted publickey" in sftp_host.log.read_text()
    verdict = emg.emg_borg("verify")
    assert verdict.stdout.startswith("verify OK"), verdict.stdout
    expected = expected_files(emg)
    mariadb.sql(f"DROP DATABASE {emg.database}")
    emg.tree.root.rename(tmp_path / "lost")
    target = tmp_path / "new-machine"
    target.mkdir()
    result = run_emg_borg("-c", str(tmp_path / "none.toml"), "restore", "--target", str(target))
    restored = files_under(target)
    assert restored.pop(rel(emg.tree.spooldir / "seqno")) == b"%d\n" % (1049 + DEFAULT_MARGIN)
    assert restored == expected
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert PASSWORD not in result.stdout + result.stderr


def spool_file_count(emg: Emg) -> int:
    return sum(1 for p in emg.tree.spooldir.rglob("*") if p.is_file() and p.name != "seqno")


def test_btrfs_second_run_reads_no_unchanged_spool_file_again(tmp_path, mariadb, btrfs_mount, restic_env):
    """The snapshot is mounted at the same path on every run and keeps inode numbers and ctimes,
    so restic's parent snapshot finds every unchanged spool file unmodified (no --ignore-inode or
    --ignore-ctime needed); only emg-borg's staged files (manifest, seqno) are read again. The
    snapshot's view is listed whole (its stale seqno too), so a file added to the spool does not
    change the list's entries: the third run reads only that file; the staged seqno still wins."""
    restic("init")
    emg = use_restic(Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg"))
    text = emg.config_path.read_text()
    emg.config_path.write_text(text.replace("[backup]\n", '[backup]\ncategories = ["data"]\n', 1))
    started = time.monotonic()
    first = backup(emg)
    between = time.monotonic()
    second = backup(emg)
    print(f"restic, spool only: first run {first['files_new']} new files ({between - started:.1f} s for the whole "
          f"cycle), second run files_unmodified {second['files_unmodified']} of {second['total_files_processed']} "
          f"({time.monotonic() - between:.1f} s); spool files {spool_file_count(emg)}")
    assert leftovers(emg) == []
    assert first["files_unmodified"] == 0
    # the spool's files and the snapshot's own (stale) seqno; read again: the staged manifest and seqno
    assert second["files_unmodified"] == spool_file_count(emg) + 1 > 1
    assert second["total_files_processed"] == spool_file_count(emg) + 3
    assert json.loads(emg.emg_borg("archives", "--json").stdout)[0]["snapshot_provider"] == "btrfs"
    view = emg.runtime / "snapshots"
    assert any(path.startswith(f"{view}/") for path in snapshots()[-1]["paths"])  # restic stored the snapshot's view

    before = spool_file_count(emg)
    (emg.tree.spooldir / "queue-9999.hdb").write_bytes(b"added at the spool's top level")
    third = backup(emg)
    assert (third["files_new"], third["files_unmodified"]) == (1, before + 1), third
    out = tmp_path / "out"
    emg.emg_borg("extract", "--categories", "data", "--destination", str(out))
    manifest = json.loads(restic("dump", "latest", str(emg.runtime / "staging" / "emg-borg" / "manifest.json")).stdout)
    assert (out / rel(emg.tree.spooldir / "seqno")).read_text() == f"{manifest['message_id']}\n" != "1\n"
    assert (out / rel(emg.tree.spooldir / "queue-9999.hdb")).read_bytes() == b"added at the spool's top level"
    assert leftovers(emg) == []


def test_btrfs_snapshot_under_write_load_restores_the_dumps_counter(tmp_path, mariadb, btrfs_mount, restic_env):
    """A writer inserts row N, then writes N to a spool file, without pause. In every restic
    snapshot, the restored spool's counter and the highest N of the restored dump agree (the
    writer may be between its insert and its file write: the dump is at most one ahead)."""
    restic("init")
    emg = use_restic(Emg(tmp_path, mariadb, provider="btrfs", spooldir=btrfs_mount / "spool" / "emg"))
    emg.mariadb.sql("CREATE TABLE loadtest (n BIGINT PRIMARY KEY) ENGINE=InnoDB", emg.database)
    counter = emg.tree.spooldir / "counter"
    counter.write_text("0\n")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, emg.mariadb.socket, emg.database, str(counter)])
    try:
        time.sleep(0.3)
        for _ in range(2):
            backup(emg)
            assert writer.poll() is None, "the writer died"
    finally:
        writer.kill()
        writer.wait()
    assert leftovers(emg) == []
    points = []
    for archive in reversed(json.loads(emg.emg_borg("archives", "--json").stdout)):
        out = tmp_path / f"out-{archive['name']}"
        emg.emg_borg("extract", "--archive", archive["name"], "--categories", "data,database", "--destination", str(out))
        in_dump = dump_max(next(out.joinpath("emg-borg", "dumps").rglob("*.sql")).read_bytes())
        points.append((in_dump, int((out / rel(counter)).read_text())))
    print("dump and spool counter per snapshot:", points)
    assert all(0 <= in_dump - in_spool <= 1 for in_dump, in_spool in points), points
    assert points[0][0] > 0 and [d for d, _ in points] == sorted({d for d, _ in points})


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]


def test_a_failed_restic_backup_leaves_nothing_behind(restic_emg, tmp_path, monkeypatch):
    emg = restic_emg
    emg.emg_borg("before-backup")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    failed = run(["restic", "backup", "--tag", "emg-borg", "--files-from-verbatim", emg.runtime / "restic-files"],
                 check=False, env={**os.environ, "RESTIC_PASSWORD_FILE": str(wrong)})
    assert failed.returncode != 0
    emg.emg_borg("on-error")
    assert leftovers(emg) == []
    assert snapshots() == []


def test_streaming_demanded_with_restic_fails_before_taking_anything(restic_emg):
    emg = restic_emg
    text = emg.config_path.read_text()
    emg.config_path.write_text(text.replace("[backup]\n", '[backup]\nstream_dumps = "always"\n', 1))
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert error_lines(result) == ['emg-borg: error: preflight check failed: [backup] stream_dumps = "always": '
                                   '[backup] tool = "restic": restic reads no named pipes; set it to "auto" or "never"']
    assert leftovers(emg) == []


def test_restore_side_failures_are_one_line_and_write_nothing(restic_emg, tmp_path, monkeypatch):
    emg = restic_emg
    backup(emg)
    out = tmp_path / "out"
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", str(wrong))
    result = emg.emg_borg("extract", "--destination", str(out), check=False)
    assert result.returncode == 1 and not out.exists()
    assert error_lines(result) == ["emg-borg: error: restic snapshots failed (exit 1): wrong password or no key found"]
    monkeypatch.delenv("RESTIC_PASSWORD_FILE")
    result = emg.emg_borg("archives", check=False)
    assert result.returncode == 2
    assert error_lines(result) == ["emg-borg: error: no restic password: set RESTIC_PASSWORD_FILE or "
                                   "RESTIC_PASSWORD_COMMAND (or RESTIC_PASSWORD) as for restic itself"]
    monkeypatch.setenv("RESTIC_PASSWORD", PASSWORD)
    result = emg.emg_borg("verify", "--repository", str(tmp_path / "no-such.restic"), check=False)
    assert result.returncode == 1 and len(error_lines(result)) == 1
    assert "restic snapshots failed (exit 1): unable to open config file" in error_lines(result)[0]
    assert PASSWORD not in result.stdout + result.stderr

    # A path that cannot be written (a file where the spool's parent directory goes) is named,
    # the rest is extracted, and no scratch directory stays.
    blocked = tmp_path / "blocked"
    (blocked / rel(emg.tree.spooldir.parent)).parent.mkdir(parents=True)
    (blocked / rel(emg.tree.spooldir.parent)).write_text("a file where the spool's directory goes\n")
    result = emg.emg_borg("extract", "--destination", str(blocked), "--in-place", check=False)
    assert result.returncode == 1
    assert error_lines(result) == [f"emg-borg: error: extraction into {blocked} incomplete: restic could not write "
                                   f"1 path(s): {rel(emg.tree.spooldir)}: File exists"], result.stderr
    assert (blocked / rel(emg.tree.emgdir / "server.cfg")).read_bytes() == (emg.tree.emgdir / "server.cfg").read_bytes()
    assert not [p for p in blocked.rglob("*") if "restic-" in p.name]


def test_doctor_reports_restic_and_its_settings(restic_emg):
    emg = restic_emg
    backup(emg)
    result = run_emg_borg("-c", str(emg.config_path), "doctor", check=False)
    out = result.stdout.splitlines()
    version = run(["restic", "version"]).stdout.split()[1]
    assert f"ok   restic        restic {version} ({shutil.which('restic')})" in out
    assert (f"ok   restic files  back up with: restic backup --tag emg-borg --files-from-verbatim "
            f"{emg.runtime / 'restic-files'}") in out
    assert "ok   restic env    RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE set (values not shown)" in out
    assert 'ok   dumps         staged as files under runtime_dir ([backup] tool = "restic": restic reads no named pipes)' in out
    assert any(line.startswith(f"ok   repository    {emg.tmp / 'repo.restic'}: newest emg-borg archive ") for line in out), out
    assert not [line for line in out if " borg " in f" {line} " or "borgmatic" in line], out
    assert result.returncode == 0, result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_selection_walk_lists_whole_trees_once_and_leaves_out_what_the_lines_exclude(tmp_path):
    from emg_borg.lifecycle import restic_files

    emgdir, snap, staging = tmp_path / "etc" / "emg", tmp_path / "run" / "snapshots", tmp_path / "run" / "staging"
    for path in (emgdir / "server.cfg", emgdir / "bin" / "emgd", emgdir / "bin" / "plugin.cfg", emgdir / "log" / "general",
                 snap / rel(tmp_path / "spool") / "q1", snap / rel(tmp_path / "spool") / "seqno",
                 snap / rel(tmp_path / "spool") / "x.emg-borg-before-restore-1" / "old", staging / rel(tmp_path / "spool")
                 / "seqno"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    (emgdir / "empty").mkdir()
    spool_view = snap / rel(tmp_path / "spool")
    lines = [f"R {emgdir}", f"R {snap}/./{rel(tmp_path / 'spool')}", f"R {staging}/./{rel(tmp_path / 'spool')}/seqno",
             f"R {emgdir}/bin/plugin.cfg", "! sh:**/*.emg-borg-before-restore-*", f"+ pp:{emgdir}/bin/plugin.cfg",
             f"! pp:{emgdir}/bin", f"- pf:{spool_view}/seqno"]
    selection = restic_files.parse(lines)
    listed, skipped = restic_files.files(selection)
    assert sorted(listed) == sorted([str(emgdir / "bin" / "plugin.cfg"), str(emgdir / "empty"), str(emgdir / "log"),
                                     str(emgdir / "server.cfg"), str(spool_view / "q1"),
                                     str(staging / rel(tmp_path / "spool") / "seqno")])
    assert skipped == []
    assert selection.stored_roots == {str(snap): "/", str(staging): "/"}
    assert restic_files.live_path(selection.stored_roots, f"{spool_view}/q1") == str(tmp_path / "spool" / "q1")
    assert restic_files.live_path(selection.stored_roots, str(emgdir / "server.cfg")) == str(emgdir / "server.cfg")
    assert restic_files.stored_paths(selection.stored_roots, rel(tmp_path / "spool")) == [
        str(tmp_path / "spool"), str(spool_view), str(staging / rel(tmp_path / "spool"))]


def test_restic_times_locations_and_urls():
    from emg_borg.core.backup_tool import Repository
    from emg_borg.lifecycle import tool_restic

    when = tool_restic.snapshot_time("2026-11-20T14:00:00.987654321+01:00")
    assert when.isoformat() == "2026-11-20T14:00:00+01:00"
    assert tool_restic.snapshot_time("2026-11-20T13:00:00.5Z") == when
    assert str(Repository("rest:https://emg:s3cret@backup.example.com/emg", tool="restic")) == \
        "rest:https://emg:***@backup.example.com/emg"
    assert str(Repository("ssh://backup@host:2222/./emg.borg")) == "ssh://backup@host:2222/./emg.borg"
    assert Repository("sftp:backup-host:/srv/emg.restic", tool="restic").location == "sftp:backup-host:/srv/emg.restic"


def test_dry_run_shows_the_restic_list_and_staged_dumps(restic_emg):
    emg = restic_emg
    result = emg.emg_borg("before-backup", "--dry-run")
    assert 'dumps staged as files ([backup] tool = "restic": restic reads no named pipes)' in result.stderr
    plan = json.loads(emg.emg_borg("before-backup", "--dry-run", "--json").stdout)
    assert plan["backup_tool"] == "restic" and plan["dump_transfer"] == "staged"
    assert plan["patterns_file"] == str(emg.runtime / "restic-files")
    assert leftovers(emg) == []


def test_after_backup_names_a_run_that_restic_did_not_store(restic_emg):
    """restic ran without the list (another path): after-backup finds no snapshot holding the
    run's manifest, says so in one line and exits 1, and still releases everything."""
    emg = restic_emg
    emg.emg_borg("before-backup")
    restic("backup", "--tag", "emg-borg", emg.tree.emgdir / "server.cfg")
    result = emg.emg_borg("after-backup", check=False)
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "restic did not store the run's manifest" in lines[0], result.stderr
    assert leftovers(emg) == []


def test_restored_directories_keep_their_archived_mode_owner_and_times(restic_emg, tmp_path):
    """The staging area only carries the staged seqno: its directories (root, 0700) give the
    restored spool directory nothing; the spool's and EMGDIR's own mode, owner and times come back."""
    emg = restic_emg
    for directory in (emg.tree.spooldir, emg.tree.emgdir):
        os.chown(directory, 1234, 1234)
        directory.chmod(0o755)
        os.utime(directory, (1e9, 1e9))
    backup(emg)
    out = tmp_path / "out"
    emg.emg_borg("extract", "--categories", "config,data", "--destination", str(out))
    for directory in (emg.tree.spooldir, emg.tree.emgdir):
        restored = os.stat(out / rel(directory))
        assert (oct(restored.st_mode & 0o7777), restored.st_uid, restored.st_mtime) == ("0o755", 1234, 1e9), directory
    assert (out / rel(emg.tree.spooldir / "seqno")).read_text() == "1049\n"


def test_a_root_whose_path_holds_pattern_characters_is_restored(tmp_path, mariadb, restic_env):
    """restic's --include takes patterns: `[` and `\\` in a stored path are escaped."""
    restic("init")
    emg = use_restic(Emg(tmp_path, mariadb, spooldir=tmp_path / "spool [a]\\b*" / "emg"))
    backup(emg)
    out = tmp_path / "out"
    emg.emg_borg("extract", "--categories", "data", "--destination", str(out))
    spool = {k: v for k, v in files_under(emg.tree.spooldir).items() if k != "seqno"}
    restored = files_under(out / rel(emg.tree.spooldir))
    assert restored.pop("seqno") == b"1049\n"
    assert restored == spool and spool


def test_extraction_writes_through_no_symlink_and_keeps_an_unselected_one(restic_emg, tmp_path):
    """As borg: a path below a symlink in the destination is not extracted (named, exit 1), and
    a symlink of a category that was not selected (a versioned bin/) stays."""
    emg = restic_emg
    server_cfg = emg.tree.server_cfg.read_text().replace("CONFIG=plugin.cfg", "CONFIG=bin/plugin.cfg")
    emg.tree.server_cfg.write_text(server_cfg)
    (emg.tree.bindir / "plugin.cfg").write_text("INTERVAL=30\n")
    backup(emg)

    outside, target = tmp_path / "outside", tmp_path / "target"
    outside.mkdir()
    (target / rel(emg.tree.emgdir.parent)).parent.mkdir(parents=True)
    (target / rel(emg.tree.emgdir.parent)).symlink_to(outside)
    result = emg.emg_borg("extract", "--categories", "config,data", "--destination", str(target), "--in-place",
                          check=False)
    assert result.returncode == 1
    assert f"{rel(emg.tree.emgdir)}: not extracted, a parent directory is a symlink" in error_lines(result)[0]
    assert list(outside.iterdir()) == []
    assert (target / rel(emg.tree.spooldir / "seqno")).read_text() == "1049\n"

    versioned = tmp_path / "versioned"
    (versioned / "bin-7.3").mkdir(parents=True)
    second = tmp_path / "second"
    (second / rel(emg.tree.emgdir)).mkdir(parents=True)
    (second / rel(emg.tree.bindir)).symlink_to(versioned / "bin-7.3")
    result = emg.emg_borg("extract", "--categories", "config", "--destination", str(second), "--in-place",
                          check=False)
    assert result.returncode == 1
    assert f"{rel(emg.tree.bindir / 'plugin.cfg')}: not extracted, a parent directory is a symlink" in \
        error_lines(result)[0], result.stderr
    assert (second / rel(emg.tree.bindir)).is_symlink() and list((versioned / "bin-7.3").iterdir()) == []
    assert (second / rel(emg.tree.server_cfg)).read_text() == server_cfg


SLOW_RESTIC = """#!/bin/sh
case " $* " in *" restore "*) echo $$ > "{pidfile}"; exec sleep 300;; esac
exec {restic} "$@"
"""


def test_sigterm_during_an_extraction_stops_restic_and_leaves_no_scratch(restic_emg, tmp_path):
    emg = restic_emg
    backup(emg)
    wrapper, pidfile = tmp_path / "slow-bin" / "restic", tmp_path / "restic.pid"
    wrapper.parent.mkdir()
    wrapper.write_text(SLOW_RESTIC.format(pidfile=pidfile, restic=shutil.which("restic")))
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "extract",
                                "--destination", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        restic_pid = int(pidfile.read_text())
        process.send_signal(15)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{restic_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = os.path.exists(f"/proc/{restic_pid}")
    if survived:
        os.kill(restic_pid, 9)  # the test's own process, which emg-borg should have stopped
    assert process.returncode != 0 and "interrupted by SIGTERM" in stderr, stderr
    assert not survived
    assert not out.exists() or not [p for p in out.rglob("*") if "restic-" in p.name]
    assert leftovers(emg) == []


def test_after_backup_names_a_listed_path_restic_skipped(restic_emg):
    """restic 0.14 skips a listed path that is gone (exit 0); after-backup compares the
    snapshot's paths with the list."""
    emg = restic_emg
    emg.emg_borg("before-backup")
    (emg.tree.emgdir / "routing").unlink()
    restic("backup", "--tag", "emg-borg", "--files-from-verbatim", emg.runtime / "restic-files")
    result = emg.emg_borg("after-backup", check=False)
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "DO NOT TRUST" in lines[0] and str(emg.tree.emgdir / "routing") in lines[0], result.stderr
    assert leftovers(emg) == []


WATCHING_RESTIC = """#!/bin/sh
{restic} "$@"; status=$?
case " $* " in *" restore "*) find "{outside}" | sort > "{seen}";; esac
exit $status
"""


def test_extraction_makes_no_scratch_through_a_symlink_and_keeps_a_directory_holding_files(restic_emg, tmp_path,
                                                                                     monkeypatch):
    """A directory above EMGDIR in the destination is a symlink to a tree outside it that holds a
    directory of EMGDIR's name: restic's scratch directory is not made there (restic would write
    the selected trees outside the destination), and nothing is extracted through the link. And
    a directory holding files where the archive has a file stays, as with borg."""
    emg = restic_emg
    backup(emg)
    outside, target, seen = tmp_path / "outside", tmp_path / "target", tmp_path / "seen"
    (outside / emg.tree.emgdir.name).mkdir(parents=True)
    (target / rel(emg.tree.emgdir.parent)).parent.mkdir(parents=True)
    (target / rel(emg.tree.emgdir.parent)).symlink_to(outside)
    wrapper = tmp_path / "watching-bin" / "restic"
    wrapper.parent.mkdir()
    wrapper.write_text(WATCHING_RESTIC.format(restic=shutil.which("restic"), outside=outside, seen=seen))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    result = emg.emg_borg("extract", "--categories", "config", "--destination", str(target), "--in-place",
                          check=False)
    assert result.returncode == 1
    assert f"{rel(emg.tree.emgdir)}: not extracted, a parent directory is a symlink" in error_lines(result)[0]
    assert seen.read_text().splitlines() == [str(outside), str(outside / emg.tree.emgdir.name)]
    assert [str(p) for p in outside.rglob("*")] == [str(outside / emg.tree.emgdir.name)]

    # As borg: an archived file whose path is a directory holding files at the destination is not
    # extracted (named, exit 1) and the directory stays whole; an empty directory is replaced.
    target = tmp_path / "second"
    users, routing = target / rel(emg.tree.emgdir / "users"), target / rel(emg.tree.emgdir / "routing")
    users.mkdir(parents=True)
    (users / "kept").write_text("not in the archive\n")
    routing.mkdir()
    result = emg.emg_borg("extract", "--categories", "config", "--destination", str(target), "--in-place",
                          check=False)
    assert result.returncode == 1
    assert error_lines(result) == [f"emg-borg: error: extraction into {target} incomplete: restic could not write "
                                   f"1 path(s): {rel(emg.tree.emgdir / 'users')}: Directory not empty"], result.stderr
    assert (users / "kept").read_text() == "not in the archive\n"
    assert routing.read_bytes() == (emg.tree.emgdir / "routing").read_bytes()


LISTING_SLEEPS = """#!/bin/sh
case " $* " in *" snapshots "*) echo $$ > "{pidfile}"; exec sleep 300;; esac
exec {restic} "$@"
"""


def test_sigkill_of_emg_borg_leaves_no_restic_running(emg, restic_env, tmp_path):
    """emg-borg is killed outright while restic lists the snapshots (over a stalled SFTP
    connection it would list for ever): that restic dies with it, as `restic restore` does."""
    emg = use_restic(emg)
    wrapper, pidfile = tmp_path / "slow-bin" / "restic", tmp_path / "restic.pid"
    wrapper.parent.mkdir()
    wrapper.write_text(LISTING_SLEEPS.format(pidfile=pidfile, restic=shutil.which("restic")))
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "extract",
                                "--destination", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    restic_pid = None
    try:
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert process.poll() is None, "emg-borg ended before it listed the snapshots"
            time.sleep(0.1)
        restic_pid = int(pidfile.read_text())
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{restic_pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        survived = os.path.exists(f"/proc/{restic_pid}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if restic_pid and os.path.exists(f"/proc/{restic_pid}"):
            os.kill(restic_pid, 9)  # the test's own sleeper, which should have died with emg-borg
    assert not survived


def test_a_rest_url_password_never_shows_whatever_the_user_and_password_hold(emg, restic_env, monkeypatch):
    """`user@example.com` as the user, an `@` in the password: after-backup's line naming the
    repository it could not check shows the URL with `***` for the password."""
    from emg_borg.core.backup_tool import Repository

    for url in ("rest:http://emg@example.com:s3cret@127.0.0.1:1/emg", "rest:http://emg:s3@cret@127.0.0.1:1/emg"):
        assert str(Repository(url, tool="restic")) == url.replace("s3cret", "***").replace("s3@cret", "***")
    emg = use_restic(emg)
    emg.emg_borg("before-backup")
    monkeypatch.setenv("RESTIC_REPOSITORY", "rest:http://emg@example.com:s3cret@127.0.0.1:1/emg")
    result = emg.emg_borg("after-backup", check=False)
    assert result.returncode == 1
    line, = error_lines(result)
    assert "cannot check the archive of emg-borg run" in line and "rest:http://emg@example.com:***@127.0.0.1:1/emg" \
        in line, line
    assert "s3cret" not in result.stdout + result.stderr
    assert leftovers(emg) == []


def backup_unreadable(emg: Emg):
    """before-backup, then restic without CAP_DAC_OVERRIDE (as a restic user with limited rights
    runs, or root on an NFS export with root_squash), which cannot read a listed configuration
    file: it keeps the path among the snapshot's `paths`, stores no file and exits 3."""
    if not shutil.which("setpriv"):
        unavailable("setpriv is missing (util-linux)")
    emg.emg_borg("before-backup")
    unreadable = emg.tree.emgdir / "routing"
    assert str(unreadable) in (emg.runtime / "restic-files").read_text().splitlines()
    unreadable.chmod(0)
    without = "-dac_override,-dac_read_search"
    result = run(["setpriv", f"--inh-caps={without}", f"--bounding-set={without}", "restic", "backup", "--tag",
                  "emg-borg", "--files-from-verbatim", emg.runtime / "restic-files"], check=False)
    assert result.returncode == 3, result.stderr
    assert str(unreadable) in snapshots()[-1]["paths"]
    return unreadable


def test_after_backup_names_a_listed_file_restic_could_not_read(restic_emg):
    """A flow that takes restic's exit 3 for a warning runs after-backup, which finds the file
    missing from the snapshot."""
    emg = restic_emg
    unreadable = backup_unreadable(emg)
    released = emg.emg_borg("after-backup", check=False)
    assert released.returncode == 1
    lines = error_lines(released)
    assert len(lines) == 1 and "DO NOT TRUST" in lines[0] and "1 listed path(s)" in lines[0] \
        and lines[0].endswith(f": {unreadable}"), released.stderr
    assert leftovers(emg) == []


def test_on_error_names_the_snapshot_restic_saved_for_a_failed_run(restic_emg):
    """The documented flows take restic's exit 3 for a failure and run on-error; the snapshot
    restic saved is named (it would otherwise be the newest emg-borg archive, silently)."""
    emg = restic_emg
    backup_unreadable(emg)
    snapshot = snapshots()[-1]
    released = emg.emg_borg("on-error", check=False)
    assert released.returncode == 1
    line, = error_lines(released)
    assert line.startswith(f"emg-borg: error: DO NOT TRUST archive {emg.tmp / 'repo.restic'}::{snapshot['short_id']}: "
                           f"restic stored it for emg-borg run "), line
    assert "which failed (restic saves its snapshot and exits 3 when it could not read every file)" in line
    assert leftovers(emg) == []


def test_doctor_checks_that_ssh_to_an_sftp_repository_cannot_wait_for_ever(emg, restic_env, sftp_host, tmp_path,
                                                                          monkeypatch):
    """restic's ssh waits for ever at a prompt, for a host that does not answer or for a server
    that stops answering mid-way, unless root's ssh configuration says otherwise: doctor reads
    the settings `ssh -G` states for the repository's host."""
    monkeypatch.setenv("RESTIC_REPOSITORY", f"sftp:backup-host:{sftp_host.directory}/emg.restic")
    emg = use_restic(emg)  # no repository needed: the ssh settings are read without it
    lines = [line for line in emg.emg_borg("doctor", check=False).stdout.splitlines() if line.split()[1:2] == ["ssh"]]
    # Debian's ssh sets ServerAliveInterval 300 with BatchMode (the test host's configuration has it)
    assert lines == ["warn ssh           for backup-host, set in root's ~/.ssh/config: ConnectTimeout 30 (else it waits "
                     "for a host that does not answer)"], lines
    config = tmp_path / "ssh-bin" / "ssh_config"
    config.write_text(config.read_text() + "    ConnectTimeout 30\n    ServerAliveInterval 15\n")
    lines = [line for line in emg.emg_borg("doctor", check=False).stdout.splitlines() if line.split()[1:2] == ["ssh"]]
    assert lines == ["ok   ssh           backup-host: BatchMode, ConnectTimeout 30, ServerAliveInterval 15"], lines


def test_two_installations_on_one_host_each_restore_their_own_latest(restic_env, mariadb, tmp_path):
    """Two EMG installations on one machine (no NODEID) back up into one restic repository: the
    first one's `latest` is its own snapshot, not the second one's newer one."""
    restic("init")
    first = use_restic(Emg(tmp_path / "first", mariadb))
    second = use_restic(Emg(tmp_path / "second", mariadb))
    unchecked = {k: v for k, v in os.environ.items() if k != "RESTIC_REPOSITORY"}  # after-backup: quickest
    for emg in (first, second):
        emg.config_path.write_text(emg.config_path.read_text().replace("[backup]\n", '[backup]\ncategories = ["config"]\n', 1))
        emg.emg_borg("before-backup")
        restic("backup", "--tag", "emg-borg", "--files-from-verbatim", emg.runtime / "restic-files")
        run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "after-backup"], env=unchecked)
    plan = json.loads(first.emg_borg("extract", "--dry-run", "--json", "--categories", "config").stdout)
    server_cfgs = [item["path"] for item in plan["categories"]["config"] if item["path"].endswith("/server.cfg")]
    assert server_cfgs == [rel(first.tree.server_cfg)]
