"""The default path (streamed dumps) on the borgmatic setups operators really run: `retries`, a
borg that starts reading late, another process opening the pipe, borgmatic roots covering
runtime_dir; and after-backup's own look at the archive. Real borgmatic, borg and MariaDB."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import borg_cat, borg_list, leftovers, run
from test_streaming import REAL_BORG, fake_first_on_path, filler, processes_of_this_test

pytestmark = [pytest.mark.e2e]


def dump_of(emg, archive) -> tuple[dict, bytes]:
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    [entry] = manifest["dumps"]
    return entry, borg_cat(emg.repo, archive, entry["path"])


def assert_whole(entry: dict, data: bytes) -> None:
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data.rstrip().endswith(b"-- Dump completed")


def borgmatic_yaml(emg, extra: str):
    config = emg.borgmatic_config()
    config.write_text(config.read_text() + "\n" + extra + "\n")
    return config


def borgmatic_create(emg, config, *extra, check=True):
    if not emg.repo.exists():
        emg.init_repo()
    return run(["borgmatic", "--config", str(config), "create", *extra], check=check)


def before_borg_create(monkeypatch, tmp_path, shell: str) -> None:
    """A `borg` first on PATH that runs `shell` before every real `borg create` (not borgmatic's
    `--dry-run` pass), then the real borg with the arguments as `shell` left them."""
    fake_first_on_path(monkeypatch, tmp_path, "borg", f"""
