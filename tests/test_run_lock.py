"""The run lock: two scripts driving the hooks (cron) are two owners; two before-backups racing,
on a free lock or on the stale lock of a SIGKILLed run, leave exactly one winner and release
nothing twice; an owner that is a zombie, a process under a reused pid or from an earlier boot is
gone; a link planted where the lock, the ledger or the patterns file belong is refused, and so is
a runtime directory that someone other than root could change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import leftovers, run
from emg_borg.core import proc
from test_hooks import install_entry_point

pytestmark = pytest.mark.e2e

ROUNDS = 14  # races of two before-backups on a free lock
STALE_ROUNDS = 6  # races on the lock and ledger a SIGKILLed run left

# A snapshot provider that records every resource it creates and every release it is asked for,
# in a log outside runtime_dir: a resource released twice shows there (releases are idempotent,
# so no error would).
COUNTING = '''
import os, shutil
from emg_borg.core.snapshot import Resource, Snapshot, SnapshotProvider
from emg_borg.hookspecs import hookimpl


def log(line):
    with open(os.environ["COUNTING_LOG"], "a") as f:
        f.write(f"{line} {os.getpid()}\\n")


class Counting(SnapshotProvider):
    name = "counting"

    def prepare(self, run):
        marker = os.path.join(os.environ["COUNTING_MARKERS"], run.run_id)
        yield Resource("marker", {"path": marker}, lambda: (open(marker, "w").close(), log(f"created {marker}")))

    def take(self, run):
        base = run.runtime.snapshots
        target = base / str(run.layout.spooldir).lstrip("/")
        yield Resource("copy", {"path": target}, lambda: shutil.copytree(run.layout.spooldir, target))
        return Snapshot(provider="counting", origin=run.layout.spooldir, base=base, name="copy")

    def release(self, run, entry):
        if entry["kind"] == "marker":
            log(f"released {entry['path']}")
        if os.path.isdir(entry["path"]):
            shutil.rmtree(entry["path"])
        elif os.path.exists(entry["path"]):
            os.unlink(entry["path"])


@hookimpl
def emg_borg_snapshot_providers():
    return [Counting()]
'''


def test_two_scripts_from_one_parent_are_two_owners(emg, tmp_path):
    """Two backup scripts started by the same parent (like two cron jobs): the second fails
    clearly and its on-error leaves the first run's snapshot and staging alone."""
    cli = f"{sys.executable} -m emg_borg -c {emg.config_path}"
    first = tmp_path / "first.sh"
    first.write_text(f"{cli} before-backup || exit 1\ntouch {tmp_path}/first-ready\nsleep 30\n{cli} after-backup\n")
    second = tmp_path / "second.sh"
    second.write_text(f"{cli} before-backup 2> {tmp_path}/second.err || {cli} on-error 2> {tmp_path}/on-error.err\n")
    runner = subprocess.Popen(["bash", str(first)], start_new_session=True)  # its sleep goes with it
    try:
        wait_for(lambda: (tmp_path / "first-ready").exists() or runner.poll() is not None)
        assert runner.poll() is None, "the first run failed"
        manifest = emg.runtime / "staging" / "emg-borg" / "manifest.json"
        before = manifest.read_bytes()
        subprocess.run(["bash", str(second)], check=True)
        assert "another emg-borg backup is running" in (tmp_path / "second.err").read_text()
        assert "belongs to another running backup" in (tmp_path / "on-error.err").read_text()
        assert manifest.read_bytes() == before
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    subprocess.run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "after-backup"], check=True)
    assert leftovers(emg) == []


def wait_for(condition, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.01)


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("emg-borg: error:")]


class Contender:
    """A backup script as cron or borgmatic would run the hooks: before-backup, then on-error when
    it failed or after-backup when it succeeded. Each waits for the test's go: so the two runs
    overlap, and the loser's on-error runs while the winner still holds the run."""

    def __init__(self, emg, directory, name, env):
        self.directory, self.name = directory, name
        cli = f"{sys.executable} -m emg_borg -c {emg.config_path}"
        d = directory
        script = d / f"{name}.sh"
        script.write_text(
            f"{cli} before-backup 2> {d}/{name}.before; echo $? > {d}/{name}.rc.tmp; mv {d}/{name}.rc.tmp {d}/{name}.rc\n"
            f"if [ $(cat {d}/{name}.rc) = 0 ]; then while [ ! -e {d}/go-after ]; do sleep 0.01; done\n"
            f"  {cli} after-backup 2> {d}/{name}.after\n"
            f"else while [ ! -e {d}/go-on-error ]; do sleep 0.01; done\n"
            f"  {cli} on-error 2> {d}/{name}.after; fi\n"
            f"echo $? > {d}/{name}.end\n")
        self.process = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)

    def read(self, what: str) -> str:
        return (self.directory / f"{self.name}.{what}").read_text()

    @property
    def before_done(self) -> bool:
        return (self.directory / f"{self.name}.rc").exists()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def counting_setup(emg, tmp_path) -> dict:
    env = install_entry_point(tmp_path, "counting", "emg_counting_plugin", COUNTING)
    markers, log = tmp_path / "markers", tmp_path / "counting.log"
    markers.mkdir()
    log.touch()
    emg.write_config("counting")
    # Without the database the runs are quicker; the lock and the ledger are the same.
    emg.config_path.write_text(emg.config_path.read_text().replace(
        "[backup]\n", '[backup]\ncategories = ["config", "data"]\n'))
    return {**env, "COUNTING_MARKERS": str(markers), "COUNTING_LOG": str(log)}


