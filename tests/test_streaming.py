"""Streamed dumps: mysqldump writes into a named pipe in the staging area that `borg create
--read-special` reads, with no copy of the dump on disk, while emg-borg counts and hashes it for
the manifest. Real borgmatic with borgmatic-example.yaml (read_special: true, one repository),
real borg and MariaDB. Also: every way a stream can go wrong fails the run with one line and
leaves no archive and no process; and where streaming cannot work the dump is staged, and the
reason is said."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from emg_borg.core.dump_buffer import HELD_BOUND

from conftest import TEST_MARK, borg, borg_cat, borg_list, leftovers, marked_processes, run
from test_faults import fake_bin

pytestmark = [pytest.mark.e2e]

REAL_BORG = subprocess.run(["which", "borg"], capture_output=True, text=True).stdout.strip()


def filler(mariadb, database, megabytes=4) -> None:
    """Rows enough for a dump far larger than a pipe's buffer, so borg is mid-read when it fails."""
    mariadb.sql("CREATE TABLE filler (id INT PRIMARY KEY AUTO_INCREMENT, b LONGBLOB)", database)
    for _ in range(megabytes):
        mariadb.sql("INSERT INTO filler (b) VALUES (REPEAT(MD5(RAND()), 32768))", database)


def fake_first_on_path(monkeypatch, tmp_path, name: str, body: str) -> None:
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, {name: body})}{os.pathsep}{os.environ['PATH']}")


def processes_of_this_test() -> list[str]:
    """Processes carrying the test's mark (everything emg-borg started inherits it)."""
    return marked_processes(os.environ[TEST_MARK], exclude=(os.getpid(),))


def test_a_streamed_dump_reaches_the_archive_whole_and_never_lies_on_disk(emg, mariadb, tmp_path, monkeypatch):
    """A borg wrapper first on PATH sees, as `borg create` starts, what the staging area holds:
    the dump is a named pipe, and the disk holds at most the buffer's bound (HELD_BOUND) of it,
    however large the dump; the manifest records the most the buffer held."""
    filler(mariadb, emg.database)
    seen = tmp_path / "seen-by-borg"
    dump = emg.runtime / "staging" / "emg-borg" / "dumps" / "mysql" / f"{emg.database}.sql"
    fake_first_on_path(monkeypatch, tmp_path, "borg", f"""
case " $* " in *" create "*) case " $* " in *" --dry-run "*) ;; *)
  {{ stat -c %F {dump}; du -s --block-size=1 {emg.runtime} | cut -f1; }} > {seen}
  echo "$*" >> {seen};; esac;; esac
exec {REAL_BORG} "$@"
""")
    result = emg.borgmatic_create()
    assert "emg-borg: dumps stream into borg through a named pipe" in result.stderr, result.stderr
    assert "Treating exit code" not in result.stdout + result.stderr  # borg ended without a warning
    kind, on_disk, argv = seen.read_text().splitlines()
    assert kind == "fifo"
    assert "--read-special" in argv.split()

    [archive] = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    [entry] = manifest["dumps"]
    assert manifest["dump_transfer"] == "stream" and entry["transfer"] == "stream"
    data = borg_cat(emg.repo, archive, entry["path"])
    assert len(data) == entry["bytes"] > 4 * 2**20
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data.rstrip().endswith(b"-- Dump completed")
    bound = HELD_BOUND
    # The bound holds while borg keeps up; a borg that starts or stalls for SPILL_AFTER (a loaded
    # machine) makes the drain spill, as it must, and the manifest says so.
    assert entry["borg_wait_seconds"] >= 0
    if not entry["buffer_spilled"]:
        assert int(on_disk) < bound + 256 * 1024 < entry["bytes"] / 3, (on_disk, entry["bytes"])
        assert 0 < entry["buffer_peak_bytes"] <= bound

    # The archive verifies and its dump loads, as any other.
    verdict = emg.emg_borg("verify", "--repository", str(emg.repo), "--load-dump", "--scratch-db",
                           f"{emg.database}_scratch", "--json")
    assert json.loads(verdict.stdout)["ok"] is True
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


