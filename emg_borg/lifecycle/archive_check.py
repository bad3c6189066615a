"""After `borg create`: the run's archive holds its dumps and its manifest whole.

The streamers count what they hand borg, but only the archive shows what borg stored: a process
that read part of a named pipe, a borg stopped and retried midway, a pipe excluded by a pattern.
So after-backup looks, in every repository of the run, for the archive whose manifest carries
the run's id, and compares the sizes of its emg-borg members (one member listing per repository)
with what the manifest states: a short dump fails the run whatever caused it.
"""

from __future__ import annotations

import json
import logging

from emg_borg.core import stream
from emg_borg.core.manifest import ARCHIVE_PATH, DUMPS_DIR, Manifest
from emg_borg.core.run import BackupRun
from emg_borg.errors import EmgBorgError
from emg_borg.lifecycle import tools
from emg_borg.lifecycle.archives import archive_of_run
from emg_borg.lifecycle.repository import borgmatic_repositories, resolve_repository

logger = logging.getLogger(__name__)


def expected_manifest(run: BackupRun) -> bytes | None:
    """The manifest this run handed borg (served through its pipe, or staged), read before the
    release removes it; None when the run made none."""
    served = stream.streams_dir(run.runtime) / stream.FINAL_MANIFEST
    staged = run.runtime.staging / ARCHIVE_PATH
    for path in (served, staged):
        try:
            if path.is_file():
                return path.read_bytes()
        except OSError:
            continue
    return None


def _repositories(run: BackupRun) -> list:
    if run.borgmatic_config and not run.repository:
        return borgmatic_repositories(run.borgmatic_config)
    return [resolve_repository(run.repository, run.borgmatic_config, tools.configured(run.config).name)]


def handed_selection(run: BackupRun) -> list[str]:
    """The lines of the selection file this run handed the tool, read before the release removes it."""
    try:
        return tools.configured(run.config).selection_path(run.runtime).read_text().splitlines()
    except OSError:
        return []


def check(run: BackupRun, manifest_bytes: bytes | None, selection: list[str] = ()) -> list[str]:
    """Why the run's archive cannot be trusted, in each repository of the run; [] when every
    archive holds the manifest and each dump at the size the manifest states."""
    if manifest_bytes is None:
        return []
    tool = tools.configured(run.config)
    if not run.repository and not run.borgmatic_config and not tool.hooks_name_repository():
        logger.warning("the archive's dump was not checked: after-backup names no repository (%s)",
                       tool.repository_advice)
        return []
    manifest = Manifest(json.loads(manifest_bytes))
    run_id = manifest.get("run_id")
    wanted = {ARCHIVE_PATH: len(manifest_bytes)}
    failures = []
    try:
        repositories = _repositories(run)
    except EmgBorgError as error:
        return [f"cannot check the archive of emg-borg run {run_id}: {error}"]
    for repository in repositories:
        try:
            archive = archive_of_run(repository, run_id)
            if archive is None:
                failures.append(f"no archive of emg-borg run {run_id} in {repository}: {tools.of(repository).name} "
                                f"did not store the run's manifest")
                continue
            wanted.update({dump.path: dump.bytes for dump in archive.manifest.dumps})
            items = tools.of(repository).members(repository, archive, ("emg-borg",))
            missing = tools.of(repository).not_stored(repository, archive, list(selection))
        except EmgBorgError as error:
            failures.append(f"cannot check the archive of emg-borg run {run_id} in {repository}: {error}")
            continue
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            failures.append(f"DO NOT TRUST archive {repository}::{archive.name}: {tools.of(repository).name} did not "
                            f"store {len(missing)} listed path(s), gone or unreadable when it read them: {shown}")
        sizes = {item.path: item.size for item in items if item.type == "-"}
        for path, size in wanted.items():
            if sizes.get(path) != size:
                held = f"{sizes[path]} bytes" if path in sizes else "nothing"
                failures.append(f"DO NOT TRUST archive {repository}::{archive.name}: its {path} holds {held}, the "
                                f"manifest states {size} bytes")
        extra = sorted(p for p in sizes if p.startswith(f"{DUMPS_DIR}/") and p not in wanted)
        if extra:
            failures.append(f"DO NOT TRUST archive {repository}::{archive.name}: it holds dumps the manifest does not "
                            f"name ({', '.join(extra)})")
        if not failures:
            logger.info("archive %s::%s holds the manifest and %d dump(s) whole", repository, archive.name,
                        len(archive.manifest.dumps))
    return failures


def stored_by_failed_run(run: BackupRun, manifest_bytes: bytes | None, selection: list[str]) -> list[str]:
    """on-error, when the tool failed after before-backup (its selection file is still there:
    after-backup removes it): an archive of the run that the tool stored all the same (restic's
    exit 3) is named, so that nobody takes it for a whole one. Looked up where after-backup would
    check; a lookup that fails is only a warning (on-error reports a failure anyway)."""
    tool = tools.configured(run.config)
    if manifest_bytes is None or not selection or not tool.stores_failed_runs:
        return []
    if not run.repository and not run.borgmatic_config and not tool.hooks_name_repository():
        return []
    run_id = Manifest(json.loads(manifest_bytes)).get("run_id")
    named = []
    try:
        repositories = _repositories(run)
    except EmgBorgError as error:
        logger.warning("no archive of the failed emg-borg run %s looked for: %s", run_id, error)
        return []
    for repository in repositories:
        try:
            archive = archive_of_run(repository, run_id)
        except EmgBorgError as error:
            logger.warning("no archive of the failed emg-borg run %s looked for in %s: %s", run_id, repository, error)
            continue
        if archive is not None:
            named.append(f"DO NOT TRUST archive {repository}::{archive.name}: {tool.name} stored it for emg-borg run "
                         f"{run_id}, which failed ({tool.stores_failed_runs}); check it with emg-borg verify "
                         f"--archive {archive.name}, or remove it")
    return named