def kill_a_run_after_before_backup(emg, directory, env) -> str:
    """A run whose owner is SIGKILLed after before-backup (borgmatic killed while borg reads):
    its lock names a dead process, its ledger lists what it made. Returns its run id."""
    script = directory / "killed.sh"
    script.write_text(f"{sys.executable} -m emg_borg -c {emg.config_path} before-backup 2> {directory}/killed.err "
                      f"&& touch {directory}/killed-ready\nsleep 600\n")
    killed = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)
    try:
        wait_for(lambda: (directory / "killed-ready").exists() or killed.poll() is not None)
        assert killed.poll() is None, (directory / "killed.err").read_text()
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert json.loads((emg.runtime / "ledger.json").read_text())["entries"]
    return json.loads((emg.runtime / "lock").read_text())["run_id"]


def race(emg, directory, env) -> tuple[Contender, Contender]:
    """Two contenders start together; both before-backups end before either goes on. Returns
    (winner, loser)."""
    directory.mkdir()
    contenders = [Contender(emg, directory, name, env) for name in ("a", "b")]
    try:
        wait_for(lambda: all(c.before_done or c.process.poll() is not None for c in contenders))
        (directory / "go-on-error").touch()
        wait_for(lambda: all(c.read("rc").strip() == "0" or c.process.poll() is not None for c in contenders))
        (directory / "go-after").touch()
        for contender in contenders:
            contender.process.wait(timeout=120)
    finally:
        for contender in contenders:
            contender.kill()
    winner, loser = sorted(contenders, key=lambda c: int(c.read("rc")))
    assert (winner.read("rc"), loser.read("rc")) == ("0\n", "1\n"), [c.read("before") for c in contenders]
    return winner, loser


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True], ids=["free lock", "stale lock of a SIGKILLed run"])
def test_of_two_racing_before_backups_exactly_one_runs_and_nothing_is_released_twice(stale, emg, tmp_path):
    env = counting_setup(emg, tmp_path)
    wins = Counter()
    for number in range(STALE_ROUNDS if stale else ROUNDS):
        directory = tmp_path / f"round-{number}"
        stale_run = None
        if stale:
            (tmp_path / f"killed-{number}").mkdir()
            stale_run = kill_a_run_after_before_backup(emg, tmp_path / f"killed-{number}", env)
        winner, loser = race(emg, directory, env)
        wins[winner.name] += 1
        assert errors(winner.read("before")) == [], winner.read("before")
        if stale:
            assert f"found leftovers of an earlier run (run {stale_run}," in winner.read("before")
        assert len(errors(loser.read("before"))) == 1, loser.read("before")
        assert "another emg-borg backup is running" in errors(loser.read("before"))[0]
        assert "another emg-borg backup is running" not in winner.read("before")
        # borgmatic's on-error after the failed before-backup leaves the winner's run alone.
        assert "belongs to another running backup" in loser.read("after") and errors(loser.read("after")) == []
        assert winner.read("end").strip() == "0" and errors(winner.read("after")) == [], winner.read("after")
        assert list(emg.runtime.iterdir()) == []  # no lock, no ledger: the next round starts afresh
    assert leftovers(emg) == []
    log = (tmp_path / "counting.log").read_text().split("\n")
    created = [line.split()[1] for line in log if line.startswith("created ")]
    released = Counter(line.split()[1] for line in log if line.startswith("released "))
    assert released == Counter(created)  # every marker released once, none twice
    assert len(created) == (2 * STALE_ROUNDS if stale else ROUNDS)
    assert list((tmp_path / "markers").iterdir()) == []
    print(f"\nrounds {sum(wins.values())}, wins {dict(wins)}, releases {sum(released.values())} of "
          f"{len(created)} resources, none twice")


def plant_run(emg, owner: dict, run_id: str) -> None:
    """The lock and the ledger of a run owned by `owner`, its staging area holding a file, and
    what was left of a write cut short."""
    emg.runtime.mkdir(mode=0o700)
    (emg.runtime / "lock").write_text(json.dumps({**owner, "run_id": run_id, "started": "earlier"}))
    staging = emg.runtime / "staging"
    (staging / "emg-borg").mkdir(parents=True)
    (staging / "emg-borg" / "manifest.json").write_text("{}")
    (emg.runtime / ".ledger.json.99999.emg-borg-tmp").write_text("{")  # its last write, cut short
    (emg.runtime / "ledger.json").write_text(json.dumps(
        {"meta": {"run_id": run_id, "started": "earlier"}, "entries": [{"owner": "core", "kind": "staging",
                                                                         "path": str(staging)}]}))


