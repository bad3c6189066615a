"""What `--borgmatic-config` hands borg: the repository (first, or by label or path), the
environment borgmatic would give borg (ssh_command, remote_path, key and base directories, the
passphrase settings) and the glob of the archive names borgmatic makes; where manifests are
cached; how the node choice of the command line is checked."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from conftest import borg, borg_create_from
from emg_borg.core.manifest import Manifest
from emg_borg.errors import UsageError
from emg_borg.lifecycle import archives, catalog, manifest_cache, nodes
from emg_borg.lifecycle.repository import archive_glob, borgmatic_repositories, borgmatic_repository, resolve_repository

CONFIG = """
repositories:
    - path: /var/backups/emg.borg
      label: local
    - path: ssh://backup@offsite.example.com:2222/./emg.borg
      label: offsite
      remote_path: /opt/borg/bin/borg
ssh_command: ssh -i /etc/emg-borg/offsite_ed25519 -o UserKnownHostsFile=/etc/emg-borg/known_hosts
borg_keys_directory: /etc/emg-borg/keys
borg_base_directory: /var/lib/emg-borg/borg
encryption_passcommand: cat /etc/emg-borg/borg-passphrase
archive_name_format: "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S}"
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD", "BORG_RSH", "BORG_REMOTE_PATH"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "borgmatic.yaml"
    path.write_text(CONFIG)
    return path


def test_settings_reach_borg_through_the_environment(config):
    local = borgmatic_repository(config)
    assert local.location == "/var/backups/emg.borg"
    assert local.env["BORG_RSH"] == "ssh -i /etc/emg-borg/offsite_ed25519 -o UserKnownHostsFile=/etc/emg-borg/known_hosts"
    assert local.env["BORG_KEYS_DIR"] == "/etc/emg-borg/keys"
    assert local.env["BORG_BASE_DIR"] == "/var/lib/emg-borg/borg"
    assert local.env["BORG_PASSCOMMAND"] == "cat /etc/emg-borg/borg-passphrase"
    assert "BORG_REMOTE_PATH" not in local.env  # set for the offsite repository only
    assert local.match_archives == "*-emg-*"
    offsite = borgmatic_repository(config, "offsite")
    assert offsite.location == "ssh://backup@offsite.example.com:2222/./emg.borg"
    assert offsite.env["BORG_REMOTE_PATH"] == "/opt/borg/bin/borg"
    assert borgmatic_repository(config, "ssh://backup@offsite.example.com:2222/./emg.borg") == offsite
    assert resolve_repository("offsite", str(config)) == offsite
    elsewhere = borgmatic_repository(config, "/mnt/usb/emg.borg")  # not listed: the general settings
    assert elsewhere.location == "/mnt/usb/emg.borg" and elsewhere.env["BORG_KEYS_DIR"] == "/etc/emg-borg/keys"
    assert [r.location for r in borgmatic_repositories(config)] == [local.location, offsite.location]
    with pytest.raises(UsageError, match=r"--repository offiste: no repository of .* \(labels: local, offsite\)"):
        borgmatic_repository(config, "offiste")
    assert "cat /etc" not in repr(offsite) and "ssh -i" not in repr(offsite)


def test_credential_file_and_unsupported_credentials(config):
    config.write_text("repositories: [/srv/emg.borg]\nencryption_passphrase: '{credential file /etc/emg-borg/pass phrase}'\n")
    assert borgmatic_repository(config).env["BORG_PASSCOMMAND"] == "cat '/etc/emg-borg/pass phrase'"
    config.write_text("repositories: [/srv/emg.borg]\nencryption_passphrase: '{credential systemd borg_pw}'\n")
    with pytest.raises(UsageError, match=r"only \{credential file PATH\} is understood"):
        borgmatic_repository(config)


@pytest.mark.parametrize("settings, glob", [
    ({"archive_name_format": "{hostname}-emg-{now:%Y-%m-%dT%H:%M:%S}"}, "*-emg-*"),
    ({"archive_name_format": "emg-{fqdn}-{utcnow}"}, "emg-*-*"),
    ({}, "*-*"),  # borgmatic's default for borg 1.x: {hostname}-{now:%Y-%m-%dT%H:%M:%S.%f}
    ({"archive_name_format": "{now}"}, None),
    ({"match_archives": "sh:emg-*", "archive_name_format": "x-{now}"}, "emg-*"),
    ({"match_archives": "{hostname}-emg-*"}, "*-emg-*"),
    ({"match_archives": "*"}, None),
    ({"match_archives": "re:^emg-"}, None),
])
def test_archive_glob_follows_borgmatic(settings, glob):
    assert archive_glob(settings) == glob


