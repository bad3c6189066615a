"""The dump's own session: which server thread is mysqldump's, and when its snapshot has begun.

mysqldump connects through a relay (`relay.py`) started before the freeze: the relay takes exactly
one connection, and tells the thread id the server greeted it with. `DumpWatch` then looks at that
one thread only, so no other session of the same user (EMG's portal, a monitoring script) can end
the freeze before mysqldump's `START TRANSACTION WITH CONSISTENT SNAPSHOT` has returned.

Where the binary log is on, the dump's head names the binary log position of its own snapshot
(`--master-data=2`: MariaDB takes it from the snapshot, `binlog_snapshot_file`/`_position`,
without a lock). `snapshot_check` is the check that it equals the position read in the freeze.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emg_borg.core.files import remove_tree
from emg_borg.errors import EmgBorgError
from emg_borg.plugins.mysql import relay as relay_process
from emg_borg.plugins.mysql.settings import query_one

logger = logging.getLogger(__name__)

# Statements mysqldump --single-transaction sends only after its START TRANSACTION WITH
# CONSISTENT SNAPSHOT has returned: seeing one of them on the dump's session proves its snapshot
# has begun. (`SHOW STATUS LIKE 'binlog_snapshot_%'` comes both before and after: not one of them.)
_AFTER_SNAPSHOT = ("UNLOCK TABLES", "SELECT BINLOG_GTID_POS", "SHOW MASTER STATUS", "SHOW BINLOG STATUS",
                   "SET OPTIMIZER_SWITCH", "SELECT LOGFILE_GROUP_NAME", "SELECT DISTINCT TABLESPACE_NAME", "SAVEPOINT",
                   "SHOW FULL TABLES", "SHOW TABLES", "SHOW CREATE", "SELECT /*!40001 SQL_NO_CACHE */",
                   "ROLLBACK TO SAVEPOINT")
# InnoDB refreshes information_schema.INNODB_TRX at most every 100 ms, so it is only the slower
# second witness.
_TRX_CACHE_SECONDS = 0.11
_START_SECONDS = 10  # for the relay's interpreter to start (before the freeze)
_SESSION = "the dump's session"

# The line `--master-data=2` writes near the top of the dump (`=1` writes it without the `-- `).
BINLOG_LINE = r"^(?:-- )?CHANGE MASTER TO MASTER_LOG_FILE='([^']*)', MASTER_LOG_POS=(\d+)"


def snapshot_check(binlog: dict) -> dict:
    """The head check (see emg_borg.core.streamer.head_problem) that the dump's snapshot lies at
    `binlog`, the position read in the freeze."""
    return {"regex": BINLOG_LINE, "expected": f"{binlog['file']}:{binlog['position']}",
            "message": "the dump's snapshot is at binlog position {found}, the consistency point's at {expected}: "
                       "the dump does not show the database as it was in the freeze"}


def has_binlog_snapshot(connection) -> bool:
    """Whether the server tells a transaction's snapshot position (MariaDB's binlog_snapshot_file)."""
    with contextlib.suppress(Exception):
        return query_one(connection, "SHOW GLOBAL STATUS LIKE 'binlog_snapshot_file'") is not None
    return False


def relay_target(settings) -> str:
    if settings.socket:
        return f"unix:{settings.socket}"
    return f"tcp:{settings.host or 'localhost'}:{settings.port or 3306}"


class Relay:
    """The relay process seen from before-backup: started (and listening) before the freeze,
    it tells mysqldump's thread id once mysqldump has connected."""

    def __init__(self, staging: Path, settings, seconds: float, stall: float):
        # A private directory, reached by mysqldump as /proc/self/fd/N/s through a descriptor it
        # inherits: a socket's path must fit 107 bytes, a deep runtime_dir need not.
        self.directory = Path(tempfile.mkdtemp(prefix="relay.", dir=staging))
        self.dir_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY)
        read_fd, write_fd = os.pipe()
        self.lines, self.pending, self.thread_id, self.stalled_after = read_fd, b"", None, None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", relay_process.__file__, relay_target(settings), str(os.getpid()), str(seconds),
                 str(stall)],
                stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.DEVNULL, cwd=self.directory,
                start_new_session=True,
            )
        except BaseException:
            self.close()
            raise
        finally:
            os.close(write_fd)
        ready = self._read_line(time.monotonic() + _START_SECONDS)
        if ready != "listening":
            self.close()
            raise EmgBorgError(f"the relay for mysqldump's connection did not start ({ready or 'no answer'})")

    @property
    def pass_fds(self) -> tuple:
        return (self.dir_fd,)

    def mysqldump_options(self) -> tuple:
        """Last on mysqldump's command line, so they win over any connection option before them."""
        return "--protocol=socket", "--host=localhost", f"--socket=/proc/self/fd/{self.dir_fd}/{relay_process.SOCKET_NAME}"

    def _read_line(self, deadline: float | None = None) -> str | None:
        """The relay's next line; None when there is none yet (or by `deadline`)."""
        while b"\n" not in self.pending:
            wait = max(0.0, deadline - time.monotonic()) if deadline else 0
            if not select.select([self.lines], [], [], wait)[0]:
                return None
            chunk = os.read(self.lines, 4096)
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode(errors="replace")

    def session(self) -> int | None:
        """mysqldump's thread id, once the relay has reported it."""
        while self.thread_id is None and (line := self._read_line()) is not None:
            self._take(line)
        return self.thread_id

    def stalled(self) -> float | None:
        """The seconds after which the relay ended a connection that had stalled, else None."""
        while self.stalled_after is None and self.lines >= 0 and (line := self._read_line()) is not None:
            self._take(line)
        return self.stalled_after

    def _take(self, line: str) -> None:
        kind, _, text = line.partition(" ")
        if kind == "thread":
            self.thread_id = int(text)
            logger.debug("mysqldump's session is thread %d", self.thread_id)
        elif kind == "stalled":
            self.stalled_after = float(text)
        elif kind == "error" and self.thread_id is None:
            raise EmgBorgError(f"mysqldump's connection to the server failed: {text}")

    def detach(self) -> None:
        """Leave the relay to mysqldump's connection (a streamed dump outlives before-backup)."""
        for fd in (self.dir_fd, self.lines):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.dir_fd = self.lines = -1

    def close(self, wait: float = 0) -> None:
        """Stop the relay (after `wait` seconds for it to end by itself) and remove its directory."""
        process = getattr(self, "process", None)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.detach()
        with contextlib.suppress(OSError):
            remove_tree(self.directory)


class DumpWatch:
    """Decides when the dump's transaction snapshot has begun, looking at the dump's own session."""

    def __init__(self, connection, relay: Relay):
        self.connection, self.relay = connection, relay
        self.next_trx_check = time.monotonic()

    def started(self) -> str | None:
        """What proves that the snapshot has begun, or None while nothing does yet."""
        session = self.relay.session()
        if session is None:
            return None
        row = query_one(self.connection, "SELECT COMMAND, INFO FROM information_schema.PROCESSLIST WHERE ID = %s",
                        (session,))
        if row:
            command, info = row
            if command == "Init DB":
                return f"Init DB seen on {_SESSION}"
            statement = (info or "").lstrip().upper()
            for after in _AFTER_SNAPSHOT:
                if statement.startswith(after):
                    return f"{after} seen on {_SESSION}"
        if time.monotonic() >= self.next_trx_check:
            self.next_trx_check = time.monotonic() + _TRX_CACHE_SECONDS
            if query_one(self.connection, "SELECT 1 FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %s",
                         (session,)):
                return f"an InnoDB transaction seen on {_SESSION}"
        return None
