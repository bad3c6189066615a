"""borg 1.4: listing archives, reading one file of an archive, extracting with patterns; the
version of a borg.

Errors become one line: borg's own last error line (e.g. "Repository ... does not exist.",
"passphrase supplied in BORG_PASSPHRASE ... is incorrect"). Every wrapper takes an optional `env`
for the borg process, which is how a passphrase taken from a borgmatic configuration reaches borg
without appearing in argv.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable

from emg_borg.core.backup_tool import Extracted
from emg_borg.errors import CommandError
from emg_borg.external.execute import describe, last_line, run, stated_version

logger = logging.getLogger(__name__)

BORG = "borg"


def _error(what: str, result) -> CommandError:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    return CommandError(f"{what} failed (exit {result.returncode}): {error_line(stderr) or 'no error output'}", result.returncode, stderr)


def error_line(stderr: str, levels=("ERROR", "CRITICAL")) -> str:
    """borg's last error (or message of `levels`), from plain or `--log-json` output."""
    errors = []
    for line in stderr.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "log_message" and message.get("levelname") in levels:
            errors.append(message.get("message", "").strip())
    return errors[-1] if errors else last_line(stderr)


def version(command=(BORG,)) -> str:
    """The version `command --version` states ("1.2.4", "1.4.0", "2.0.0b14"); `command` is the
    borg executable, with any words borgmatic's `local_path` puts after it."""
    return stated_version((*command, "--version"), r"\b(\d+\.\d+(?:\.\d+)?\S*)")


def list_repository(repository: str, env=None, glob: str | None = None) -> dict:
    """`borg list --json` of a repository: `repository` (with its `id`) and `archives`, oldest
    first, each with `name`, `id`, `start`, `time`; with `glob`, only archives whose names match it."""
    argv = (BORG, "list", "--json", *(("--glob-archives", glob) if glob else ()), repository)
    result = run(argv, check=False, env=env)
    if result.returncode != 0:
        raise _error(f"borg list {repository}", result)
    return json.loads(result.stdout)


def list_archives(repository: str, env=None, glob: str | None = None) -> list[dict]:
    """Archives of a repository, oldest first, each with `name`, `start`, `time`, `id`."""
    return list_repository(repository, env, glob)["archives"]


def list_items(repository: str, archive: str, patterns_from=None, env=None, paths=()) -> list[dict]:
    """The items of an archive that a patterns file (or `paths`) selects, as `borg list
    --json-lines` gives them."""
    patterns = ("--patterns-from", str(patterns_from)) if patterns_from else ()
    argv = (BORG, "list", "--json-lines", *patterns, f"{repository}::{archive}", *paths)
    result = run(argv, check=False, env=env)
    if result.returncode != 0:
        raise _error(f"borg list {archive}", result)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def extract(repository: str, archive: str, patterns_from, destination, progress: Callable | None = None,
            env=None) -> Extracted:
    """Extract what a patterns file selects into `destination` (borg extracts into its working
    directory). `progress(message)` receives each `progress_percent` message of borg's
    `--log-json` output. Exit 1 (warnings) is returned as `Extracted.warnings`, for the caller to
    report as a failure; other non-zero exits raise."""
    argv = (BORG, "--log-json", "extract", "--list", "--progress", "--patterns-from", str(patterns_from),
            f"{repository}::{archive}")
    logger.debug("running: %s (in %s)", describe(argv), destination)
    try:
        process = subprocess.Popen(
            argv, cwd=destination, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
    except FileNotFoundError:
        raise CommandError(f"{BORG}: command not found (install borgbackup 1.4)")
    items, other, warnings = 0, [], []
    for line in process.stderr:
        try:
            message = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if message.get("type") == "progress_percent" and progress is not None:
            progress(message)
        elif message.get("name") == "borg.output.list":
            items += 1
        else:
            other.append(line)
            if message.get("type") == "log_message" and message.get("levelname") == "WARNING":
                warnings.append(" ".join(str(message.get("message", "")).split()))
    process.wait()
    if process.returncode not in (0, 1):
        raise CommandError(
            f"borg extract {archive} failed (exit {process.returncode}): {error_line(''.join(other)) or 'no error output'}",
            process.returncode, "".join(other),
        )
    if process.returncode == 1:  # a warning: a file that could not be written, opened, chowned...
        warnings = warnings or [error_line("".join(other), ("WARNING",)) or "borg exited 1 (warning) without saying why"]
        for warning in warnings:
            logger.warning("borg extract %s: %s", archive, warning)
    return Extracted(items, warnings if process.returncode == 1 else [])


def read_file(repository: str, archive: str, path: str, env=None) -> bytes | None:
    """The content of one file of an archive, or None when the archive has no such file."""
    argv = (BORG, "extract", "--stdout", f"{repository}::{archive}", path)
    logger.debug("running: %s", describe(argv))
    result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env)
    if result.returncode == 0:
        return result.stdout
    stderr = result.stderr.decode(errors="replace")
    if "never matched" in stderr:
        return None
    raise _error(f"borg extract {path} from {archive}", result)
