"""The borgmatic versions operators run, each with its own hook style, end to end: 1.7.7 (Debian
12's, sectioned configuration, `before_backup`/`after_backup`/`on_error`), 1.8.3 and 1.9.14 (flat
configuration, the same hook lists) and 2.0.13 (`commands:` as in borgmatic-example.yaml). The
venv's own borgmatic (2.1) is what every other e2e test runs.

Each version is installed from PyPI into a virtual environment of its own, kept between runs in
~/.cache/emg-borg-tests/borgmatic-VERSION; it runs the project venv's borg 1.4 and emg-borg (first
on PATH). For each: a backup exits 0 and its archive holds the manifest, the streamed dump as the
manifest states it, seqno and the spool; verify, restore and doctor work from the same borgmatic
configuration; and a failing mysqldump fails the run with one line, no archive and nothing left."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import borg_cat, borg_list, leftovers, run, unavailable
from emg_borg.demo import sample
from emg_borg.demo.borgmatic import example_config
from emg_borg.plugins.seqno import DEFAULT_MARGIN
from test_doctor import line
from test_streaming import FAILING_DUMPS, fake_first_on_path, filler, processes_of_this_test

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VERSIONS = ("1.7.7", "1.8.3", "1.9.14", "2.0.13")
# borgmatic 1.7 imports pkg_resources (setuptools, which drops it after 80); the setuptools of a
# Python 3.11 venv (66) fails to resolve `borgmatic --version`'s requirements on today's wheels.
EXTRA_REQUIREMENTS = {"1.7.7": ("setuptools>=70,<81",)}
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emg-borg-tests"
PROJECT_BIN = Path(sys.executable).parent  # the project venv: its borg 1.4 and emg-borg
PASSPHRASE = "emg-borg-test-passphrase"
ARCHIVE_NAME_FORMAT = '"{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S}"'


def made_by() -> dict:
    """What a cached venv must have been made with to be used again."""
    return {"python": sys.version, "base_prefix": sys.base_prefix}


def borgmatic_venv(version: str) -> Path:
    """A venv holding borgmatic `version` from PyPI (made by the project venv's interpreter),
    made once and kept in the cache; a lock file keeps two pytest-xdist workers from making the
    same one at once, and a stamp written last marks it complete."""
    CACHE.mkdir(parents=True, exist_ok=True)
    venv = CACHE / f"borgmatic-{version}"
    stamp = venv / "emg-borg-tests.json"
    wanted = {**made_by(), "borgmatic": version}
    with open(CACHE / f"borgmatic-{version}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == wanted and (venv / "bin" / "borgmatic").exists():
                return venv
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", venv])
        installed = run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                         f"borgmatic=={version}", *EXTRA_REQUIREMENTS.get(version, ())], check=False)
        if installed.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            last = (installed.stderr.strip().splitlines() or ["no output"])[-1]
            unavailable(f"cannot install borgmatic=={version} from PyPI: {last}")
        stamp.write_text(json.dumps(wanted))
    return venv


@pytest.fixture(scope="session")
def borgmatic_of():
    """version -> the borgmatic executable of that version (its venv made on first use, once per
    session)."""
    made = {}

    def get(version: str) -> Path:
        if version not in made:
            made[version] = borgmatic_venv(version) / "bin" / "borgmatic"
        return made[version]

    return get


def hook(emg, phase: str) -> str:
    return f"emg-borg -c {emg.config_path} {phase} --borgmatic-config {{configuration_filename}}"


def hook_lists(emg, indent: str) -> str:
    """borgmatic 1.x: the three hook lists (after_backup runs only after a successful create)."""
    return "".join(f"{indent}{key}:\n{indent}    - {hook(emg, phase)}\n" for key, phase in
                   (("before_backup", "before-backup"), ("after_backup", "after-backup"), ("on_error", "on-error")))


def sectioned_config(emg) -> str:
    """borgmatic 1.7: options in sections, repositories as plain paths."""
    return (f"location:\n    repositories:\n        - {emg.repo}\n    patterns_from:\n        - {emg.runtime}/patterns\n"
            f"    read_special: true\n"
            f"storage:\n    encryption_passphrase: {PASSPHRASE}\n    archive_name_format: {ARCHIVE_NAME_FORMAT}\n"
            f"hooks:\n{hook_lists(emg, '    ')}")


def flat_config(emg) -> str:
    """borgmatic 1.8 and 1.9: flat options, repositories with a path and a label, hook lists."""
    return (f"repositories:\n    - path: {emg.repo}\n      label: local\npatterns_from:\n    - {emg.runtime}/patterns\n"
            f"read_special: true\nencryption_passphrase: {PASSPHRASE}\narchive_name_format: {ARCHIVE_NAME_FORMAT}\n"
            f"{hook_lists(emg, '')}")


def commands_config(emg) -> str:
    """borgmatic 2.0: borgmatic-example.yaml itself, less the option 2.0 does not know yet (it
    refuses unknown options, and always runs its path validation pass)."""
    text = example_config(emg.runtime, emg.config_path, emg.repo, PASSPHRASE)
    assert "\nunsafe_skip_path_validation_before_create: true\n" in text
    return text.replace("\nunsafe_skip_path_validation_before_create: true\n", "\n")


CONFIGS = {"1.7.7": sectioned_config, "1.8.3": flat_config, "1.9.14": flat_config, "2.0.13": commands_config}
# Where doctor finds before-backup, after-backup and on-error, by borgmatic's major version.
HOOK_PLACES = {"1": ("before_backup", "after_backup", "on_error"),
               "2": ("before: configuration", "after: configuration", "after: error")}


def borgmatic_create(config: Path, log: Path):
    """`borgmatic create` as an operator runs it. A log file: borgmatic 1.x logs to syslog when
    /dev/log or /var/run/log exists, and takes the directory /var/run/log of some systems for a
    socket."""
    return run(["borgmatic", "--config", config, "--log-file", log, "create"], check=False)


@pytest.fixture
def installation(emg, borgmatic_of, request, monkeypatch):
    """(emg, its borgmatic configuration file) for the version the test is for. The version's
    borgmatic is the one first on PATH (alone in a directory of the test: its venv's python
    stays out of the way), then the project venv with borg 1.4 and emg-borg."""
    version = request.node.callspec.params["version"]
    first = emg.tmp / "borgmatic-bin"
    first.mkdir()
    (first / "borgmatic").symlink_to(borgmatic_of(version))
    monkeypatch.setenv("PATH", os.pathsep.join((str(first), str(PROJECT_BIN), os.environ["PATH"])))
    config = emg.tmp / f"borgmatic-{version}.yaml"
    config.write_text(CONFIGS[version](emg))
    emg.init_repo()
    return emg, config


def emg_borg_errors(result) -> list[str]:
    """The `emg-borg: error:` lines of a borgmatic run, on stderr or (2.0 logs hook output at
    info level) stdout, before borgmatic's closing `summary:`, which repeats a failed hook's
    output; that repeats a line said before it."""
    said, repeated = [], []
    for stream in (result.stderr, result.stdout):
        lines = stream.splitlines()
        end = lines.index("summary:") if "summary:" in lines else len(lines)
        said += [line for line in lines[:end] if line.startswith("emg-borg: error:")]
        repeated += [line for line in lines[end:] if line.startswith("emg-borg: error:")]
    assert set(repeated) <= set(said), (said, repeated)
    return said


@pytest.mark.runs_restore
@pytest.mark.parametrize("version", VERSIONS)
def test_backup_verify_restore_and_doctor(version, installation, mariadb, tmp_path):
    emg, config = installation
    result = borgmatic_create(config, tmp_path / "borgmatic.log")
    assert result.returncode == 0, result.stdout + result.stderr
    assert emg_borg_errors(result) == []
    assert "emg-borg: dumps stream into borg through a named pipe" in result.stdout + result.stderr

    [archive] = borg_list(emg.repo)
    paths = set(borg_list(emg.repo, archive))
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    assert manifest["message_id"] == 1049 and manifest["dump_transfer"] == "stream"
    [dump] = manifest["dumps"]
    assert dump["transfer"] == "stream" and dump["path"] in paths
    data = borg_cat(emg.repo, archive, dump["path"])
    assert len(data) == dump["bytes"] and hashlib.sha256(data).hexdigest() == dump["sha256"]
    spool = emg.tree.spooldir
    assert borg_cat(emg.repo, archive, str(spool / "seqno").lstrip("/")) == b"1049\n"
    assert {str(spool / name).lstrip("/") for name in ("seqno.hdb", "leveldb/000005.ldb")} <= paths
    assert leftovers(emg) == []

    verified = emg.emg_borg("verify", "--borgmatic-config", str(config))
    assert verified.stdout.startswith(f"verify OK: {archive}: "), verified.stdout

    doctor = emg.emg_borg("doctor", "--borgmatic-config", str(config))
    said = doctor.stdout.splitlines()
    assert [text for text in said if text.startswith("FAIL")] == [], doctor.stdout
    assert any(text.startswith(line("ok", "borgmatic", f"borgmatic {version} (")) for text in said), doctor.stdout
    for phase, place in zip(("before-backup", "after-backup", "on-error"), HOOK_PLACES[version[0]]):
        assert line("ok", "hooks", f"{phase} runs at `{place}`") in said, doctor.stdout
    assert line("ok", "dumps", "stream into borg through a named pipe (read_special, one repository)") in said

    mariadb.sql(f"DROP DATABASE {emg.database}")  # the database is lost with the machine
    target = tmp_path / "target"
    target.mkdir()
    restored = emg.emg_borg("restore", "--borgmatic-config", str(config), "--target", str(target))
    assert "loaded the dump" in restored.stdout
    assert (target / str(spool / "seqno").lstrip("/")).read_text() == f"{1049 + DEFAULT_MARGIN}\n"
    assert (target / str(emg.tree.server_cfg).lstrip("/")).read_bytes() == emg.tree.server_cfg.read_bytes()
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert sample.DB_PASSWORD not in restored.stdout + restored.stderr
    assert leftovers(emg) == []


# One version of each behaviour (exit 143 an error: 1.7, 1.8; a warning: 1.9, 2.0): the suite's time.
@pytest.mark.parametrize("version", ("1.7.7", "2.0.13"))
def test_a_failing_mysqldump_fails_the_run_with_one_line_and_leaves_nothing(version, installation, mariadb, tmp_path,
                                                                            monkeypatch):
    emg, config = installation
    filler(mariadb, emg.database)  # borg is mid-read when mysqldump fails
    body, words = FAILING_DUMPS["exits non-zero midway"]
    real = subprocess.run(["which", "mysqldump"], capture_output=True, text=True).stdout.strip()
    fake_first_on_path(monkeypatch, tmp_path, "mysqldump", f"REAL={real}\n{body}")
    result = borgmatic_create(config, tmp_path / "borgmatic.log")
    # borgmatic 1.7 and 1.8 take the stopped borg's exit 143 for an error and run on-error; 1.9
    # and 2.0 take it for a warning and run after-backup, which finds the failure itself.
    assert result.returncode != 0
    errors = emg_borg_errors(result)
    assert len(errors) == 1, result.stdout + result.stderr
    assert words.format(db=emg.database) in errors[0] and "borg was stopped, no archive was made" in errors[0]
    assert borg_list(emg.repo) == []
    assert leftovers(emg) == []
    assert processes_of_this_test() == []
    # The next run, with the real mysqldump, works.
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    again = borgmatic_create(config, tmp_path / "borgmatic.log")
    assert again.returncode == 0 and emg_borg_errors(again) == [], again.stdout + again.stderr
    assert len(borg_list(emg.repo)) == 1
