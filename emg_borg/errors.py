"""Errors that reach the user as one line and an exit code.

Every error emg-borg raises on purpose is an `EmgBorgError`. The command line prints its message
on one line and exits with its `exit_code`: 2 for bad usage or configuration (nothing was
attempted), 1 for a failure while doing the work (everything started has been released).

A line stays short whatever the input held: the command line cuts every line it prints to
`LINE_LIMIT` characters, and messages quote values through `shortened`/`quoted`, which keep a
long value's head and tail and say how long it was.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Characters of the longest line the command line prints: a message naming three long paths stays
# whole, a 5 MB value does not make a 5 MB line.
LINE_LIMIT = 1000  # one line, however many repositories an archive warning names
VALUE_LIMIT = 80  # characters: the longest value (a path, a server.cfg setting) a message quotes whole
_SHORTEST = 40  # the least `limit` a shortened text keeps to: room for the length marker and some text


def shortened(text: str, limit: int = VALUE_LIMIT) -> str:
    """`text` itself when it has at most `limit` characters; else its head and tail around its
    length, `/very/long/pa…(5,242,880 characters)…/end`, in at most `limit` characters (a `limit`
    below 40 counts as 40)."""
    if len(text) <= limit:
        return text
    marker = f"…({len(text):,} characters)…"
    room = max(max(limit, _SHORTEST) - len(marker), 2)
    head = (room + 1) // 2
    return text[:head] + marker + text[len(text) - (room - head):]


def quoted(value, limit: int = VALUE_LIMIT) -> str:
    """A value as a message quotes it, `'/very/long/pa…(5,242,880 characters)…/end'`: the repr of
    a string (control characters visible) shortened to `limit` characters before quoting."""
    if isinstance(value, str):
        return repr(shortened(value, limit))
    return shortened(repr(value), limit)  # bytes or a file descriptor (an OSError's filename)


def describe(error: BaseException) -> str:
    """An exception as one line of at most LINE_LIMIT characters; an OSError's file names
    shortened (`[Errno 36] File name too long: '/x/aaa…(5,242,883 characters)…aa/b'`)."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"[Errno {error.errno}] {error.strerror}: {quoted(error.filename)}"
        if error.filename2 is not None:
            text += f" -> {quoted(error.filename2)}"
    else:
        text = str(error) or type(error).__name__
    return shortened(" ".join(text.splitlines()), LINE_LIMIT)


class EmgBorgError(Exception):
    exit_code = EXIT_FAILURE

    def __init__(self, *args):
        super().__init__(*args)
        self.further: list[str] = []  # more lines for the user, after this one (e.g. what a cleanup could not do)


class UsageError(EmgBorgError):
    """Bad command-line input: an unknown category, a date that does not parse, ..."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file is wrong. Names the file, and the line and key when known."""

    def __init__(self, message: str, path=None, line: int | None = None, key: str | None = None):
        self.path, self.line, self.key, self.detail = path, line, key, message
        where = ""
        if path is not None:
            shown = shortened(str(path), LINE_LIMIT // 2)  # a 10,000-character -c PATH: its head and file name
            where = f"{shown}:{line}: " if line else f"{shown}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")
        self.problems: list[ConfigError] = [self]


class CommandError(EmgBorgError):
    """An external command failed. Carries the command name and the tail of its stderr."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        self.returncode, self.stderr = returncode, stderr
        super().__init__(message)


class LockedError(EmgBorgError):
    """Another emg-borg run holds the run lock."""


class ConfigErrors(ConfigError):
    """Several problems in one configuration file: each is a `ConfigError` of its own line."""

    def __init__(self, errors: list[ConfigError]):
        first = errors[0]
        super().__init__(first.detail, first.path, first.line, first.key)
        self.problems = list(errors)
        self.args = ("\n".join(str(e) for e in errors),)
