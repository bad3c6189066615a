"""Errors that reach the user as one line and an exit code.

Every error emg-borg raises on purpose is an `EmgBorgError`. The command line prints its message
on one line and exits with its `exit_code`: 2 for bad usage or configuration (nothing was
attempted), 1 for a failure while doing the work (everything started has been released).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


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
            where = f"{path}:{line}: " if line else f"{path}: "
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
