"""A throwaway MariaDB server on its own datadir, socket and TCP port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(*names) -> str:
    for name in names:
        for directory in (None, "/usr/sbin", "/usr/bin"):
            found = shutil.which(name, path=directory)
            if found:
                return found
    raise RuntimeError(f"none of {', '.join(names)} found: install mariadb-server (apt-get install mariadb-server)")


class MariaDB:
    """Start with `start()`, stop with `stop()`; or use as a context manager."""

    def __init__(self, base: Path, port: int | None = None, binlog: bool = True, server_id: int = 1,
                 read_only: bool = False, buffer_pool: str = "64M"):
        self.base = Path(base)
        self.datadir = self.base / "data"
        self.socket = str(self.base / "mysqld.sock")
        self._socket_dir = None
        if len(self.socket) > 100:  # a Unix socket's path must fit 107 bytes; deep temp dirs do not
            self._socket_dir = tempfile.mkdtemp(prefix="emgb-sock-")
            self.socket = os.path.join(self._socket_dir, "mysqld.sock")
        self.pidfile = self.base / "mysqld.pid"
        self.errlog = self.base / "mysqld.err"
        self.port = port or free_port()
        self.binlog = binlog
        self.server_id = server_id
        self.read_only = read_only
        self.buffer_pool = buffer_pool
        self.extra_args: tuple = ()  # more server options for the next start()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "MariaDB":
        self.base.mkdir(parents=True, exist_ok=True)
        # Its own temporary directory: servers bootstrapping at once in a shared /tmp were seen to
        # remove each other's temporary tables.
        tmpdir = self.base / "tmp"
        tmpdir.mkdir(exist_ok=True)
        if not self.datadir.exists():
            installed = subprocess.run(
                [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={self.datadir}",
                 "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db", f"--tmpdir={tmpdir}"],
                capture_output=True, text=True,
            )
            if installed.returncode != 0:
                shutil.rmtree(self.datadir, ignore_errors=True)  # a retry starts from scratch
                output = (installed.stdout + installed.stderr).strip().splitlines()
                raise RuntimeError(f"mariadb-install-db exited {installed.returncode}: {' | '.join(output[-5:])}")
        argv = [
            _binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", f"--pid-file={self.pidfile}",
            f"--log-error={self.errlog}", f"--innodb-buffer-pool-size={self.buffer_pool}", "--skip-name-resolve", f"--tmpdir={tmpdir}",
            f"--server-id={self.server_id}",
        ]
        if self.binlog:
            argv += ["--log-bin=binlog"]
        if self.read_only:
            # A replica as MariaDB advises: crash-safe (its relay log rebuilt after a crash).
            argv += ["--read-only", "--relay-log=relay-bin", "--relay-log-recovery"]
        argv += list(self.extra_args)
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited early: {self.errlog.read_text()[-2000:] if self.errlog.exists() else ''}")
            if os.path.exists(self.socket):
                try:
                    self.sql("SELECT 1")
                    return self
                except subprocess.CalledProcessError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("mariadbd did not start in time")

    def sql(self, statement: str, database: str | None = None, user: str = "root", password: str | None = None,
            names: bool = False) -> str:
        argv = [_binary("mariadb", "mysql"), "--no-defaults", f"--socket={self.socket}", f"--user={user}", "--batch"]
        if not names:
            argv.append("--skip-column-names")
        env = dict(os.environ)
        if password is not None:
            env["MYSQL_PWD"] = password  # test helper only; emg-borg itself never does this
        if database:
            argv.append(database)
        return subprocess.run(argv, input=statement, capture_output=True, text=True, check=True, env=env).stdout

    def replicate_from(self, primary: "MariaDB", timeout: float = 60) -> "MariaDB":
        """Make this server a GTID replica of `primary` (both started; `primary` with its binary
        log) from the primary's first binary log on, and wait until both threads run."""
        password = "emg-borg-repl-" + os.urandom(6).hex()
        primary.sql(f"CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY '{password}';"
                    f"ALTER USER 'repl'@'127.0.0.1' IDENTIFIED BY '{password}';"
                    "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';")
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL gtid_slave_pos = '';"
                 f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
                 f"MASTER_PASSWORD='{password}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.replica_status()
            if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes":
                return self
            if status.get("Last_IO_Error") or status.get("Last_SQL_Error"):
                raise RuntimeError(f"replication did not start: {status.get('Last_IO_Error') or status.get('Last_SQL_Error')}")
            time.sleep(0.1)
        raise RuntimeError("replication did not start in time")

    def replica_status(self) -> dict:
        """`SHOW SLAVE STATUS` as a dict (empty when this server is no replica)."""
        out = self.sql("SHOW SLAVE STATUS\\G", names=True)
        fields = {}
        for line in out.splitlines():
            name, sep, value = line.strip().partition(": ")
            if sep:
                fields[name] = value
        return fields

    def wait_caught_up(self, primary: "MariaDB", timeout: float = 60) -> str:
        """Wait until this replica has applied everything `primary` has logged; its position."""
        position = primary.sql("SELECT @@gtid_binlog_pos").strip()
        reached = self.sql(f"SELECT MASTER_GTID_WAIT('{position}', {timeout})").strip()
        if reached != "0":
            raise RuntimeError(f"the replica did not reach {position} within {timeout} s: {self.replica_status()}")
        return position

    def stop(self) -> None:
        if self.process is None:
            self._remove_socket_dir()
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
