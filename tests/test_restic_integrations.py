"""The README's restic integrations, as printed there: the systemd unit, the resticprofile profile
and the autorestic location are read from README.md and their command lines run in the order,
environment and failure rules of their tool, with the README's example paths replaced by the
test's (its emg-borg, restic, configuration, runtime_dir, repository and password file).

systemd, resticprofile and autorestic themselves are not on Debian 12 (resticprofile and
autorestic are not packaged; systemd does not run as PID 1 here): what is checked is that the
documented lines, quoting and hook order give a released run whose snapshot emg-borg lists, and
that a failed restic run is released by the documented failure hook."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
from ruamel.yaml import YAML  # borgmatic's YAML library

from conftest import ROOT, leftovers
from test_restic import restic, restic_emg, restic_env, snapshots  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e]

EXAMPLE_REPOSITORY = "sftp:backup@backup.example.com:/srv/restic/emg"


def readme_block(marker: str) -> str:
    """The first fenced block after `marker` in the README's restic section."""
    section = (ROOT / "README.md").read_text().split("\n## restic\n", 1)[1].split("\n## ", 1)[0]
    after = section.split(marker, 1)[1]
    match = re.search(r"```[a-z]*\n(.*?)\n\s*```", after, re.S)
    return "\n".join(line[3:] if line.startswith("   ") else line for line in match.group(1).splitlines())


@pytest.fixture
def local(restic_emg, tmp_path):  # noqa: F811 - the imported fixture
    """The README's example paths -> this test's, and the environment without restic's variables."""
    emg = restic_emg
    emg_borg, restic_path = shutil.which("emg-borg"), shutil.which("restic")
    assert emg_borg and restic_path, "emg-borg and restic must be on PATH (the venv's bin first)"
    replacements = {
        "/usr/local/bin/emg-borg": emg_borg,
        "/usr/bin/restic": restic_path,
        "/etc/emg-borg/config.toml": str(emg.config_path),
        "/var/lib/emg-borg/restic-files": str(emg.runtime / "restic-files"),
        "/etc/emg-borg/restic-password": os.environ["RESTIC_PASSWORD_FILE"],
        EXAMPLE_REPOSITORY: os.environ["RESTIC_REPOSITORY"],
    }

    def localize(text: str) -> str:
        for example, path in replacements.items():
            text = text.replace(example, path)
        return text

    # Each tool's environment is its own: the repository and password come from its file only.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_") or k == "RESTIC_CACHE_DIR"}
    return emg, localize, base_env


def sh(command: str, env: dict) -> subprocess.CompletedProcess:
    return run_argv(["/bin/sh", "-c", command], env)


def run_argv(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True)


CHECKED = "holds the manifest and "  # after-backup's line when it found the run's snapshot whole
RELEASED_ON_ERROR = "emg-borg: on-error: released"


def released_and_listed(emg, runs: int) -> None:
    assert leftovers(emg) == []
    listed = json.loads(emg.emg_borg("archives", "--json").stdout)
    assert len(listed) == runs and all(a["message_id"] == 1049 for a in listed), listed


def systemd_unit(text: str) -> tuple[dict, dict[str, list[list[str]]]]:
    """`Environment=` and the Exec lines of a [Service] section, split as systemd splits them
    (its quoting is the shell's for these lines; `$$` is a literal `$`)."""
    env, execs = {}, {}
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key == "Environment":
            name, setting = value.split("=", 1)
            env[name] = setting
        elif key.startswith("Exec"):
            execs.setdefault(key, []).append([word.replace("$$", "$") for word in shlex.split(value)])
    return env, execs


def systemd_start(execs, env: dict) -> tuple[str, str]:
    """One start of a Type=oneshot unit: ExecStartPre lines, then ExecStart lines, each only
    when all before it exited 0; ExecStopPost always, with SERVICE_RESULT (systemd.exec(5)).
    The result and what ExecStopPost printed."""
    result = "success"
    for argv in execs.get("ExecStartPre", []) + execs["ExecStart"]:
        if run_argv(argv, env).returncode != 0:
            result = "exit-code"
            break
    stopped = [run_argv(argv, {**env, "SERVICE_RESULT": result}) for argv in execs["ExecStopPost"]]
    assert all(p.returncode == 0 for p in stopped), [p.stderr for p in stopped]
    return result, "".join(p.stderr for p in stopped)


