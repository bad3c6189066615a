"""Choosing the repository and the archive: `--at` times, borg's archive times, `--repository`,
`--borgmatic-config` (with its passphrase settings) and `$BORG_REPO`; finding a backup run's
archive by its manifest."""

from __future__ import annotations

import datetime
import json

import pytest

from conftest import borg, borg_create_from
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.lifecycle import archives, tool_borg


def test_parse_when_local_and_zoned():
    naive = archives.parse_when("2026-11-20 14:00")
    assert naive == datetime.datetime(2026, 11, 20, 14, 0).astimezone()
    zoned = archives.parse_when("2026-11-20T14:00:00+05:30")
    assert zoned.utcoffset() == datetime.timedelta(hours=5, minutes=30)
    assert archives.parse_when("2026-11-20T08:30:00Z") == zoned
    with pytest.raises(UsageError, match="not a date and time"):
        archives.parse_when("last tuesday-ish")


def test_archive_time_is_local_and_to_the_second():
    when = tool_borg.archive_time({"start": "2026-11-20T14:00:00.750000"})
    assert when == datetime.datetime(2026, 11, 20, 14, 0).astimezone()
    assert when <= archives.parse_when("2026-11-20 14:00")


def test_repository_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BORG_REPO", raising=False)
    assert archives.resolve_repository("repo.borg").location == str(tmp_path / "repo.borg")
    assert archives.Repository("backup@host:emg.borg").location == "backup@host:emg.borg"
    assert archives.Repository("ssh://backup@host/./emg.borg").location == "ssh://backup@host/./emg.borg"
    with pytest.raises(UsageError, match="no repository"):
        archives.resolve_repository()
    monkeypatch.setenv("BORG_REPO", "/srv/emg.borg")
    assert archives.resolve_repository().location == "/srv/emg.borg"


def test_borgmatic_config_repository_and_passphrase(tmp_path, monkeypatch):
    for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "borgmatic.yaml"
    config.write_text("repositories:\n  - path: /srv/one.borg\n    label: one\n  - path: /srv/two.borg\n"
                      "encryption_passcommand: cat /etc/emg-borg/borg-passphrase\n")
    repository = archives.borgmatic_repository(config)
    assert repository.location == "/srv/one.borg"
    assert repository.env["BORG_PASSCOMMAND"] == "cat /etc/emg-borg/borg-passphrase"
    assert "BORG_PASSCOMMAND" not in repr(repository)
    # borgmatic 1.x: sections, plain strings
    config.write_text("location:\n  repositories:\n    - /srv/old.borg\nstorage:\n  encryption_passphrase: s3cret\n")
    repository = archives.borgmatic_repository(config)
    assert repository.location == "/srv/old.borg" and repository.env["BORG_PASSPHRASE"] == "s3cret"
    monkeypatch.setenv("BORG_PASSPHRASE", "from-environment")
    assert archives.borgmatic_repository(config).env is None  # the environment wins
    config.write_text("keep_daily: 7\n")
    with pytest.raises(UsageError, match="lists no repositories"):
        archives.borgmatic_repository(config)
    config.write_text("repositories: [\n")
    with pytest.raises(UsageError, match="cannot parse borgmatic configuration"):
        archives.borgmatic_repository(config)


@pytest.mark.slow
def test_archive_of_run_finds_the_run_by_its_manifest_among_the_newest(tmp_path):
    repo = tmp_path / "repo.borg"
    borg("init", "--encryption=repokey-blake2", str(repo))
    for number, run_id in enumerate(["run-a", None, "run-b", "run-c"]):
        content = tmp_path / f"content-{number}"
        (content / "emg-borg").mkdir(parents=True)
        if run_id is None:
            (content / "emg-borg" / "note").write_text("an archive made without emg-borg\n")
        else:
            (content / "emg-borg" / "manifest.json").write_text(json.dumps({"run_id": run_id}))
        borg_create_from(repo, f"archive-{number}", content)
    repository = archives.Repository(str(repo))

    found = archives.archive_of_run(repository, "run-b")
    assert found.name == "archive-2" and found.manifest.data == {"run_id": "run-b"}
    assert archives.archive_of_run(repository, "run-a").name == "archive-0"
    assert archives.archive_of_run(repository, "run-a", newest=3) is None  # older ones are not read
    assert archives.archive_of_run(repository, "no-such-run") is None
    # Made within a second or two: the order of borg's list decides between equal times.
    assert [a.name for a in archives.emg_archives(repository)] == ["archive-3", "archive-2", "archive-0"]
    with pytest.raises(EmgBorgError, match="does not exist"):
        archives.archive_of_run(archives.Repository(str(tmp_path / "missing.borg")), "run-a")
