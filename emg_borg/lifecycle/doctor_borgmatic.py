"""`emg-borg doctor --borgmatic-config FILE`: the borgmatic side of the integration.

The integration is two things in borgmatic's configuration (see borgmatic-example.yaml): a
`patterns_from` naming the patterns file before-backup writes, and the three hooks at the right
places (`before: action` / `after: action` / `after: error` in 2.x; `before_backup`,
`after_backup`, `on_error` in 1.x). Then the repository it names: reachable, with the newest
emg-borg archive, whose dump size tells how much room the next dump needs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from emg_borg.config import DEFAULT_CONFIG_PATH
from emg_borg.errors import EmgBorgError, UsageError
from emg_borg.lifecycle import archives, transfer
from emg_borg.lifecycle.checks import FAIL, OK, WARN, Check
from emg_borg.lifecycle.repository import load_yaml

PHASES = ("before-backup", "after-backup", "on-error")
# borgmatic 2.x: where each hook may run (around each action, or once around the whole file);
# borgmatic 1.x: the lists it may be in. The first is the one borgmatic-example.yaml uses.
PLACES_2 = {"before-backup": (("before", "action"), ("before", "configuration")),
            "after-backup": (("after", "action"), ("after", "configuration")), "on-error": (("after", "error"),)}
LISTS_1 = {"before-backup": ("before_backup", "before_everything"), "after-backup": ("after_backup", "after_everything"),
           "on-error": ("on_error",)}
EXAMPLE_2 = {"before-backup": "- before: configuration, when: [create]", "after-backup": "- after: configuration, "
             "when: [create], states: [finish]", "on-error": "- after: error"}


def checks(path, run, config_path) -> tuple[list[Check], int | None]:
    """The checks of borgmatic configuration `path`, and the last archived dump's size if found."""
    try:
        data = load_yaml(Path(path)) or {}
    except OSError as error:
        return [Check("borgmatic", FAIL, f"cannot read {path}: {error.strerror}")], None
    except Exception as error:  # noqa: BLE001 - both YAML libraries raise their own error types
        return [Check("borgmatic", FAIL, f"cannot parse {path}: {str(error).splitlines()[0]}")], None
    # borgmatic 1.x nested options in sections; 2.x keeps them at the top level.
    sections = [data] + [data.get(k) or {} for k in ("location", "storage", "hooks") if isinstance(data.get(k), dict)]
    found = [patterns_check(path, sections, run.runtime.patterns)]
    found += hook_checks(path, data, sections, Path(config_path))
    found.append(transfer_check(path, run, data, sections))
    found.append(overlap_check(path, run))
    repository, last_dump = repository_check(path)
    return found + [repository], last_dump


def transfer_check(path, run, data, sections) -> Check:
    """Whether the dump will stream into borg or be staged under runtime_dir (a warning: staging
    works, but needs free disk as large as the dump)."""
    if run.config["backup"]["stream_dumps"] == "never":
        return Check("dumps", OK, 'staged as files under runtime_dir ([backup] stream_dumps = "never")')
    try:
        obstacles = transfer.borgmatic_obstacles(path)
    except UsageError as error:
        obstacles = [str(error)]
    before = [command for command, _, _ in _hooks(data, sections)["before-backup"]]
    if before and not any("--borgmatic-config" in command for command in before):
        obstacles.insert(0, f"{path}: its before-backup hook passes no --borgmatic-config {{configuration_filename}}")
    if obstacles and run.config["backup"]["stream_dumps"] == "always":
        return Check("dumps", FAIL, f'[backup] stream_dumps = "always", but {obstacles[0]}')
    if obstacles:
        return Check("dumps", WARN, f"staged as files under runtime_dir, not streamed: {obstacles[0]}")
    detail = "stream into borg through a named pipe (read_special, one repository)"
    if count := transfer.retries(path):
        detail += (f"; retries: {count}, so the whole dump stays on disk until the run ends and a retried borg "
                   f"create reads it again")
    return Check("dumps", OK, detail)


def overlap_check(path, run) -> Check:
    """borgmatic's own roots must not cover runtime_dir (before-backup refuses them too)."""
    try:
        overlaps = transfer.overlaps(run.runtime.root, path, run.runtime.patterns)
    except UsageError as error:
        return Check("borgmatic roots", FAIL, str(error))
    if overlaps:
        return Check("borgmatic roots", FAIL, overlaps[0])
    return Check("borgmatic roots", OK, f"none covers runtime_dir {run.runtime.root}")