def test_cache_directory_is_found_like_borg_s(monkeypatch):
    monkeypatch.setenv("HOME", "/home/op")
    assert str(manifest_cache.cache_dir({})) == "/home/op/.cache/emg-borg"
    assert str(manifest_cache.cache_dir({"BORG_BASE_DIR": "/b"})) == "/b/.cache/emg-borg"
    assert str(manifest_cache.cache_dir({"BORG_BASE_DIR": "/b", "XDG_CACHE_HOME": "/x"})) == "/x/emg-borg"
    assert str(manifest_cache.cache_dir({"XDG_CACHE_HOME": "/x", "EMG_BORG_CACHE_DIR": "/e"})) == "/e"


def test_any_node_excludes_host_and_node():
    with pytest.raises(UsageError, match="--any-node"):
        nodes.node_choice("node2", None, True, "/nonexistent.toml", None)
    assert nodes.node_choice(None, 2, False, "/nonexistent.toml", None) == nodes.NodeChoice(node=2)


def test_a_run_s_archive_is_named_in_every_repository_of_the_configuration(tmp_path):
    """after-backup --borgmatic-config: one run, one archive in each repository, all named."""
    content = tmp_path / "content"
    (content / "emg-borg").mkdir(parents=True)
    (content / "emg-borg" / "manifest.json").write_text(json.dumps({"format_version": 2, "run_id": "run-1"}))
    repositories = [tmp_path / "local.borg", tmp_path / "second.borg"]
    for number, repository in enumerate(repositories):
        borg("init", "--encryption=repokey-blake2", str(repository))
        borg_create_from(repository, f"archive-{number}", content)
    config = tmp_path / "borgmatic.yaml"
    config.write_text(f"repositories:\n  - path: {repositories[0]}\n  - path: {repositories[1]}\n    label: second\n"
                      f"  - path: {tmp_path / 'gone.borg'}\n")
    named = archives.name_run_archive("the archive of run run-1", "run-1", "T", None, str(config))
    first, second, gone = named.split(" and ")
    assert first == f"archive {repositories[0]}::archive-0 (emg-borg run run-1, started T)"
    assert second == f"archive {repositories[1]}::archive-1 (emg-borg run run-1, started T)"
    assert gone.startswith(f"the archive of run run-1 in {tmp_path / 'gone.borg'} (the archive could not be looked up: ")
    assert archives.name_run_archive("run-1's", "run-1", "T", "second", str(config)) == second


class ListedArchives:
    """A catalog of archives already read (newest first), as `nodes.choose` walks one."""

    repository = "/var/backups/emg.borg"

    def __init__(self, *archives):
        self.listed = list(archives)

    def walk(self, entries):
        return iter(entries)

    def archives(self, entries):
        return list(entries)


def archive_of(name: str, server_cfg: str | None) -> catalog.Archive:
    data = {"hostname": "gw1", "node_id": None, "message_id": 1}
    if server_cfg is not None:
        data["server_cfg"] = server_cfg
    return catalog.Archive(name, datetime.datetime(2026, 12, 1), Manifest(data))


def test_latest_never_skips_newer_archives_of_an_installation_not_on_this_machine(tmp_path):
    """EMGDIR moved from /etc/emg to another place months ago; the machine is rebuilt under its
    name, a fresh EMG package puts a sample server.cfg in /etc/emg, and emg-borg runs with its
    defaults: the archives of /etc/emg (older) must not be taken for this node's latest while
    the newer ones, of a server.cfg that is not on this machine yet, are there."""
    here = tmp_path / "etc-emg" / "server.cfg"
    here.parent.mkdir()
    here.write_text("SPOOLDIR=/var/spool/emg\n")
    moved = str(tmp_path / "home-emg-etc" / "server.cfg")  # not restored yet
    newest, old, format_1 = archive_of("new", moved), archive_of("old", str(here)), archive_of("older", None)
    choice = nodes.NodeChoice(local=nodes.Node("gw1", None), server_cfg=str(here))
    for entries in ([newest, old], [newest, format_1]):
        with pytest.raises(UsageError) as refused:
            nodes.choose(ListedArchives(), entries, choice)
        assert f"newest archive of this node (gw1) in /var/backups/emg.borg, new, is of the EMG installation {moved}, " \
               f"which is not on this machine" in str(refused.value)
        assert str(refused.value).endswith(f"({here}) newest is {entries[1].name}: choose with --archive")
    # Another installation of this machine (a test EMGDIR beside production) made the newer one:
    # this installation's latest is its own, as before.
    Path(moved).parent.mkdir()
    Path(moved).write_text("SPOOLDIR=/var/spool/emg-test\n")
    assert nodes.choose(ListedArchives(), [newest, old], choice) is old
    # Nothing newer of another installation: the newest archive of this one, as before.
    assert nodes.choose(ListedArchives(), [old, newest], choice) is old
