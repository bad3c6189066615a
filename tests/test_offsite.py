"""An offsite repository, end to end: real borgmatic backs up over SSH (OpenSSH's sshd on
127.0.0.1 whose one key may only run `borg serve --restrict-to-path`) with the passphrase from
`encryption_passcommand`; emg-borg lists, extracts, verifies and restores from it with nothing but
`--borgmatic-config`. Also: one consistency point for two repositories, and the new-machine drill."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

import sshd
from conftest import Emg, leftovers, run, run_emg_borg
from emg_borg.demo import sample
from emg_borg.demo.borgmatic import example_config

pytestmark = pytest.mark.e2e

PASSPHRASE = "offsite passphrase, not the test default"
OFFSITE_TEMPLATE = "    # - path: ssh://backup@offsite.example.com/./emg.borg\n    #   label: offsite\n"
SSH_TEMPLATE = "# ssh_command: ssh -i /etc/emg-borg/offsite_ed25519 -o UserKnownHostsFile=/etc/emg-borg/known_hosts\n"


def rel(path) -> str:
    return str(path).lstrip("/")


def files_under(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def offsite(tmp_path):
    """The backup host, stopped by its pid however the test ends."""
    reason = sshd.available()
    if reason:
        pytest.skip(reason)
    with sshd.backup_host(tmp_path / "backup-host") as host:
        yield host


@pytest.fixture
def passfile(tmp_path, monkeypatch):
    """The passphrase in a root-only file; borg gets it from borgmatic's configuration only."""
    for name in ("BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "secrets" / "borg-passphrase"
    path.parent.mkdir(mode=0o700)
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def offsite_config(emg: Emg, host: sshd.BackupHost, passfile, *, local_too=False):
    """borgmatic-example.yaml as the README's offsite setup makes it: the offsite repository
    (alone, or after the local one), its ssh_command, the passphrase from a file."""
    first = emg.repo if local_too else host.url()
    text = example_config(emg.runtime, emg.config_path, first, PASSPHRASE)
    text = text.replace(f"encryption_passphrase: {PASSPHRASE}", f"encryption_passcommand: cat {passfile}")
    assert OFFSITE_TEMPLATE in text and SSH_TEMPLATE in text
    if local_too:
        text = text.replace(OFFSITE_TEMPLATE, f"    - path: {host.url()}\n      label: offsite\n")
    text = text.replace(SSH_TEMPLATE, f"ssh_command: {host.ssh_command}\n")
    path = emg.tmp / "borgmatic.yaml"
    path.write_text(text)
    return path


def borgmatic(config, *args):
    return run(["borgmatic", "--config", str(config), *args])


def borg_at(host, *args) -> bytes:
    """Plain borg with the offsite passphrase and ssh command; stdout."""
    result = subprocess.run(["borg", *map(str, args)], capture_output=True, env=sshd.borg_env(host, PASSPHRASE))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def archive_names(host, repository) -> list[str]:
    return [a["name"] for a in json.loads(borg_at(host, "list", "--json", repository))["archives"]]


def test_one_consistency_point_for_a_local_and_an_offsite_repository(emg, offsite, passfile, tmp_path):
    config = offsite_config(emg, offsite, passfile, local_too=True)
    borgmatic(config, "repo-create", "--encryption", "repokey-blake2")
    borgmatic(config, "create")
    # Released after the last repository (only this test's resources are judged).
    assert [path for path in leftovers(emg) if path.startswith(str(emg.tmp))] == []

    local, = archive_names(offsite, emg.repo)
    remote, = archive_names(offsite, offsite.url())
    local_manifest = borg_at(offsite, "extract", "--stdout", f"{emg.repo}::{local}", "emg-borg/manifest.json")
    remote_manifest = borg_at(offsite, "extract", "--stdout", f"{offsite.url()}::{remote}", "emg-borg/manifest.json")
    assert local_manifest == remote_manifest  # one freeze: the same run, message id, dump
    manifest = json.loads(remote_manifest)
    dump, = manifest["dumps"]
    assert manifest["message_id"] == 1049
    remote_dump = borg_at(offsite, "extract", "--stdout", f"{offsite.url()}::{remote}", dump["path"])
    assert hashlib.sha256(remote_dump).hexdigest() == dump["sha256"]
    assert borg_at(offsite, "extract", "--stdout", f"{emg.repo}::{local}", dump["path"]) == remote_dump

    # emg-borg reads the offsite repository (by its label) with borgmatic's settings only.
    listed = json.loads(emg.emg_borg("archives", "--borgmatic-config", str(config), "--repository", "offsite",
                                     "--json").stdout)
    assert [(a["name"], a["message_id"]) for a in listed] == [(remote, 1049)]
    out = tmp_path / "extracted"
    emg.emg_borg("extract", "--borgmatic-config", str(config), "--repository", "offsite", "--categories", "config",
                 "--destination", str(out))
    assert files_under(out) == {rel(p): p.read_bytes() for p in emg.tree.config_files()}
    verdict = emg.emg_borg("verify", "--borgmatic-config", str(config), "--repository", "offsite")
    assert verdict.stdout.startswith("verify OK"), verdict.stdout
    assert "Accepted publickey" in offsite.log.read_text()
    assert PASSPHRASE not in "".join(r.stdout + r.stderr for r in (verdict,))


def test_new_machine_drill_rebuilds_emg_from_the_offsite_repository(emg, offsite, passfile, mariadb, tmp_path,
                                                                    monkeypatch):
    """The machine is lost with its database. A new one has the borgmatic configuration, the SSH
    key and the passphrase file, no emg-borg configuration, no borg cache: it rebuilds EMG."""
    config = offsite_config(emg, offsite, passfile)
    borgmatic(config, "repo-create", "--encryption", "repokey-blake2")
    borgmatic(config, "create")
    expected = {**{rel(p): p.read_bytes() for p in emg.tree.config_files()},
                **{rel(emg.tree.spooldir / k): v for k, v in files_under(emg.tree.spooldir).items() if k != "seqno"}}

    # The disaster: the database and every file of the old machine are gone.
    mariadb.sql(f"DROP DATABASE {emg.database}")
    emg.tree.root.rename(tmp_path / "lost")
    # The new machine: its own borg state, and only what the README says to keep off the machine.
    new = tmp_path / "new-machine"
    keep = new / "etc"
    keep.mkdir(parents=True)
    for path in (offsite.client_key, offsite.known_hosts, passfile):
        shutil.copy2(path, keep / path.name)
    text = config.read_text()
    for path in (offsite.client_key, offsite.known_hosts, passfile):
        text = text.replace(str(path), str(keep / path.name))
    new_config = keep / "borgmatic.yaml"
    new_config.write_text(text)
    monkeypatch.setenv("BORG_BASE_DIR", str(new / "borg"))
    target = new / "root"
    target.mkdir()
    missing = new / "etc" / "emg-borg" / "config.toml"

    def emg_borg(*args):
        return run_emg_borg("-c", str(missing), *args, "--borgmatic-config", str(new_config))

    listed = json.loads(emg_borg("archives", "--json").stdout)
    assert [a["message_id"] for a in listed] == [1049]
    assert emg_borg("verify").stdout.startswith("verify OK")
    result = emg_borg("restore", "--target", str(target))

    restored = files_under(target)
    assert {k: v for k, v in restored.items() if k != rel(emg.tree.spooldir / "seqno")} == expected
    assert restored[rel(emg.tree.spooldir / "seqno")] == b"10001049\n"  # the default margin: ten million
    assert mariadb.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["50", "1049"]
    assert mariadb.sql("SELECT body FROM messagebody", emg.database).split() == ["hello"]
    assert "loaded the dump" in result.stdout and "start emgd" in result.stdout
    output = result.stdout + result.stderr
    assert PASSPHRASE not in output and sample.DB_PASSWORD not in output
