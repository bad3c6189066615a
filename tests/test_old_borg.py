"""A borg older than 1.4 (Debian 12's own borgbackup 1.2.4, run by Debian 12's own borgmatic 1.7.7
from /usr/bin) would archive emg-borg's `/./` roots under their full paths: before-backup refuses
it in one line, before it takes anything, whether it is borgmatic's `local_path` or `borg` on
PATH; doctor says the same. The restore side reads emg-borg's archives with borg 1.2 too."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import borg_list, leftovers, run
from emg_borg.plugins.seqno import DEFAULT_MARGIN
from test_faults import fake_bin

pytestmark = pytest.mark.e2e

DEBIAN_BORG, DEBIAN_BORGMATIC = Path("/usr/bin/borg"), Path("/usr/bin/borgmatic")
VENV_BORG = shutil.which("borg")  # the tests' PATH starts with the venv: borg 1.4
LOCAL_PATH = "borgmatic's local_path"
REFUSAL = ("borg 1.2.4 ({path}, {source}) is too old: emg-borg needs borg >= 1.4 for its /./ paths; install it "
           "from bookworm-backports (borg 1.4.0), Debian 13, or PyPI (pip install 'borgbackup>=1.4')")


@pytest.fixture(autouse=True)
def debian_packages():
    for binary, version in ((DEBIAN_BORG, "borg 1.2."), (DEBIAN_BORGMATIC, "1.7.")):
        if not binary.exists() or not run([binary, "--version"]).stdout.startswith(version):
            pytest.skip(f"{binary} is not Debian 12's package (apt-get install borgbackup borgmatic; scripts/setup)")
    assert run(["borg", "--version"]).stdout.startswith("borg 1.4."), "the venv's borg 1.4 must come first on PATH"


def debian_first() -> dict:
    """The environment with /usr/bin first on PATH: `borg` is Debian's 1.2.4 (emg-borg itself is
    found in the venv, further on)."""
    return {**os.environ, "PATH": f"/usr/bin{os.pathsep}{os.environ['PATH']}"}


def sectioned_config(emg, local_path=None) -> Path:
    """A borgmatic 1.7 configuration (options in sections, the 1.x hook lists) with the
    integration of borgmatic-example.yaml."""
    hook = f"emg-borg -c {emg.config_path} {{}} --borgmatic-config {{{{configuration_filename}}}}"
    location = f"    local_path: {local_path}\n" if local_path else ""
    path = emg.tmp / "borgmatic-1.7.yaml"
    path.write_text(
        f"location:\n    repositories:\n        - {emg.repo}\n    patterns_from:\n        - {emg.runtime / 'patterns'}\n"
        f"    read_special: true\n{location}"
        f"storage:\n    encryption_passphrase: emg-borg-test-passphrase\n"
        f"    archive_name_format: \"{{hostname}}-emg-{{now:%Y-%m-%dT%H:%M:%S}}\"\n"
        f"retention:\n    keep_daily: 7\n"
        f"hooks:\n    before_backup:\n        - {hook.format('before-backup')}\n"
        f"    after_backup:\n        - {hook.format('after-backup')}\n"
        f"    on_error:\n        - {hook.format('on-error')}\n"
    )
    return path


def debian_borgmatic_create(config: Path, env=None):
    # A log file instead of syslog: borgmatic 1.7 takes a /var/run/log directory for a syslog socket.
    log = config.with_suffix(".log")
    return run([DEBIAN_BORGMATIC, "--config", config, "--log-file", log, "create"], check=False, env=env)


def lines_naming_borg_14(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "needs borg >= 1.4" in line]


def assert_refused(emg, result, path, source):
    """borgmatic failed; the one line emg-borg wrote is in its output (borgmatic shows a hook's
    output, and again in its summary); the repository has no archive; nothing is left behind."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert set(lines_naming_borg_14(result)) == {
        f"emg-borg: error: preflight check failed: {REFUSAL.format(path=path, source=source)}"}, result.stderr
    assert "emg-borg: on-error: nothing to release" in result.stderr
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []


def test_debian_12_borgmatic_with_its_own_borg_1_2_is_refused(emg):
    emg.init_repo()
    config = sectioned_config(emg)
    result = debian_borgmatic_create(config, env=debian_first())
    assert_refused(emg, result, DEBIAN_BORG, "on PATH")

    # The same line from a dry run, which changes nothing either; and without --borgmatic-config
    # (a script running the hooks) the borg on PATH is the one asked.
    for extra in (("--borgmatic-config", str(config)), ()):
        dry = run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "before-backup", "--dry-run", *extra],
                  check=False, env=debian_first())
        assert dry.returncode == 1
        assert dry.stderr.splitlines()[-1] == ("emg-borg: error: preflight check failed: "
                                               + REFUSAL.format(path=DEBIAN_BORG, source="on PATH"))
        assert len(lines_naming_borg_14(dry)) == 1
    assert leftovers(emg) == []


