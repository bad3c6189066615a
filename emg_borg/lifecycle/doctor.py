"""`emg-borg doctor`: everything a backup needs, checked without changing anything.

Returns one `Check` a line: `FAIL` for what would make a backup fail, `warn` for what makes it
weaker or may soon fail it, `ok` otherwise. The plugins' part is their `emg_borg_preflight` hook:
each problem it returns is a failed check, each warning it logs a `warn` line, under the
plugin's name. Nothing is created: no runtime directory, lock, snapshot or connection is left.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from emg_borg.errors import EmgBorgError
from emg_borg.external import findmnt
from emg_borg.lifecycle import archives, backup, doctor_borgmatic, providers, session, tools
from emg_borg.lifecycle.checks import FAIL, OK, WARN, Check, warnings_as_checks
from emg_borg.lifecycle.checks import failed  # noqa: F401 - for the command line
from emg_borg.lifecycle.extract import human_size

MIN_FREE = 100 * 2**20  # free space below which runtime_dir is too tight, whatever the dump's size


def doctor(config_path, manager, borgmatic_config=None) -> list[Check]:
    checks: list[Check] = []
    try:
        config = session.load_config(config_path, manager)
        providers.check_configured(config, manager.hook)
    except EmgBorgError as error:
        return [Check("config", FAIL, str(problem)) for problem in getattr(error, "problems", [error])]
    checks.append(Check("config", OK, f"{config_path} is valid"))
    run = backup.new_run(config, manager, dry_run=True)
    run.categories = backup.selected_categories(config)
    try:
        run.layout = manager.hook.emg_borg_discover_layout(config=config)
    except EmgBorgError as error:
        return checks + [Check("server.cfg", FAIL, str(error))]
    db = run.layout.db
    checks.append(Check("server.cfg", OK, f"{run.layout.server_cfg} parsed: SPOOLDIR {run.layout.spooldir}"
                        + (f", database {db.database} (profile {db.label})" if db else ", no DBPROFILE")))
    checks += snapshot_checks(run)
    checks += runtime_dir_checks(run)
    run.tool = tools.configured(config)
    checks += run.tool.doctor(run, borgmatic_config)
    checks += plugin_checks(run, manager)
    last_dump = None
    if run.tool.name != "borg":
        found, last_dump = repository_check(run.tool.name)
        checks += found
    elif borgmatic_config:
        with warnings_as_checks("borgmatic", checks):
            found, last_dump = doctor_borgmatic.checks(borgmatic_config, run, config_path)
        checks += found
    else:
        checks.append(Check("borgmatic", WARN, "its configuration was not checked (pass --borgmatic-config FILE)"))
    streams = any(check.name == "dumps" and check.status == OK and check.detail.startswith("stream into borg")
                  for check in checks)
    checks.append(free_space_check(run, last_dump, streams))
    return checks


def snapshot_checks(run) -> list[Check]:
    spooldir = run.layout.spooldir
    if not spooldir.is_dir():
        return [Check("spool", FAIL, f"SPOOLDIR {spooldir} is not a directory (check SPOOLDIR= in server.cfg or "
                                     f"[emg] spooldir)")]
    mount = findmnt.find(spooldir)
    checks = [Check("spool", OK, f"{spooldir} on {mount.fstype} ({mount.target})" if mount else str(spooldir))]
    with warnings_as_checks("snapshot", checks):
        try:
            provider = providers.resolve(run)
            run.provider = provider.name
            problems = provider.preflight(run)
            chosen = run.config["snapshot"]["provider"] not in ("auto", "none")  # auto chose by claims already
            if chosen and mount and not provider.claims(run, mount.fstype):
                problems.insert(0, f"cannot snapshot: [snapshot] provider {provider.name} does not handle SPOOLDIR's "
                                   f"file system, {mount.fstype} ({mount.target})")
        except EmgBorgError as error:
            return checks + [Check("snapshot", FAIL, f"cannot snapshot: {error}")]
    if problems:
        return checks + [Check("snapshot", FAIL, problem) for problem in problems]
    if provider.name == "none":
        return checks + [Check("snapshot", WARN, f"provider none: the live spool is copied while emgd may change it "
                                                 f"(not consistent); use it only where SPOOLDIR's file system "
                                                 f"({mount.fstype if mount else 'unknown'}) cannot be snapshotted")]
    return checks + [Check("snapshot", OK, f"provider {provider.name}")]


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def runtime_dir_checks(run) -> list[Check]:
    root = run.runtime.root
    try:
        backup.check_runtime_dir(run)
    except EmgBorgError as error:
        return [Check("runtime_dir", FAIL, str(error))]
    existing = _existing(root)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [Check("runtime_dir", FAIL, f"{root}: cannot write in {existing}")]
    where = "" if existing == root else f" (to be created in {existing})"
    return [Check("runtime_dir", OK, f"{root} is writable, safe from other users and outside every archived root{where}")]


def free_space_check(run, last_dump: int | None, streams: bool = False) -> Check:
    """A staged dump lies in the staging area until borg has read it: room for about twice the
    last dump (it grows), and never less than MIN_FREE. A streamed dump needs room for what borg
    has not read yet: at worst (a late borg, borgmatic's retries) the whole last dump."""
    where = _existing(run.runtime.root)
    free = shutil.disk_usage(where).free
    need = max(MIN_FREE, (1 if streams else 2) * (last_dump or 0))
    basis = ("the dump streams into borg, buffered on disk only while borg lags behind it: all of it when borg "
             "starts late or borgmatic retries" if streams else
             f"the last dump was {human_size(last_dump)}" if last_dump else "the last dump's size is unknown")
    lvm = "; LVM: the volume group's free space for the snapshot is not checked" if run.provider == "lvm" else ""
    status = WARN if free < need else OK
    advice = f", less than {human_size(need)}" if free < need else ""
    return Check("free space", status, f"{human_size(free)} free in {where}{advice} ({basis}){lvm}")


def repository_check(tool: str) -> tuple[list[Check], int | None]:
    """The repository the environment names for `tool` (restic: RESTIC_REPOSITORY): its newest
    emg-borg archive, whose dump size tells how much room the next staged dump needs."""
    try:
        repository = archives.resolve_repository(tool=tool)
        found = archives.emg_archives(repository)
    except EmgBorgError as error:
        return [Check("repository", WARN, f"not checked: {error}")], None
    if not found:
        return [Check("repository", WARN, f"{repository}: no emg-borg archive yet")], None
    newest = found[0]
    return [Check("repository", OK, f"{repository}: newest emg-borg archive {newest.name} "
                                    f"({newest.time.isoformat(timespec='seconds')}, message id "
                                    f"{newest.manifest.get('message_id')})")], newest.manifest.dump_bytes


def plugin_checks(run, manager) -> list[Check]:
    """Each plugin's preflight on its own: its problems fail, its warnings warn, and a plugin that
    checked something and found nothing wrong says ok (None means it had nothing to check)."""
    checks: list[Check] = []
    for impl in reversed(manager.hook.emg_borg_preflight.get_hookimpls()):
        name = impl.plugin_name.rsplit(".", 1)[-1]
        noted = len(run.notes)
        with warnings_as_checks(name, checks):
            try:
                problems = impl.function(run=run)
            except EmgBorgError as error:
                problems = [str(error)]
            except Exception as error:  # noqa: BLE001 - a plugin's bug is its failed check
                problems = [f"preflight raised {type(error).__name__}: {error}"]
        if problems is not None:
            passed = [Check(name, OK, note) for note in run.notes[noted:]] or [Check(name, OK, "preflight checks passed")]
            checks += [Check(name, FAIL, problem) for problem in problems] or passed
    return checks
