"""An offsite backup host for the tests: OpenSSH's sshd on 127.0.0.1 (a free port, its own host
key and configuration) that lets one client key run nothing but `borg serve --restrict-to-path
DIR`, as a real backup host's `authorized_keys` would; or, with `sftp=True`, nothing but SFTP
(`internal-sftp`), for restic's `sftp:` backend.

`backup_host(directory)` is a context manager; the `offsite` fixture in test_offsite.py wraps it.
The daemon is stopped by its pid however the test ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclasses.dataclass
class BackupHost:
    directory: Path  # the only place `borg serve` may touch
    port: int
    client_key: Path
    known_hosts: Path
    log: Path

    def url(self, name: str = "repo.borg") -> str:
        return f"ssh://root@127.0.0.1:{self.port}{self.directory}/{name}"

    @property
    def ssh_command(self) -> str:
        """borgmatic's `ssh_command` (borg's BORG_RSH): this key, this host key, no ssh_config."""
        return (f"ssh -F /dev/null -i {self.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes")


def available() -> str | None:
    """Why the tests cannot run an sshd here, or None."""
    for command in (SSHD, "ssh", "ssh-keygen"):
        if not shutil.which(command):
            return f"{command} is missing (apt-get install openssh-server openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def backup_host(home: Path, borg: str | None = None, sftp: bool = False):
    """Run an sshd whose one authorized key may only `borg serve` below `home/backups` (with
    `sftp`, only use SFTP)."""
    borg = borg or shutil.which("borg")
    home.mkdir(parents=True, exist_ok=True)
    directory = home / "backups"
    directory.mkdir(exist_ok=True)
    host_key, client_key = home / "host_ed25519", home / "client_ed25519"
    host_public = _keygen(host_key).split()[:2]
    client_public = _keygen(client_key)
    # The server side's borg keeps its own state (security dir, cache) apart from the client's.
    authorized = home / "authorized_keys"
    forced = "internal-sftp" if sftp else f"{borg} serve --restrict-to-path {directory}"
    authorized.write_text(f'command="{forced}",restrict {client_public}\n')
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = home / "sshd.log"
    process = None
    try:
        for _ in range(5):  # a port found free may be taken before sshd binds it
            port = _free_port()
            config = home / "sshd_config"
            config.write_text(
                f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
                f"PidFile {home / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nMaxStartups 64\n"
                f"SetEnv BORG_BASE_DIR={home / 'server-borg'}\n"
                + ("Subsystem sftp internal-sftp\n" if sftp else "")
            )
            with open(log, "ab") as out:
                process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out,
                                           stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while process.poll() is None and not _listening(port) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None and _listening(port):
                break
            _stop(process)
            process = None
        if process is None:
            raise AssertionError(f"sshd did not start: {log.read_text()[-2000:]}")
        known_hosts = home / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_public)}\n")
        yield BackupHost(directory, port, client_key, known_hosts, log)
    finally:
        if process is not None:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ssh_wrapper(host: BackupHost, directory: Path) -> Path:
    """A directory holding an `ssh` that reads an ssh configuration naming the host `backup-host`
    (this port, key and known host key): first on PATH, restic's `sftp:backup-host:/path` reaches
    the test host as a root's ~/.ssh/config would let it reach a real one."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "ssh_config"
    config.write_text(f"Host backup-host\n    HostName 127.0.0.1\n    Port {host.port}\n    User root\n"
                      f"    IdentityFile {host.client_key}\n    IdentitiesOnly yes\n    BatchMode yes\n"
                      f"    UserKnownHostsFile {host.known_hosts}\n    StrictHostKeyChecking yes\n")
    wrapper = directory / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
    wrapper.chmod(0o755)
    return directory


def borg_env(host: BackupHost, passphrase: str) -> dict:
    """The environment plain borg needs to reach the host's repositories."""
    return {**os.environ, "BORG_RSH": host.ssh_command, "BORG_PASSPHRASE": passphrase}
