"""How this run's dumps reach borg: streamed through a named pipe, or staged as files.

Streaming needs no disk for the dump, but it works only when borg reads the pipe exactly once:
`read_special: true` (else borg stores the pipe itself), one repository per run (a second `borg
create` would find the pipe gone), and no borgmatic database hooks with path validation on
(borgmatic then excludes named pipes it did not make). `[backup] stream_dumps` decides (auto,
always, never); the reason is logged and shown by `before-backup --dry-run`.

`read_special` makes borg read every FIFO and device it meets, so `special_files` finds those in
the archived EMG tree, and the patterns file excludes them (as borgmatic does for its own hooks).
"""

from __future__ import annotations

import os
import stat

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


def borgmatic_obstacles(path) -> list[str]:
    """What in the borgmatic configuration keeps borg from reading a streamed dump once."""
    config = read_borgmatic_config(path)
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
        return True, why, []
    if setting == "always":
        return True, "[backup] stream_dumps = \"always\"", [f"[backup] stream_dumps = \"always\": {o}" for o in obstacles]
    return False, obstacles[0], []


def describe(streaming: bool, why: str) -> str:
    return f"dumps stream into borg through a named pipe ({why})" if streaming else f"dumps staged as files ({why})"