def patterns_check(path, sections, patterns: Path) -> Check:
    listed = [os.path.expandvars(str(p)) for s in sections for p in (s.get("patterns_from") or [])]
    if any(os.path.normpath(p) == str(patterns) for p in listed):
        return Check("patterns_from", OK, f"{path} reads {patterns}")
    if listed:
        return Check("patterns_from", FAIL, f"{path}: patterns_from lists {', '.join(listed)}, not {patterns} (the "
                                            f"patterns file before-backup writes): borg would not archive EMG")
    return Check("patterns_from", FAIL, f"{path} has no patterns_from: add `patterns_from: [{patterns}]` (the patterns "
                                        f"file before-backup writes), or borg archives nothing of EMG")


def _names(command: str, phase: str) -> bool:
    return "emg-borg" in command and re.search(rf"(^|[\s/]){phase}(\s|$)", command) is not None


def _hooks(data, sections) -> dict[str, list[tuple[str, dict | None, str]]]:
    """phase -> [(command, 2.x hook entry or None, where it is)] for every command naming it."""
    found: dict[str, list] = {phase: [] for phase in PHASES}
    for entry in data.get("commands") or []:
        if not isinstance(entry, dict):
            continue
        where = f"{'before' if 'before' in entry else 'after'}: {entry.get('before') or entry.get('after')}"
        for command in entry.get("run") or []:
            for phase in PHASES:
                if _names(str(command), phase):
                    found[phase].append((str(command), entry, where))
    for section in sections:
        for key in (key for keys in LISTS_1.values() for key in keys):
            for command in section.get(key) or []:
                for phase in PHASES:
                    if _names(str(command), phase):
                        found[phase].append((str(command), None, key))
    return found


def _misplaced(phase: str, entry: dict | None, where: str) -> bool:
    if entry is None:
        return where not in LISTS_1[phase]
    when = entry.get("when")
    placed = any(entry.get(side) == point for side, point in PLACES_2[phase])
    return not placed or (phase != "on-error" and when is not None and "create" not in when)


def _config_named(command: str) -> Path:
    """The emg-borg configuration a hook command reads (`-c`/`--config`, else the default)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return DEFAULT_CONFIG_PATH
    for i, word in enumerate(words):
        if word in ("-c", "--config") and i + 1 < len(words):
            return Path(words[i + 1])
        if word.startswith("--config="):
            return Path(word.split("=", 1)[1])
    return DEFAULT_CONFIG_PATH


def hook_checks(path, data, sections, config_path: Path) -> list[Check]:
    found = _hooks(data, sections)
    result = []
    for phase in PHASES:
        hooks = found[phase]
        if not hooks:
            result.append(Check("hooks", FAIL, f"{path} does not run `emg-borg {phase}`: add it as "
                                               f"`{EXAMPLE_2[phase]}` (borgmatic 2.x; 1.x: {LISTS_1[phase][0]}), see "
                                               f"borgmatic-example.yaml"))
            continue
        command, entry, where = hooks[0]
        if _misplaced(phase, entry, where):
            result.append(Check("hooks", FAIL, f"{path} runs `emg-borg {phase}` at `{where}`; it belongs at "
                                               f"`{EXAMPLE_2[phase]}` (1.x: {LISTS_1[phase][0]})"))
            continue
        named = _config_named(command)
        if named.resolve() != config_path.resolve():
            result.append(Check("hooks", WARN, f"`emg-borg {phase}` reads {named}, not {config_path} (checked here)"))
            continue
        if phase == "after-backup" and entry is not None and set(entry.get("states") or ()) != {"finish"}:
            result.append(Check("hooks", WARN, "after-backup also runs when borg create failed: add `states: [finish]`"
                                               " (borgmatic 2.x), or [metrics] counts a failed backup as a success"))
            continue
        result.append(Check("hooks", OK, f"{phase} runs at `{where}`"))
    return result


def repository_check(path) -> tuple[Check, int | None]:
    """The first repository of the configuration, and its newest emg-borg archive."""
    try:
        repository, archive = archives.select(archives.Selection(borgmatic_config=str(path)))
    except UsageError as error:
        if str(error).startswith("no emg-borg archive"):
            return Check("repository", WARN, f"{error}: no backup to restore yet"), None
        return Check("repository", FAIL, str(error)), None
    except EmgBorgError as error:
        return Check("repository", FAIL, str(error)), None
    manifest = archive.manifest
    return Check("repository", OK, f"{repository}: newest emg-borg archive {archive.name} "
                                   f"({archive.time.isoformat(timespec='seconds')}, message id "
                                   f"{manifest.get('message_id')})"), manifest.dump_bytes
