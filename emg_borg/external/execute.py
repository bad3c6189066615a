"""Running external commands: logged, with one clear error line when they fail."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import shlex
import signal
import subprocess
import time

from emg_borg.errors import CommandError

logger = logging.getLogger(__name__)

# While a bounded step runs (the consistency point), every command must end by this moment
# (time.monotonic()); a command still running then is killed.
_deadline: list[float] = []


@contextlib.contextmanager
def deadline(at: float | None):
    """Give every command run inside the block until `at` (time.monotonic()) at the latest."""
    if at is None:
        yield
        return
    _deadline.append(at)
    try:
        yield
    finally:
        _deadline.remove(at)


def _bounded(timeout: float | None, shown: str) -> float | None:
    if not _deadline:
        return timeout
    left = min(_deadline) - time.monotonic()
    if left <= 0:
        raise CommandError(f"{shown}: not started, the time limit of this step is over")
    return left if timeout is None else min(timeout, left)


def describe(argv) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""

_PR_SET_PDEATHSIG = 1
try:  # resolved before any fork: the child only calls it
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_parent() -> None:
    """In a child, before exec: the kernel kills it when emg-borg dies (even by SIGKILL)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run(argv: tuple, *, input: str | None = None, env=None, pass_fds=(), check=True, timeout=None,
        what: str | None = None, secret_args: bool = False, dies_with_us: bool = False) -> subprocess.CompletedProcess:
    """Run `argv` and return the completed process with text stdout/stderr.

    A missing executable or a non-zero exit (when `check`) raises `CommandError` whose message
    names the command and the last line of its error output.
    """
    argv = tuple(str(a) for a in argv)
    shown = argv[0] + (" ..." if len(argv) > 1 else "") if secret_args else describe(argv)  # arguments may hold a password
    logger.debug("running: %s", shown)
    timeout = _bounded(timeout, shown)
    try:
        result = subprocess.run(
            argv, input=input, env=env, pass_fds=pass_fds, capture_output=True, text=True,
            timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL,
            preexec_fn=die_with_parent if dies_with_us else None,
        )
    except FileNotFoundError:
        raise CommandError(f"{argv[0]}: command not found (is it installed and on PATH?)")
    except subprocess.TimeoutExpired:
        raise CommandError(f"{what or argv[0]} timed out after {timeout:.3g} s and was stopped: {shown}")
    if check and result.returncode != 0:
        reason = last_line(result.stderr) or last_line(result.stdout) or "no error output"
        raise CommandError(
            f"{what or shown} failed (exit {result.returncode}): {reason}",
            result.returncode, result.stderr,
        )
    return result


def stated_version(argv: tuple, pattern: str) -> str:
    """The version a command states (the first group of `pattern` in its output), e.g. of
    `borg --version` or `restic version`; raises CommandError when it fails or states none."""
    result = run(argv, check=False, timeout=30)
    found = re.search(pattern, result.stdout)
    if result.returncode != 0 or not found:
        said = last_line(result.stderr) or last_line(result.stdout) or "no output"
        raise CommandError(f"{describe(argv)} failed (exit {result.returncode}): {said}", result.returncode,
                           result.stderr)
    return found.group(1)
