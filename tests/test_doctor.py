"""`emg-borg doctor`: each misconfiguration that would make a backup fail is one exact FAIL line and
exit 1; a sound installation exits 0, with a warning for the live-spool provider `none`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import Emg, leftovers, run, run_emg_borg
from emg_borg.demo import sample

pytestmark = pytest.mark.e2e


def line(status: str, name: str, detail: str) -> str:
    return f"{status:<4} {name:<13} {detail}"


def doctor(emg, *args, env=None):
    argv = [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "doctor", *args]
    return run(argv, check=False, env=env)


def failures(result) -> list[str]:
    return [text for text in result.stdout.splitlines() if text.startswith("FAIL")]


def mount_of(path) -> tuple[str, str]:
    """The type and mount point of the file system holding `path`."""
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,TARGET", "-T", str(path)], capture_output=True, text=True).stdout
    fstype, target = out.split(None, 1)
    return fstype, target.strip()


def test_a_sound_installation_passes_with_a_warning_for_provider_none(emg):
    emg.borgmatic_create()
    config = emg.borgmatic_config()
    result = doctor(emg, "--borgmatic-config", config)
    assert result.returncode == 0, result.stdout
    out = result.stdout.splitlines()
    assert failures(result) == []
    assert line("warn", "snapshot", "provider none: the live spool is copied while emgd may change it (not consistent); "
                f"use it only where SPOOLDIR's file system ({mount_of(emg.tree.spooldir)[0]}) cannot be snapshotted") in out
    assert line("ok", "mysql", "preflight checks passed") in out
    assert line("ok", "patterns_from", f"{config} reads {emg.runtime / 'patterns'}") in out
    for phase, place in (("before-backup", "before: configuration"), ("after-backup", "after: configuration"),
                         ("on-error", "after: error")):
        assert line("ok", "hooks", f"{phase} runs at `{place}`") in out
    assert any(text.startswith(line("ok", "borg", "borg 1.4.")) for text in out), out
    assert any(text.startswith(line("ok", "repository", f"{emg.repo}: newest emg-borg archive ")) for text in out), out
    assert any(text.startswith(line("ok", "free space", "")) and "(the dump streams into borg, buffered on disk only while borg lags behind it"
               in text for text in out), out
    assert line("ok", "dumps", "stream into borg through a named pipe (read_special, one repository)") in out
    assert result.stderr == ""  # everything said is a check line
    data = json.loads(doctor(emg, "--borgmatic-config", config, "--json").stdout)
    assert data["ok"] is True and len(data["checks"]) == len(out)
    assert leftovers(emg) == []


def test_a_wrong_emgdir(emg):
    wrong = emg.tmp / "no-emg"
    emg.config_path.write_text(emg.config_path.read_text().replace(f'emgdir = "{emg.tree.emgdir}"', f'emgdir = "{wrong}"'))
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "server.cfg", f"EMGDIR {wrong} is not a directory (set [emg] emgdir)")]


def test_an_invalid_configuration_is_a_failed_check_not_a_usage_error(emg):
    emg.write_config("none", '[metric]\ntextfile = "/x.prom"\n')
    result = doctor(emg)
    assert result.returncode == 1
    [failure] = failures(result)
    assert failure.startswith(line("FAIL", "config", f"{emg.config_path}:10: unknown table [metric]; known: emg, "))


def test_a_spool_on_a_file_system_without_snapshots_with_provider_auto(tmp_path, mariadb):
    emg = Emg(tmp_path, mariadb, provider="auto")
    spool = emg.tree.spooldir
    fstype, target = mount_of(spool)
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "snapshot", (
        f"cannot snapshot: SPOOLDIR {spool} is on {fstype} ({target}), which emg-borg cannot snapshot; move "
        f'the spool to btrfs, lvm, zfs, or set [snapshot] provider = "none" to knowingly back up the live, '
        f"inconsistent spool"))]


def test_a_provider_that_does_not_handle_the_spool_s_file_system(tmp_path, mariadb):
    emg = Emg(tmp_path, mariadb, provider="btrfs")
    fstype, target = mount_of(emg.tree.spooldir)
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "snapshot", f"cannot snapshot: [snapshot] provider btrfs does not handle "
                                                         f"SPOOLDIR's file system, {fstype} ({target})")]


@pytest.mark.loop
def test_a_spool_on_btrfs_passes_with_provider_auto(tmp_path, mariadb, btrfs_mount):
    emg = Emg(tmp_path, mariadb, provider="auto", spooldir=btrfs_mount / "spool" / "emg")
    result = doctor(emg)
    assert result.returncode == 0, result.stdout
    out = result.stdout.splitlines()
    assert line("ok", "spool", f"{emg.tree.spooldir} on btrfs ({btrfs_mount})") in out
    assert line("ok", "snapshot", "provider btrfs") in out
    assert [text for text in out if not text.startswith("ok")] == [
        line("warn", "borgmatic", "its configuration was not checked (pass --borgmatic-config FILE)")]
    assert leftovers(emg) == []


def test_a_wrong_database_password(emg, mariadb):
    emg.tree.server_cfg.write_text(emg.tree.server_cfg.read_text().replace(f"PASSWORD={sample.DB_PASSWORD}", "PASSWORD=wrong"))
    result = doctor(emg)
    assert result.returncode == 1
    user = sample.DB_USER
    assert failures(result) == [line("FAIL", "mysql", (
        f"cannot connect to MySQL {user}@127.0.0.1:{mariadb.port}/{emg.database}: Access denied for user "
        f"'{user}'@'127.0.0.1' (using password: YES) (error 1045)"))]


def test_a_user_without_reload(emg, mariadb):
    user = f"norl{emg.database[-6:]}"
    mariadb.sql(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'; GRANT SELECT, PROCESS ON *.* TO '{user}'@'localhost';")
    (emg.tmp / "pw").write_text("pw\n")
    (emg.tmp / "pw").chmod(0o600)
    emg.write_config("none", f'[mysql]\nuser = "{user}"\nsocket = "{mariadb.socket}"\npassword_file = "{emg.tmp / "pw"}"\n')
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "mysql", f"{user}@{mariadb.socket}/{emg.database}: the user lacks the "
                                                      f"RELOAD privilege needed for the global read lock")]


@pytest.mark.parametrize("query, problem", [
    ("SELECT MAX(nope) FROM routelog", """failed: (1054, "Unknown column 'nope' in 'SELECT'")"""),
    ("SELECT 'many'", "returned 'many', not a message id (a whole number)"),
])
def test_a_bad_seqno_query(emg, query, problem):
    emg.write_config("none", f'[seqno]\nquery = "{query}"\n')
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "mysql", f"[seqno] query {query!r} {problem}")]


def test_runtime_dir_inside_the_spool(emg):
    inside = emg.tree.spooldir / ".emg-borg"
    emg.config_path.write_text(emg.config_path.read_text().replace(f'runtime_dir = "{emg.runtime}"',
                                                                   f'runtime_dir = "{inside}"'))
    result = doctor(emg)
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "runtime_dir", (
        f"{emg.config_path}:5: backup.runtime_dir: {inside} lies inside the data root {emg.tree.spooldir}; choose a "
        f"directory outside it (default /var/lib/emg-borg)"))]
    assert not inside.exists()


def test_a_borgmatic_config_without_patterns_from(emg):
    config = emg.borgmatic_config()
    patterns = emg.runtime / "patterns"
    config.write_text(config.read_text().replace(f"patterns_from:\n    - {patterns}\n", ""))
    result = doctor(emg, "--borgmatic-config", config)
    assert result.returncode == 1
    assert failures(result)[0] == line("FAIL", "patterns_from", (
        f"{config} has no patterns_from: add `patterns_from: [{patterns}]` (the patterns file before-backup writes), "
        f"or borg archives nothing of EMG"))


def test_a_borgmatic_config_without_the_hooks(emg):
    config = emg.borgmatic_config()
    text = config.read_text()
    start, end = text.index("commands:\n"), text.index("\nrepositories:")
    config.write_text(text[:start] + text[end:])
    result = doctor(emg, "--borgmatic-config", config)
    assert result.returncode == 1
    assert failures(result)[:3] == [
        line("FAIL", "hooks", f"{config} does not run `emg-borg before-backup`: add it as `- before: configuration, when: "
                              f"[create]` (borgmatic 2.x; 1.x: before_backup), see borgmatic-example.yaml"),
        line("FAIL", "hooks", f"{config} does not run `emg-borg after-backup`: add it as `- after: configuration, "
                              f"when: [create], states: [finish]` (borgmatic 2.x; 1.x: after_backup), see borgmatic-example.yaml"),
        line("FAIL", "hooks", f"{config} does not run `emg-borg on-error`: add it as `- after: error` (borgmatic 2.x; "
                              f"1.x: on_error), see borgmatic-example.yaml"),
    ]


def test_a_hook_at_the_wrong_place(emg):
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace("    - after: error\n", "    - before: action\n", 1))
    result = doctor(emg, "--borgmatic-config", config)
    assert result.returncode == 1
    assert failures(result)[0] == line("FAIL", "hooks", f"{config} runs `emg-borg on-error` at `before: action`; it "
                                                        f"belongs at `- after: error` (1.x: on_error)")


def test_hooks_around_each_action_are_in_place_too(emg):
    """borgmatic-example.yaml runs the hooks around the whole configuration; around each create
    action (one consistency point per repository) is fine too."""
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace("before: configuration", "before: action")
                      .replace("after: configuration", "after: action"))
    out = doctor(emg, "--borgmatic-config", config).stdout.splitlines()
    assert [text for text in out if " hooks " in text] == [
        line("ok", "hooks", "before-backup runs at `before: action`"),
        line("ok", "hooks", "after-backup runs at `after: action`"),
        line("ok", "hooks", "on-error runs at `after: error`")]


def test_after_backup_without_states_finish_is_a_warning(emg):
    emg.init_repo()
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace("      states: [finish]\n", ""))
    result = doctor(emg, "--borgmatic-config", config)
    assert result.returncode == 0, result.stdout
    assert line("warn", "hooks", "after-backup also runs when borg create failed: add `states: [finish]` (borgmatic "
                                 "2.x), or [metrics] counts a failed backup as a success") in result.stdout.splitlines()


def path_without(name: str, tmp_path) -> str:
    """PATH with no `name` on it: each directory holding one (the venv, /usr/bin with Debian's
    borg) is replaced by a directory of links to everything else in it."""
    directories = []
    for number, directory in enumerate(os.environ["PATH"].split(os.pathsep)):
        if os.path.exists(os.path.join(directory, name)):
            mirror = tmp_path / f"path-without-{name}-{number}"
            mirror.mkdir()
            for entry in os.scandir(directory):
                if entry.name != name:
                    (mirror / entry.name).symlink_to(entry.path)
            directory = str(mirror)
        directories.append(directory)
    return os.pathsep.join(directories)


def test_borg_missing_from_path(emg, tmp_path):
    result = doctor(emg, env={**os.environ, "PATH": path_without("borg", tmp_path)})
    assert result.returncode == 1
    assert failures(result) == [line("FAIL", "borg", "borg: not found on PATH; emg-borg needs borg >= 1.4 for its /./ "
                                                     "paths; install it from bookworm-backports (borg 1.4.0), Debian "
                                                     "13, or PyPI (pip install 'borgbackup>=1.4')")]


def test_an_unwritable_metrics_directory_is_a_warning(emg):
    missing = emg.tmp / "node-exporter"
    emg.write_config("none", f'[metrics]\ntextfile = "{missing}/emg_borg.prom"\n')
    result = doctor(emg)
    assert result.returncode == 0
    assert line("warn", "metrics", f"[metrics] textfile: cannot write into {missing} (missing or not writable); this "
                                   f"run's metrics will not be written") in result.stdout.splitlines()


def test_little_free_space_in_runtime_dir_is_a_warning(emg):
    small = emg.tmp / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        emg.config_path.write_text(emg.config_path.read_text().replace(f'runtime_dir = "{emg.runtime}"',
                                                                       f'runtime_dir = "{small}/runtime"'))
        result = doctor(emg)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert result.returncode == 0
    assert line("warn", "free space", f"1.0 MiB free in {small}, less than 100.0 MiB (the last dump's size is "
                                      f"unknown)") in result.stdout.splitlines()


def test_doctor_is_documented():
    assert "check everything a backup needs" in run_emg_borg("--help").stdout


@pytest.mark.parametrize("change, reason", [
    (("read_special: true", "read_special: false"), "{config} does not set read_special: true (borg would store the "
                                                     "named pipe, not the dump)"),
    ((" before-backup --borgmatic-config {configuration_filename}", " before-backup"),
     "{config}: its before-backup hook passes no --borgmatic-config {{configuration_filename}}"),
])
def test_a_dump_that_will_be_staged_instead_of_streamed_is_a_warning(emg, change, reason):
    """Staging works, but needs free disk as large as the dump: a warning naming the reason."""
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace(*change))
    out = doctor(emg, "--borgmatic-config", config).stdout.splitlines()
    assert line("warn", "dumps", "staged as files under runtime_dir, not streamed: "
                + reason.format(config=config)) in out, out
    # Then the staging area needs room for the dump; its size is not known before a first archive.
    assert any(text.startswith(line("ok", "free space", "")) and "(the last dump's size is unknown)" in text
               for text in out), out