FAILING_DUMPS = {
    "exits non-zero midway": ('"$REAL" "$@" | head -c 3000000; echo "mysqldump: Lost connection to server" >&2; exit 3',
                              "mysqldump of {db} failed (exit 3): mysqldump: Lost connection to server"),
    "ends without its completion line": ('"$REAL" "$@" | head -n -2',
                                         "mysqldump of {db} is incomplete: no '-- Dump completed' line at its end"),
    "is killed": ('"$REAL" "$@" | head -c 3000000; kill -9 $$',
                  "mysqldump of {db} failed (exit 137)"),
}


@pytest.mark.parametrize("how", sorted(FAILING_DUMPS))
def test_a_dump_that_fails_while_it_streams_stops_borg_and_leaves_no_archive(how, emg, mariadb, tmp_path, monkeypatch):
    filler(mariadb, emg.database)
    body, words = FAILING_DUMPS[how]
    fake_first_on_path(monkeypatch, tmp_path, "mysqldump", f'REAL={subprocess.run(["which", "mysqldump"], capture_output=True, text=True).stdout.strip()}\n{body}')
    result = emg.borgmatic_create("--list", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and errors[0].count(words.format(db=emg.database)) == 1, result.stderr + result.stdout
    assert "borg was stopped, no archive was made" in errors[0]
    # The dump's own streamer stopped borg inside the dump: borg never went on to the manifest (a
    # streamer that only closed its pipe would leave that to the manifest's, with borg listing
    # the manifest it was reading when stopped, as it lists the dump here).
    assert f"staging/emg-borg/dumps/mysql/{emg.database}.sql" in output
    assert "staging/emg-borg/manifest.json" not in output, output
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []
    # The next run, with the real mysqldump, works.
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    emg.borgmatic_create()
    assert len(borg_list(emg.repo)) == 1


def test_a_borg_that_does_not_read_the_pipe_fails_the_run(emg):
    """borg without --read-special stores the named pipe itself: after-backup says the archive
    lacks the dump and exits non-zero; the waiting streamers are stopped."""
    config = emg.borgmatic_config()
    emg.init_repo()
    emg.emg_borg("before-backup", "--borgmatic-config", str(config))
    borg("create", "--patterns-from", str(emg.runtime / "patterns"), f"{emg.repo}::plain")
    result = emg.emg_borg("after-backup", check=False)
    assert result.returncode == 1
    assert (f"emg-borg: error: borg did not read mysqldump of {emg.database} and the manifest: the archive lacks "
            f"them; borgmatic needs read_special: true") in result.stderr, result.stderr
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


def test_the_streamers_end_by_themselves_when_the_run_is_gone(emg, mariadb, tmp_path):
    """The process driving the hooks (here a script; usually borgmatic) dies before borg ran:
    the streamers and mysqldump end by themselves, and the next run removes the rest."""
    filler(mariadb, emg.database, 1)  # more than the pipes hold: mysqldump waits for borg
    config = emg.borgmatic_config()
    script = tmp_path / "backup.sh"
    script.write_text(f"{sys.executable} -m emg_borg -c {emg.config_path} before-backup --borgmatic-config {config}\n"
                      f"sleep 600\n")
    driver = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (emg.runtime / "patterns").exists():
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert any("emg_borg.core.streamer" in p for p in processes_of_this_test())
        assert any(": mysqldump " in p for p in processes_of_this_test())
    finally:
        # The script and its `sleep` (a child reparented once bash is gone: not found by parent).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 10
    while processes_of_this_test():
        assert time.monotonic() < deadline, processes_of_this_test()
        time.sleep(0.05)
    result = emg.emg_borg("before-backup", "--borgmatic-config", str(config))
    assert "found leftovers of an earlier run" in result.stderr
    emg.emg_borg("on-error")
    assert leftovers(emg) == []


def test_the_pipe_survives_borgmatics_path_validation(emg, tmp_path):
    """Without unsafe_skip_path_validation_before_create borgmatic first runs `borg create
    --dry-run --list`; without its own database hooks it excludes no special file, and the dry run
    does not open the pipe."""
    config = emg.borgmatic_config()
    text = config.read_text().replace("unsafe_skip_path_validation_before_create: true", "")
    config.write_text(text)
    emg.init_repo()
    run(["borgmatic", "--config", str(config), "create"])
    [archive] = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    [entry] = manifest["dumps"]
    assert entry["transfer"] == "stream"
    assert hashlib.sha256(borg_cat(emg.repo, archive, entry["path"])).hexdigest() == entry["sha256"]


def staged_reason(emg, config) -> str:
    result = emg.emg_borg("before-backup", "--dry-run", "--borgmatic-config", str(config))
    [line] = [line for line in result.stderr.splitlines() if "dumps st" in line]
    return line


@pytest.mark.parametrize("case", ["no read_special", "two repositories", "never", "no borgmatic config"])
def test_where_streaming_cannot_work_the_dump_is_staged_and_the_reason_said(case, emg, tmp_path):
    config = emg.borgmatic_config()
    text = config.read_text()
    if case == "no read_special":
        config.write_text(text.replace("read_special: true", "read_special: false"))
        expected = "does not set read_special: true"
    elif case == "two repositories":
        second = tmp_path / "second.borg"
        config.write_text(text.replace("      label: local\n", f"      label: local\n    - path: {second}\n"
                                                             f"      label: second\n"))
        expected = "lists 2 repositories"
    elif case == "never":
        emg.config_path.write_text(emg.config_path.read_text().replace(
            "[backup]\n", '[backup]\nstream_dumps = "never"\n'))
        expected = '[backup] stream_dumps = "never"'
    else:
        expected = "before-backup has no --borgmatic-config"
    if case == "no borgmatic config":
        result = emg.emg_borg("before-backup", "--dry-run")
        line = [line for line in result.stderr.splitlines() if "dumps st" in line][0]
    else:
        line = staged_reason(emg, config)
    assert "dumps staged as files" in line and expected in line, line
    if case == "two repositories":
        emg.init_repo()
        borg("init", "--encryption=repokey-blake2", str(tmp_path / "second.borg"))
        run(["borgmatic", "--config", str(config), "create"])
        for repo in (emg.repo, tmp_path / "second.borg"):
            [archive] = borg_list(repo)
            manifest = json.loads(borg_cat(repo, archive, "emg-borg/manifest.json"))
            [entry] = manifest["dumps"]
            assert manifest["dump_transfer"] == "staged" and "transfer" not in entry
            assert hashlib.sha256(borg_cat(repo, archive, entry["path"])).hexdigest() == entry["sha256"]
        assert leftovers(emg) == []


def test_named_pipes_and_devices_in_the_emg_tree_are_not_archived_so_borg_cannot_block_on_them(emg, tmp_path):
    """read_special makes borg open every FIFO and device it meets: emg-borg excludes those under
    its roots (a FIFO in the spool, a symlink to /dev/zero among the config files) and says so."""
    os.mkfifo(emg.tree.spooldir / "emgd.ctl")
    (emg.tree.emgdir / "zero").symlink_to("/dev/zero")
    emg.init_repo()
    result = subprocess.run(["borgmatic", "--config", str(emg.borgmatic_config()), "create"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("emg-borg: warning: not archived: 2 named pipe(s) or device(s) in the EMG tree" in result.stderr
            and str(emg.tree.spooldir / "emgd.ctl") in result.stderr and str(emg.tree.emgdir / "zero") in result.stderr)
    [archive] = borg_list(emg.repo)
    paths = borg_list(emg.repo, archive)
    assert str(emg.tree.spooldir / "emgd.ctl").lstrip("/") not in paths
    assert str(emg.tree.emgdir / "zero").lstrip("/") not in paths
    assert str(emg.tree.spooldir / "seqno.hdb").lstrip("/") in paths
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    assert manifest["dump_transfer"] == "stream"
    assert any("not archived: 2 named pipe(s)" in warning for warning in manifest["warnings"])


def test_stream_dumps_always_refuses_what_cannot_work_before_taking_anything(emg):
    emg.config_path.write_text(emg.config_path.read_text().replace("[backup]\n", '[backup]\nstream_dumps = "always"\n'))
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace("read_special: true", "read_special: false"))
    result = emg.emg_borg("before-backup", "--borgmatic-config", str(config), check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert errors == [f'emg-borg: error: preflight check failed: [backup] stream_dumps = "always": {config} does not '
                      f'set read_special: true (borg would store the named pipe, not the dump)'], result.stderr
    assert leftovers(emg) == []
    assert not (emg.runtime / "patterns").exists()


def test_hooks_behind_a_wrapper_script_still_stream(emg, tmp_path):
    """A wrapper that runs emg-borg as its child (no exec) ends right after before-backup; the
    streamers belong to the borgmatic above it and wait for its borg."""
    wrapper = tmp_path / "emg-borg-logged"
    wrapper.write_text(f"#!/bin/sh\n{sys.executable} -m emg_borg \"$@\"\nrc=$?\necho \"$*: $rc\" >> {tmp_path / 'log'}\n"
                       f"exit $rc\n")
    wrapper.chmod(0o755)
    config = emg.borgmatic_config()
    config.write_text(config.read_text().replace("- emg-borg -c", f"- {wrapper} -c"))
    emg.init_repo()
    result = subprocess.run(["borgmatic", "--config", str(config), "create"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "dumps stream into borg through a named pipe" in result.stderr
    [archive] = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    [entry] = manifest["dumps"]
    assert hashlib.sha256(borg_cat(emg.repo, archive, entry["path"])).hexdigest() == entry["sha256"]
    assert leftovers(emg) == []


def test_a_borg_that_comes_after_the_streamers_gave_up_does_not_wait_forever(emg, tmp_path):
    """The run's owner died before borg ran; a borg started later finds no pipe to wait on, and
    what it makes is no emg-borg archive (no manifest)."""
    config = emg.borgmatic_config()
    emg.init_repo()
    script = tmp_path / "backup.sh"
    script.write_text(f"{sys.executable} -m emg_borg -c {emg.config_path} before-backup --borgmatic-config {config}\n")
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while processes_of_this_test():
        assert time.monotonic() < deadline, processes_of_this_test()
        time.sleep(0.05)
    late = subprocess.run(["borg", "create", "--read-special", "--patterns-from", str(emg.runtime / "patterns"),
                           f"{emg.repo}::late"], capture_output=True, text=True, timeout=120)
    assert late.returncode == 1, late.stderr  # a warning: the pipes named in the patterns are gone
    assert "emg-borg/manifest.json" not in borg_list(emg.repo, "late")
    listed = emg.emg_borg("archives", "--repository", str(emg.repo), check=False)
    assert "no emg-borg archives" in listed.stderr or json.loads(emg.emg_borg(
        "archives", "--repository", str(emg.repo), "--json").stdout) == []
    ended = emg.emg_borg("on-error", check=False)
    assert ended.returncode == 1
    assert f"emg-borg: error: borg never read mysqldump of {emg.database}: the run ended first" in ended.stderr
    assert leftovers(emg) == []


FAILING_MANIFEST = '''
from emg_borg.hookspecs import hookimpl


@hookimpl
def emg_borg_manifest_fields(run):
    raise RuntimeError("the site inventory is down")
'''


def test_a_before_backup_failing_after_the_streams_started_leaves_nothing(emg, mariadb, tmp_path):
    """The manifest step fails after mysqldump and its streamer run: the one error line, and the
    release stops them (process groups), removes the pipes, and gives up the lock."""
    from test_hooks import install_entry_point

    filler(mariadb, emg.database, 1)  # mysqldump is still waiting for borg when the step fails
    env = install_entry_point(tmp_path, "inventory", "emg_inventory_plugin", FAILING_MANIFEST)
    config = emg.borgmatic_config()
    result = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup", "--borgmatic-config",
                  str(config)], env=env, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1
    assert errors == ["emg-borg: error: unexpected RuntimeError: the site inventory is down (run with -v for a "
                      "traceback)"], result.stderr
    assert "dumps stream into borg through a named pipe" in result.stderr
    assert leftovers(emg) == []
    assert processes_of_this_test() == []
    assert not (emg.runtime / "lock").exists() and not (emg.runtime / "staging").exists()