@pytest.mark.parametrize("owner", ["zombie", "reused pid", "earlier boot", "live"])
def test_a_lock_whose_owner_is_gone_is_taken_over_and_a_live_owner_s_is_not(owner, emg):
    """The owner is gone when it ended and is not yet reaped (a zombie), when its pid names a
    process with another start time, or when it ran before the last boot."""
    process = subprocess.Popen(["true"] if owner == "zombie" else ["sleep", "60"])
    try:
        if owner == "zombie":
            wait_for(lambda: proc.state(process.pid) == "Z")  # ended, and this test does not reap it yet
        identity = proc.identity(process.pid)
        if owner == "reused pid":
            identity["pid_started"] = str(int(identity["pid_started"]) - 1)
        if owner == "earlier boot":
            identity["boot"] = "00000000-0000-0000-0000-000000000000"
        plant_run(emg, identity, "earlier-run")
        result = emg.emg_borg("before-backup", check=False)
        if owner == "live":
            assert result.returncode == 1
            assert errors(result.stderr) == [
                f"emg-borg: error: another emg-borg backup is running (pid {process.pid}, run earlier-run, started "
                f"earlier); lock file {emg.runtime / 'lock'}"]
            assert (emg.runtime / "staging" / "emg-borg" / "manifest.json").read_text() == "{}"  # left alone
            assert json.loads((emg.runtime / "lock").read_text())["run_id"] == "earlier-run"
            process.kill()
            process.wait()
            result = emg.emg_borg("before-backup")
        assert result.returncode == 0, result.stderr
        assert "found leftovers of an earlier run (run earlier-run, started earlier) that did not finish" \
            in result.stderr
        assert json.loads((emg.runtime / "lock").read_text())["run_id"] != "earlier-run"
        emg.emg_borg("after-backup")
    finally:
        process.kill()
        process.wait()
    assert leftovers(emg) == []


@pytest.mark.parametrize("name", ["lock", "ledger.json", "patterns"])
def test_a_link_planted_where_emg_borg_keeps_its_files_is_refused_not_followed(name, emg, tmp_path):
    precious = tmp_path / "precious"
    precious.write_text('{"pid": 1}\n')
    emg.runtime.mkdir(mode=0o700)
    (emg.runtime / name).symlink_to(precious)
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    assert errors(result.stderr) == [
        f"emg-borg: error: {emg.runtime / name} is a symbolic link where emg-borg keeps its own file; refusing to "
        f"follow or use it (find out who put it there, then remove it)"]
    assert precious.read_text() == '{"pid": 1}\n'
    assert [p.name for p in emg.runtime.iterdir()] == [name]  # nothing taken, nothing written
    (emg.runtime / name).unlink()
    assert leftovers(emg) == []


@pytest.mark.parametrize("where, change, problem", [
    ("runtime_dir", 0o777, "is writable by its group and others (mode 0777; chmod go-w {dir})"),
    ("runtime_dir", 0o720, "is writable by its group (mode 0720; chmod go-w {dir})"),
    ("parent", 0o757, "is writable by others (mode 0757; chmod go-w {dir})"),
    ("parent", "uid 4321", "is owned by uid 4321, not by root"),
    ("runtime_dir", "uid 4321", "is owned by uid 4321, not by root"),
])
def test_a_runtime_dir_that_others_could_change_is_refused(where, change, problem, emg, tmp_path):
    """Another user who can write in runtime_dir or above it could plant a link where root
    writes its lock, ledger or patterns, or swap the directory: before-backup and doctor refuse,
    naming the directory and what is wrong. A sticky directory above it (/tmp) is fine."""
    parent = tmp_path / "parent"
    runtime = parent / "runtime"
    runtime.mkdir(parents=True, mode=0o700)
    emg.config_path.write_text(emg.config_path.read_text().replace(str(emg.runtime), str(runtime)))
    directory = runtime if where == "runtime_dir" else parent
    if isinstance(change, int):
        directory.chmod(change)
    else:
        os.chown(directory, int(change.split()[1]), -1)
    try:
        result = emg.emg_borg("before-backup", check=False)
        line = (f"{emg.config_path}:5: backup.runtime_dir: {runtime} is not safe: "
                f"{directory} {problem.format(dir=directory)}")
        assert result.returncode == 2
        assert errors(result.stderr) == [f"emg-borg: error: {line}"]
        assert list(runtime.iterdir()) == []
        doctor = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "doctor"], check=False)
        assert doctor.returncode == 1
        assert f"FAIL runtime_dir   {line}" in doctor.stdout.splitlines()
    finally:
        os.chown(directory, 0, -1)
        directory.chmod(0o700)
    emg.emg_borg("before-backup")
    emg.emg_borg("after-backup")
    assert list(runtime.iterdir()) == []