def test_local_path_naming_borg_1_2_is_refused_although_path_has_borg_1_4(emg):
    emg.init_repo()
    result = debian_borgmatic_create(sectioned_config(emg, local_path=DEBIAN_BORG))
    assert_refused(emg, result, DEBIAN_BORG, LOCAL_PATH)

    # borgmatic 2.x keeps local_path at the top level (borgmatic-example.yaml with one line more).
    config = emg.borgmatic_config()
    config.write_text(config.read_text() + f"local_path: {DEBIAN_BORG}\n")
    dry = run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "before-backup", "--dry-run",
               "--borgmatic-config", config], check=False)
    assert dry.returncode == 1
    assert lines_naming_borg_14(dry) == [
        f"emg-borg: error: preflight check failed: {REFUSAL.format(path=DEBIAN_BORG, source=LOCAL_PATH)}"]
    assert leftovers(emg) == []


def test_local_path_naming_borg_1_4_is_accepted_although_path_has_borg_1_2(emg):
    emg.init_repo()
    result = debian_borgmatic_create(sectioned_config(emg, local_path=VENV_BORG), env=debian_first())
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines_naming_borg_14(result) == []
    [archive] = borg_list(emg.repo)
    paths = set(borg_list(emg.repo, archive))
    spool = str(emg.tree.spooldir).lstrip("/")
    # Under the live paths, as borg 1.4 reads the /./ roots: no staging or snapshot path.
    assert {"emg-borg/manifest.json", f"{spool}/seqno"} <= paths
    assert not any(str(emg.runtime).lstrip("/") in path for path in paths)
    assert leftovers(emg) == []


def doctor_lines(emg, *args, env=None) -> list[str]:
    result = run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "doctor", *args], check=False, env=env)
    return [result.returncode, *(line for line in result.stdout.splitlines() if line.split()[1:2] == ["borg"])]


def test_doctor_names_the_borg_borgmatic_runs(emg):
    emg.init_repo()
    config = sectioned_config(emg, local_path=DEBIAN_BORG)
    assert doctor_lines(emg, "--borgmatic-config", config) == [
        1, f"FAIL borg          {REFUSAL.format(path=DEBIAN_BORG, source=LOCAL_PATH)}"]
    assert doctor_lines(emg, env=debian_first()) == [
        1, f"FAIL borg          {REFUSAL.format(path=DEBIAN_BORG, source='on PATH')}"]
    config = sectioned_config(emg, local_path=VENV_BORG)
    version = run([VENV_BORG, "--version"]).stdout.split()[1]
    assert doctor_lines(emg, "--borgmatic-config", config, env=debian_first())[1:] == [
        f"ok   borg          borg {version} ({VENV_BORG}, {LOCAL_PATH})"]
    assert leftovers(emg) == []


def test_the_version_is_asked_once_per_borg_binary(emg, tmp_path):
    """A borg is started once for its version; a changed binary is asked again."""
    calls = tmp_path / "calls"
    bindir = fake_bin(tmp_path, {"borg": f'echo "$@" >> {calls}\necho "borg 1.4.0"'})
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    def dry_run():
        return run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, "before-backup", "--dry-run"],
                   check=False, env=env)

    assert dry_run().returncode == 0 and dry_run().returncode == 0
    assert calls.read_text() == "--version\n"
    fake = Path(bindir) / "borg"
    fake.write_text(fake.read_text().replace("1.4.0", "1.2.8"))  # an older borg installed in its place
    result = dry_run()
    assert calls.read_text() == "--version\n--version\n"
    assert result.returncode == 1 and lines_naming_borg_14(result) == [
        "emg-borg: error: preflight check failed: " + REFUSAL.replace("1.2.4", "1.2.8").format(path=fake,
                                                                                              source="on PATH")]
    assert leftovers(emg) == []


@pytest.mark.slow
@pytest.mark.runs_restore
def test_the_restore_side_reads_archives_of_borg_1_4_with_borg_1_2(emg, mariadb, tmp_path):
    """archives, verify and restore only read an archive: Debian's borg 1.2 (first on PATH) reads
    what borg 1.4 wrote, dump and seqno included."""
    emg.borgmatic_create()
    [archive] = borg_list(emg.repo)

    def emg_borg(*args):
        return run([sys.executable, "-m", "emg_borg", "-c", emg.config_path, *args, "--repository", emg.repo],
                   env=debian_first())

    assert [row["name"] for row in json.loads(emg_borg("archives", "--json").stdout)] == [archive]
    scratch = f"{emg.database}_scratch"
    report = json.loads(emg_borg("verify", "--load-dump", "--scratch-db", scratch, "--json").stdout)
    assert report["ok"] is True, report
    mariadb.sql(f"DROP DATABASE {emg.database}")
    target = tmp_path / "target"
    target.mkdir()
    result = emg_borg("restore", "--target", str(target))
    assert f"restored from {archive}" in result.stdout
    assert (target / str(emg.tree.spooldir).lstrip("/") / "seqno").read_text() == f"{1049 + DEFAULT_MARGIN}\n"
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert leftovers(emg) == []
