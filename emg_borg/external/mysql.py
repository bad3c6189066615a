"""MySQL/MariaDB: a held PyMySQL connection, mysqldump and the mysql client.

Passwords never reach a command line: mysqldump and mysql read them from an anonymous pipe given
as `--defaults-extra-file=/dev/fd/N` (the way borgmatic does it), and PyMySQL gets them in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import threading

from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external.execute import describe, die_with_parent, last_line

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where and how to connect. `password` is kept out of repr so it never lands in a log."""

    host: str | None
    port: int | None
    socket: str | None
    user: str | None
    database: str
    password: str | None = dataclasses.field(default=None, repr=False)

    def describe(self) -> str:
        where = self.socket if self.socket else f"{self.host or 'localhost'}:{self.port or 3306}"
        return f"{self.user or '(default user)'}@{where}/{self.database}"


def connect(conn: Connection, connect_timeout: float = 10, read_timeout: float | None = None):
    """A PyMySQL connection; connection and login errors become one clear `EmgBorgError`. With
    `read_timeout`, a statement whose answer takes longer fails (the server stopped answering)."""
    import pymysql

    kwargs = dict(
        user=conn.user or "", password=conn.password or "", database=conn.database,
        connect_timeout=connect_timeout, autocommit=True, charset="utf8mb4",
        read_timeout=read_timeout, write_timeout=read_timeout,
    )
    if conn.socket:
        kwargs["unix_socket"] = conn.socket
    else:
        kwargs.update(host=conn.host or "localhost", port=conn.port or 3306)
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.OperationalError as error:
        code, message = (error.args + ("",))[:2]
        raise EmgBorgError(f"cannot connect to MySQL {conn.describe()}: {message} (error {code})")
    except pymysql.err.MySQLError as error:
        raise EmgBorgError(f"cannot connect to MySQL {conn.describe()}: {error}")


def _defaults_text(conn: Connection) -> str:
    lines = ["[client]"]
    if conn.user:
        lines.append(f"user={conn.user}")
    if conn.password is not None:
        # Quoted so that '#', ';' and spaces in a password survive option-file parsing.
        escaped = conn.password.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'password="{escaped}"')
    if conn.socket:
        lines.append(f"socket={conn.socket}")
    else:
        lines.append(f"host={conn.host or 'localhost'}")
        lines.append(f"port={conn.port or 3306}")
        lines.append("protocol=tcp")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def defaults_pipe(conn: Connection):
    """Yield (option, fd): a `--defaults-extra-file=/dev/fd/N` option and the fd to pass on.

    The credentials go through a pipe, so they are never on disk and never in argv. A thread
    writes them, so a large text cannot block on a full pipe buffer.
    """
    read_fd, write_fd = os.pipe()
    text = _defaults_text(conn).encode()

    def feed():
        with os.fdopen(write_fd, "wb") as pipe:
            with contextlib.suppress(BrokenPipeError):
                pipe.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield f"--defaults-extra-file=/dev/fd/{read_fd}", read_fd
    finally:
        os.close(read_fd)
        writer.join(timeout=5)


def mysqldump_argv(mysqldump: str, defaults_option: str, database: str, extra_options=(), connect_options=()) -> tuple:
    # --defaults-extra-file must come first. --single-transaction gives a consistent InnoDB
    # snapshot without locking; --routines/--triggers/--events keep the schema complete. No
    # --databases: the dump then has no USE statement and loads into whichever database the
    # restore names (a scratch database in a drill must never write into the live one).
    # --skip-dump-date and --order-by-primary make an unchanged database give a byte-identical
    # dump, so borg stores nothing new for it (the date in the footer alone changed its last chunk).
    # `connect_options` come last: they win over a connection option among the extra ones.
    return (
        mysqldump, defaults_option, "--single-transaction", "--quick", "--routines", "--triggers",
        "--events", "--hex-blob", "--default-character-set=utf8mb4", "--skip-dump-date", "--order-by-primary",
        *extra_options, *connect_options, "--", database,
    )


class Dump:
    """A running mysqldump writing into `path`. `finish()` waits and checks it completed."""

    FOOTER = b"-- Dump completed"

    def __init__(self, argv: tuple, path, pass_fds, database: str):
        self.argv, self.path, self.database = argv, path, database
        logger.debug("running: %s > %s", describe(argv), path)
        # Created afresh and private from the start; never through a link planted in its place.
        self._out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      0o600), "wb")
        try:
            # A group of its own, recorded in the ledger: whoever releases the run can stop it (and
            # any wrapper's children) even after this process was killed; and killed with this
            # process, it dies too (the moment between its start and the ledger's record).
            self.process = subprocess.Popen(
                argv, stdout=self._out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, pass_fds=pass_fds,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        except FileNotFoundError:
            self._out.close()
            raise CommandError(f"{argv[0]}: command not found (install the MariaDB/MySQL client)")

    def poll(self):
        return self.process.poll()

    def wrote_footer(self) -> bool:
        """Whether the dump file already ends with mysqldump's completion line (a small dump can
        be complete before its process has exited)."""
        return _ends_with_footer(self.path, self.FOOTER)

    def finish(self, progress=None):
        """Wait for mysqldump; raise unless it exited 0 and wrote its completion footer."""
        stderr_lines: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(self.process.stderr), daemon=True)
        reader.start()
        while True:
            try:
                self.process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if progress:
                    progress(os.path.getsize(self.path))
        reader.join(timeout=5)
        self._out.close()
        stderr = b"".join(stderr_lines).decode(errors="replace")
        if self.process.returncode != 0:
            full = " (no space left on device where the dump is staged, " + str(os.path.dirname(self.path)) + ")" \
                if "errno 28" in stderr.lower() else ""
            raise CommandError(
                f"mysqldump of {self.database} failed (exit {self.process.returncode}): "
                f"{last_line(stderr) or 'no error output'}{full}",
                self.process.returncode, stderr,
            )
        if not _ends_with_footer(self.path, self.FOOTER):
            raise CommandError(f"mysqldump of {self.database} is incomplete: no '-- Dump completed' line at its end")
        for line in stderr.splitlines():
            if line.strip():
                logger.warning("mysqldump: %s", line.strip())

    def abort(self):
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._out.close()


def _ends_with_footer(path, footer: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 512))
        return footer in f.read()


def load_dump(mysql: str, conn: Connection, path, database: str | None = None):
    """Load a SQL dump with the mysql client (password through a pipe)."""
    with defaults_pipe(conn) as (option, fd), open(path, "rb") as dump:
        argv = (mysql, option, "--batch", *((database,) if database else ()))
        logger.debug("running: %s < %s", describe(argv), path)
        try:
            result = subprocess.run(argv, stdin=dump, capture_output=True, pass_fds=(fd,))
        except FileNotFoundError:
            raise CommandError(f"{mysql}: command not found (install the MariaDB/MySQL client)")
    if result.returncode != 0:
        raise CommandError(
            f"loading {path} failed (exit {result.returncode}): {last_line(result.stderr.decode(errors='replace'))}",
            result.returncode,
        )