case " $* " in *" create "*) case " $* " in *" --dry-run "*) ;; *)
{shell}
;; esac;; esac
exec {REAL_BORG} "$@"
""")


def borgmatic_in_borg_create(emg, tmp_path, monkeypatch, pause: float, output=subprocess.DEVNULL):
    """`borgmatic create` started in the background, returned once its `borg create` has begun
    (and waits `pause` seconds before the real borg runs)."""
    ready = tmp_path / "borg-started"
    before_borg_create(monkeypatch, tmp_path, f"touch {ready}; sleep {pause}")
    emg.init_repo()
    borgmatic = subprocess.Popen(["borgmatic", "--config", str(emg.borgmatic_config()), "create"], stdout=output,
                                 stderr=output, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert borgmatic.poll() is None and time.monotonic() < deadline, borgmatic.communicate()
        time.sleep(0.05)
    return borgmatic


def emg_borg_errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]


# The first `borg create` reads the dump and manifest pipes partly or whole (through a borg of
# its own into a scratch repository, or with head), then fails as a lost SSH link does; the
# retry is the real borg.
FIRST_ATTEMPT = {
    "read everything, then lost its link": '{real} init -e none {scratch} >/dev/null 2>&1; '
                                           '{real} "$@" >/dev/null 2>&1 || true; '
                                           'echo "Remote: connection closed by remote host" >&2; exit 2',
    "died midway through the dump": 'head -c 1000000 {dump} >/dev/null; echo "Connection closed" >&2; exit 2',
}


@pytest.mark.parametrize("first", sorted(FIRST_ATTEMPT))
def test_a_retried_borg_create_archives_the_whole_dump(first, emg, mariadb, tmp_path, monkeypatch):
    filler(mariadb, emg.database)
    config = borgmatic_yaml(emg, "retries: 2\nretry_wait: 0")
    plan = emg.emg_borg("before-backup", "--dry-run", "--borgmatic-config", str(config))
    assert "retries: 2, so the whole dump stays on disk until the run ends" in plan.stderr + plan.stdout
    attempts = tmp_path / "attempts"
    dump = emg.runtime / "staging" / "emg-borg" / "dumps" / "mysql" / f"{emg.database}.sql"
    # The scratch repository's target: the same arguments with the repository replaced.
    body = FIRST_ATTEMPT[first].format(real=REAL_BORG, scratch=tmp_path / "scratch.borg", dump=dump)
    before_borg_create(monkeypatch, tmp_path, f"""
  echo x >> {attempts}
  if [ "$(wc -l < {attempts})" = 1 ]; then
    set -- $(printf '%s\\n' "$@" | sed 's#^{emg.repo}::#{tmp_path / "scratch.borg"}::#')
    {body}
  fi""")
    result = borgmatic_create(emg, config)
    assert attempts.read_text().count("x") == 2, result.stderr
    [archive] = borg_list(emg.repo)
    entry, data = dump_of(emg, archive)
    assert_whole(entry, data)
    if first.startswith("read everything"):  # the failed attempt had really read it all
        scratch = tmp_path / "scratch.borg"
        [attempt] = borg_list(scratch)
        assert borg_cat(scratch, attempt, entry["path"]) == data
    assert emg_borg_errors(result) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


def test_without_retries_a_second_borg_create_fails_at_once_and_never_waits(emg, mariadb, tmp_path, monkeypatch):
    """No `retries`: the dump is read once and punched behind borg. A second borg create of the
    run (here: a wrapper running borg twice) is refused with one line, not left waiting."""
    filler(mariadb, emg.database, 1)
    config = emg.borgmatic_config()
    before_borg_create(monkeypatch, tmp_path, f"""
  {REAL_BORG} init -e none {tmp_path / "scratch.borg"} >/dev/null 2>&1
  set -- $(printf '%s\\n' "$@" | sed 's#^{emg.repo}::#{tmp_path / "scratch.borg"}::#')
  {REAL_BORG} "$@" || exit $?
  set -- $(printf '%s\\n' "$@" | sed 's#^{tmp_path / "scratch.borg"}::#{emg.repo}::#')""")
    started = time.monotonic()
    result = borgmatic_create(emg, config, check=False)
    assert time.monotonic() - started < 120
    assert result.returncode != 0
    [error] = emg_borg_errors(result) or [result.stderr]
    assert f"mysqldump of {emg.database} was opened a second time after borg had read it whole" in error
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


def test_a_borg_that_starts_reading_late_archives_the_whole_dump(emg, mariadb, tmp_path, monkeypatch):
    """borg starts reading long after before-backup (another node holds the repository lock, a
    cache sync): mysqldump is drained at its own pace and never hits the server's
    net_write_timeout (lowered to 10 s here, so that 20 s of delay show what 90 s would); the whole
    dump is archived, and the manifest records how much the buffer held meanwhile."""
    filler(mariadb, emg.database, 8)
    mariadb.sql("SET GLOBAL net_write_timeout = 10")
    try:
        before_borg_create(monkeypatch, tmp_path, "sleep 20")
        result = emg.borgmatic_create(check=False)
    finally:
        mariadb.sql("SET GLOBAL net_write_timeout = 60")
    assert result.returncode == 0, result.stderr
    [archive] = borg_list(emg.repo)
    entry, data = dump_of(emg, archive)
    assert_whole(entry, data)
    assert entry["bytes"] > 16 * 2**20
    assert entry["buffer_peak_bytes"] >= 0.9 * entry["bytes"]  # borg lagged: the buffer held it
    assert leftovers(emg) == []


def test_another_process_reading_the_pipe_fails_the_run_with_one_line(emg, mariadb, tmp_path, monkeypatch):
    """A process outside the run's borgmatic (a scanner, another backup job) opens the dump's
    pipe and takes bytes: borg is stopped, no archive, one line naming the intruder."""
    filler(mariadb, emg.database, 2)
    borgmatic = borgmatic_in_borg_create(emg, tmp_path, monkeypatch, 3, output=subprocess.PIPE)
    taken = []

    def intruder():
        fifo = emg.runtime / "staging" / "emg-borg" / "dumps" / "mysql" / f"{emg.database}.sql"
        fd = os.open(fifo, os.O_RDONLY)
        try:
            while len(taken) < 300_000 and (data := os.read(fd, 65536)):
                taken.extend(data)
        finally:
            os.close(fd)

    reader = threading.Thread(target=intruder, daemon=True)
    reader.start()
    stdout, stderr = borgmatic.communicate(timeout=180)
    reader.join(timeout=30)
    assert borgmatic.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1, stderr
    assert f"another process (pid {os.getpid()}, " in errors[0]
    assert f"opened the named pipe of mysqldump of {emg.database}" in errors[0]
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


def test_after_backup_fails_an_archive_whose_dump_is_shorter_than_the_manifest_says(emg, mariadb, tmp_path,
                                                                                   monkeypatch):
    """Whatever shortened the dump on its way (here: a staged dump cut after the manifest was
    written), after-backup looks at the archive itself and fails the run with one line."""
    emg.config_path.write_text(emg.config_path.read_text().replace(
        "[backup]\n", '[backup]\nstream_dumps = "never"\n', 1))
    staged = emg.runtime / "staging" / "emg-borg" / "dumps" / "mysql" / f"{emg.database}.sql"
    before_borg_create(monkeypatch, tmp_path, f"truncate -s -100 {staged}")
    result = emg.borgmatic_create(check=False)
    assert result.returncode != 0
    [error] = emg_borg_errors(result)
    [archive] = borg_list(emg.repo)
    entry, data = dump_of(emg, archive)
    assert len(data) == entry["bytes"] - 100
    assert (f"DO NOT TRUST archive {emg.repo}::{archive}: its {entry['path']} holds {entry['bytes'] - 100} bytes, "
            f"the manifest states {entry['bytes']} bytes") in error
    assert leftovers(emg) == []


@pytest.mark.parametrize("how", ["source_directories", "patterns"])
def test_borgmatic_roots_covering_runtime_dir_are_refused_before_anything_is_taken(how, emg, tmp_path):
    parent = emg.runtime.parent
    extra = (f"source_directories:\n    - {parent}" if how == "source_directories" else f"patterns:\n    - R {parent}")
    config = borgmatic_yaml(emg, extra)
    result = borgmatic_create(emg, config, check=False)
    assert result.returncode != 0
    [error] = emg_borg_errors(result)
    assert (f"[backup] runtime_dir {emg.runtime} lies inside '{parent}' ({how} of {config}): borg would read "
            f"emg-borg's named pipes and snapshot mounts a second time") in error
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    doctor = emg.emg_borg("doctor", "--borgmatic-config", str(config), check=False)
    assert doctor.returncode == 1
    assert f"runtime_dir {emg.runtime} lies inside '{parent}'" in doctor.stdout


def test_a_killed_streamer_leaves_no_borg_waiting_on_its_pipe(emg, mariadb, tmp_path, monkeypatch):
    """The dump's streamer is SIGKILLed (the OOM killer, an operator) before borg opens its pipe:
    the run's other streamer notices, lets the waiting borg through and stops it; the run fails
    with one line and leaves nothing."""
    filler(mariadb, emg.database, 1)
    status = emg.runtime / "streams" / f"mysql-{emg.database}.sql.status.json"
    before_borg_create(monkeypatch, tmp_path, f"""
  kill -9 $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' {status})""")
    started = time.monotonic()
    result = emg.borgmatic_create(check=False)
    assert time.monotonic() - started < 120
    assert result.returncode != 0
    [error] = emg_borg_errors(result)
    assert f"the streamer of mysqldump of {emg.database} (pid " in error and "ended unexpectedly" in error
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []


def test_a_full_staging_disk_while_borg_is_late_fails_the_run_with_its_cause(emg, mariadb, tmp_path, monkeypatch):
    """borg starts late, the dump's buffer spills and fills runtime_dir's file system (here a
    3 MiB tmpfs): the run fails with the one line that says so, not with "borg did not read" (the
    buffer gives its disk back, so the streamers can still record why), and no archive."""
    filler(mariadb, emg.database, 8)
    emg.runtime.mkdir(mode=0o700)
    run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "emg-borg-test-staging", str(emg.runtime)])
    try:
        before_borg_create(monkeypatch, tmp_path, "sleep 12")
        result = emg.borgmatic_create(check=False)
        left_in_runtime = [str(p) for p in emg.runtime.rglob("*")]
    finally:
        run(["umount", str(emg.runtime)])
    assert result.returncode != 0
    [error] = emg_borg_errors(result)
    assert "No space left on device writing the dump's buffer" in error, result.stderr
    assert error.endswith("borg was stopped, no archive was made")
    assert borg_list(emg.repo) == []
    assert left_in_runtime == []
    assert leftovers(emg) == []


def test_a_borgmatic_killed_while_its_borg_walks_the_tree_leaves_no_archive(emg, mariadb, tmp_path, monkeypatch):
    """borgmatic is SIGKILLed while its borg create runs (before borg reaches emg-borg's pipes):
    that borg lives on as an orphan. The streamers see borgmatic gone and stop it, so it cannot
    commit an archive of the tree without the dump; the next run recovers everything."""
    filler(mariadb, emg.database, 1)
    borgmatic = borgmatic_in_borg_create(emg, tmp_path, monkeypatch, 4)
    time.sleep(1.5)  # the streamers have noted borgmatic's borg
    borgmatic.kill()
    borgmatic.wait()
    deadline = time.monotonic() + 60
    while processes_of_this_test():
        assert time.monotonic() < deadline, processes_of_this_test()
        time.sleep(0.2)
    assert borg_list(emg.repo) == []  # the orphaned borg was stopped before it committed
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    result = emg.borgmatic_create()
    assert "found leftovers of an earlier run" in result.stderr + result.stdout
    [archive] = borg_list(emg.repo)
    assert_whole(*dump_of(emg, archive))
    assert leftovers(emg) == []