def test_the_systemd_unit_releases_a_good_run_and_a_failed_one(local, tmp_path):
    emg, localize, base_env = local
    unit_env, execs = systemd_unit(localize(readme_block("**A systemd unit**")))
    assert set(unit_env) == {"RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE"}
    assert any("$SERVICE_RESULT" in word for argv in execs["ExecStopPost"] for word in argv)
    env = {**base_env, **unit_env}
    result, stop_post = systemd_start(execs, env)
    assert result == "success" and CHECKED in stop_post, stop_post  # after-backup ran and checked
    released_and_listed(emg, 1)
    (snapshot,) = snapshots()
    assert "emg-borg" in snapshot["tags"]

    # restic cannot open the repository: ExecStart fails, ExecStopPost runs on-error.
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    result, stop_post = systemd_start(execs, {**env, "RESTIC_PASSWORD_FILE": str(wrong)})
    assert result == "exit-code" and RELEASED_ON_ERROR in stop_post and CHECKED not in stop_post, stop_post
    released_and_listed(emg, 1)


def test_the_resticprofile_profile_and_the_autorestic_location_release_their_runs(local):
    emg, localize, base_env = local
    # resticprofile: the profile's keys become restic flags (lists repeat the flag); run-before,
    # then restic, then run-after, or run-after-fail when a step failed.
    profile = tomllib.loads(localize(readme_block("**resticprofile**")))["emg"]
    env = {**base_env, **profile["env"]}
    backup_section = dict(profile["backup"])
    hooks = {key: backup_section.pop(key) for key in ("run-before", "run-after", "run-after-fail")}
    argv = ["restic", "backup", "--repo", profile["repository"], "--password-file", profile["password-file"]]
    for key, value in backup_section.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [f"--{key}", str(item)]
    ok = all(sh(command, env).returncode == 0 for command in hooks["run-before"]) and run_argv(argv, env).returncode == 0
    after = [sh(command, env) for command in hooks["run-after" if ok else "run-after-fail"]]
    assert ok and all(p.returncode == 0 and CHECKED in p.stderr for p in after), [p.stderr for p in after]
    released_and_listed(emg, 1)

    # autorestic (1.8, internal/location.go Backup): the prevalidate hooks; then the location is
    # validated (every `from` must exist: os.Stat); the before hooks; restic, with options.backup
    # as flags, its own location tag and `from` as paths; then success or failure hooks. The
    # backend gives restic the repository; the hooks get autorestic's own environment.
    config = YAML(typ="safe").load(localize(readme_block("**autorestic**")))
    assert config["version"] == 2
    location = config["locations"]["emg"]
    env = {**base_env, "RESTIC_REPOSITORY": os.environ["RESTIC_REPOSITORY"],
           "RESTIC_PASSWORD_FILE": os.environ["RESTIC_PASSWORD_FILE"]}
    paths = [location["from"]] if isinstance(location["from"], str) else location["from"]
    argv = ["restic", "backup"]
    for key, values in location["options"]["backup"].items():
        for value in values:
            argv += [f"--{key}", value]
    argv += ["--tag", "ar:location:emg", *paths]
    hooks = location["hooks"]
    ok = (all(sh(command, env).returncode == 0 for command in hooks.get("prevalidate", []))
          and all(os.path.exists(path) for path in paths)
          and all(sh(command, env).returncode == 0 for command in hooks.get("before", []))
          and run_argv(argv, env).returncode == 0)
    after = [sh(command, env) for command in hooks["success" if ok else "failure"]]
    assert ok and all(p.returncode == 0 and CHECKED in p.stderr for p in after), [p.stderr for p in after]
    released_and_listed(emg, 2)
    newest = snapshots()[-1]
    assert str(emg.runtime / "restic-files") in newest["paths"]  # the list itself, as the README says
    restic("snapshots")  # the repository is readable afterwards

