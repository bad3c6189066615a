"""The borg that borgmatic will run, and whether it is new enough for emg-borg's patterns file.

The patterns file roots emg-borg's members with `/./` (`R /var/lib/emg-borg/staging/./emg-borg/…`,
`R /var/lib/emg-borg/snapshots/…/./var/spool/emg`), which borg 1.4 reads as "archive the part
after /./". borg 1.2 (Debian 12's and Ubuntu 24.04's package) takes the roots literally: it
archives `seqno` under the staging path and the spool under the snapshot's path, and restore finds
neither. A silent wrong archive, so before-backup refuses such a borg before it takes anything.

The borg is borgmatic's `local_path` (default `borg`; borgmatic splits it on spaces and runs the
first word), resolved on this process's PATH: the hooks are borgmatic's children and inherit its
PATH. Asking a borg its version starts a Python (0.3 s), so the answer is cached in emg-borg's
cache directory, keyed by the executable's path, size, modification and change time and inode.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil

from emg_borg.core.files import write_private
from emg_borg.errors import CommandError
from emg_borg.external import borg
from emg_borg.lifecycle.manifest_cache import cache_dir
from emg_borg.lifecycle.repository import read_borgmatic_config

logger = logging.getLogger(__name__)

NEEDED = (1, 4)
WHERE_TO_GET = ("install it from bookworm-backports (borg 1.4.0), Debian 13, or PyPI "
                "(pip install 'borgbackup>=1.4')")
NEEDS = f"emg-borg needs borg >= 1.4 for its /./ paths; {WHERE_TO_GET}"
CACHE_NAME = "borg-versions.json"
CACHE_ENTRIES = 16  # a machine has few borgs; older entries are dropped


@dataclasses.dataclass(frozen=True)
class Borg:
    """The borg borgmatic runs: its command (local_path's words), where that was set, and the
    executable found for its first word (None: not found)."""

    command: tuple[str, ...]
    source: str  # "borgmatic's local_path" or "on PATH"
    executable: str | None

    @property
    def shown(self) -> str:
        return " ".join((self.executable or self.command[0], *self.command[1:]))


def borg_to_run(borgmatic_config=None) -> Borg:
    """borgmatic's `local_path` (top level, or under `location:` in a sectioned 1.x
    configuration; `${VARIABLES}` in it expanded, as borgmatic does), else `borg`, found on PATH
    as borgmatic would find it."""
    local_path = read_borgmatic_config(borgmatic_config).get("local_path") if borgmatic_config else None
    command = tuple(word for word in os.path.expandvars(str(local_path)).split(" ") if word) if local_path else ()
    source = "borgmatic's local_path" if command else "on PATH"
    command = command or (borg.BORG,)
    return Borg(command, source, shutil.which(command[0]))


def _identity(path: str) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _read_cache() -> dict:
    try:
        data = json.loads((cache_dir() / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict) -> None:
    """A cache that cannot be written only makes the next run ask borg again."""
    path = cache_dir() / CACHE_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, json.dumps(dict(list(entries.items())[-CACHE_ENTRIES:]), indent=1))
    except OSError as error:
        logger.debug("cannot write the borg version cache %s: %s", path, error)


def version(found: Borg) -> str:
    """The version of the borg found (raises CommandError when it does not answer)."""
    key = " ".join((os.path.realpath(found.executable), *found.command[1:]))
    identity = _identity(found.executable)
    entries = _read_cache()
    cached = entries.get(key)
    if isinstance(cached, dict) and cached.get("identity") == identity and isinstance(cached.get("version"), str):
        return cached["version"]
    stated = borg.version((found.executable, *found.command[1:]))
    entries.pop(key, None)
    entries[key] = {"identity": identity, "version": stated}
    _write_cache(entries)
    return stated


def new_enough(stated: str) -> bool:
    return tuple(int(part) for part in re.findall(r"\d+", stated)[:2]) >= NEEDED


def check(borgmatic_config=None) -> tuple[str | None, str]:
    """(the problem in one line or None, what was found): a borg that is missing, does not
    answer, or is older than 1.4 is a problem."""
    found = borg_to_run(borgmatic_config)
    if found.executable is None:
        where = "not found on PATH" if found.source == "on PATH" else f"{found.command[0]} ({found.source}) not found"
        return f"borg: {where}; {NEEDS}", ""
    try:
        stated = version(found)
    except (CommandError, OSError) as error:
        return f"borg {found.shown} ({found.source}) does not work: {error}; {NEEDS}", ""
    described = f"borg {stated} ({found.shown}, {found.source})"
    if not new_enough(stated):
        return f"{described} is too old: {NEEDS}", described
    return None, described
