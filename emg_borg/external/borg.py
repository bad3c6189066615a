"""borg 1.4: listing archives, reading one file of an archive, extracting with patterns.

Errors become one line: borg's own last error line (e.g. "Repository ... does not exist.",
"passphrase supplied in BORG_PASSPHRASE ... is incorrect").
"""

from __future__ import annotations

import json
import logging
import subprocess

from emg_borg.errors import CommandError
from emg_borg.external.execute import describe, last_line, run

logger = logging.getLogger(__name__)

BORG = "borg"


def _error(what: str, result) -> CommandError:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    return CommandError(f"{what} failed (exit {result.returncode}): {last_line(stderr) or 'no error output'}", result.returncode, stderr)


def list_archives(repository: str) -> list[dict]:
    """Archives of a repository, oldest first, each with `name`, `start`, `time`, `id`."""
    result = run((BORG, "list", "--json", repository), check=False)
    if result.returncode != 0:
        raise _error(f"borg list {repository}", result)
    return json.loads(result.stdout)["archives"]


def read_file(repository: str, archive: str, path: str) -> bytes | None:
    """The content of one file of an archive, or None when the archive has no such file."""
    argv = (BORG, "extract", "--stdout", f"{repository}::{archive}", path)
    logger.debug("running: %s", describe(argv))
    result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode == 0:
        return result.stdout
    stderr = result.stderr.decode(errors="replace")
    if "never matched" in stderr:
        return None
    raise _error(f"borg extract {path} from {archive}", result)
