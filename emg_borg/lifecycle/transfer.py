"""How this run's dumps reach borg: streamed through a named pipe, or staged as files.

Streaming keeps on disk only what borg has not read yet (`core.dump_buffer`), but it works only
when borg reads the pipe: `read_special: true` (else borg stores the pipe itself), one repository
per run (each repository's `borg create` needs the whole dump), and no borgmatic database hooks
with path validation on (borgmatic then excludes named pipes it did not make). With borgmatic's
`retries` the whole dump is kept until the run ends, so that a retried `borg create` reads it
again. `[backup] stream_dumps` decides (auto, always, never); the reason is logged and shown by
`before-backup --dry-run`.

Whatever the transfer, borgmatic's own roots (`source_directories`, `patterns`, other
`patterns_from` files) must not cover `runtime_dir`: borg would reach emg-borg's named pipes and
snapshot mounts a second time (`overlaps`).

`read_special` makes borg read every FIFO and device it meets, so `special_files` finds those in
the archived EMG tree, and the patterns file excludes them (as borgmatic does for its own hooks).
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from emg_borg.lifecycle.repository import read_borgmatic_config

SKIP_VALIDATION = "unsafe_skip_path_validation_before_create"


def special_files(top: str) -> list[str]:
    """Every FIFO and device (or symlink to one) under `top`: borg --read-special would open it
    and wait, or read a device to its end. Regular files and directories cost no stat."""
    found = []
    try:
        entries = list(os.scandir(top))
    except OSError:
        return found
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                found += special_files(entry.path)
            elif not entry.is_file(follow_symlinks=False):
                mode = os.stat(entry.path).st_mode  # follows a symlink, as borg --read-special does
                if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    found.append(entry.path)
        except OSError:
            continue
    return found


@functools.lru_cache(maxsize=4)
def _config(path) -> dict:
    """The borgmatic configuration, parsed once per process (before-backup asks several times)."""
    return read_borgmatic_config(path)


def borgmatic_obstacles(path) -> list[str]:
    """What in the borgmatic configuration keeps borg from reading a streamed dump."""
    config = _config(path)
    found = []
    if config.get("read_special") is not True:
        found.append(f"{path} does not set read_special: true (borg would store the named pipe, not the dump)")
    repositories = config.get("repositories") or []
    if len(repositories) > 1:
        found.append(f"{path} lists {len(repositories)} repositories: a named pipe is read once, and each "
                     f"repository's borg create needs the dump")
    hooks = sorted(key for key, value in config.items() if key.endswith("_databases") and value)
    if hooks and not config.get(SKIP_VALIDATION):
        found.append(f"{path} has borgmatic database hooks ({', '.join(hooks)}): borgmatic then excludes named "
                     f"pipes it did not make")
    return found


def retries(path) -> int:
    """borgmatic's `retries` of a failed `borg create` (0 when unset)."""
    value = _config(path).get("retries") or 0
    return value if isinstance(value, int) and value > 0 else 0


def _roots_of(config: dict, own_patterns: Path) -> list[tuple[str, str]]:
    """(where, root) of every root borgmatic hands borg besides emg-borg's patterns file."""
    found = [("source_directories", str(entry)) for entry in config.get("source_directories") or []]
    lines = [("patterns", str(line)) for line in config.get("patterns") or []]
    for name in config.get("patterns_from") or []:
        path = Path(os.path.expandvars(str(name)))
        if os.path.normpath(path) == str(own_patterns):
            continue
        try:
            lines += [(f"patterns_from {path}", line) for line in path.read_text().splitlines()]
        except OSError:
            continue  # borgmatic says so itself when it runs
    for where, line in lines:
        kind, _, root = line.strip().partition(" ")
        if kind in ("R", "P") and root and not root.startswith(("sh:", "re:", "fm:", "pp:", "pf:")):
            found.append((where, root))
        elif kind == "R" and root.startswith(("pp:", "pf:")):
            found.append((where, root[3:]))
    return found


def overlaps(runtime_dir: Path, path, own_patterns: Path) -> list[str]:
    """Each borgmatic root that covers runtime_dir: borg would reach emg-borg's named pipes (and
    the snapshot mounts) twice, once through that root and once through emg-borg's."""
    config, runtime_dir = _config(path), Path(os.path.normpath(runtime_dir))
    found = []
    for where, root in _roots_of(config, own_patterns):
        covered = Path(os.path.normpath(os.path.expandvars(root).replace("/./", "/")))
        if covered.is_absolute() and (covered == runtime_dir or covered in runtime_dir.parents):
            found.append(f"[backup] runtime_dir {runtime_dir} lies inside {root!r} ({where} of {path}): borg would "
                         f"read emg-borg's named pipes and snapshot mounts a second time; narrow that entry or move "
                         f"runtime_dir out of it")
    return found


def choose(run, borgmatic_config) -> tuple[bool, str, list[str]]:
    """(stream?, why, preflight problems): problems only when streaming was demanded and cannot work."""
    setting = run.config["backup"]["stream_dumps"]
    if setting == "never":
        return False, '[backup] stream_dumps = "never"', []
    obstacles = borgmatic_obstacles(borgmatic_config) if borgmatic_config else []
    if not borgmatic_config and setting == "auto":
        obstacles.append("before-backup has no --borgmatic-config to show that borg will read a named pipe")
    if not obstacles:
        why = (f"{borgmatic_config}: read_special, one repository" if borgmatic_config
               else '[backup] stream_dumps = "always"')
        if borgmatic_config and (count := retries(borgmatic_config)):
            why += (f"; retries: {count}, so the whole dump stays on disk until the run ends and a retried borg "
                    f"create reads it again")
        return True, why, []
    if setting == "always":
        return True, "[backup] stream_dumps = \"always\"", [f"[backup] stream_dumps = \"always\": {o}" for o in obstacles]
    return False, obstacles[0], []


def describe(streaming: bool, why: str) -> str:
    return f"dumps stream into borg through a named pipe ({why})" if streaming else f"dumps staged as files ({why})"

