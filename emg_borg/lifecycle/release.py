"""`after-backup` and `on-error`: release what a run created; idempotent.

Releasing is isolated step by step: every plugin's `release` hook runs even when another's
fails, every ledger entry is tried even when another could not be released, and what could not
be released stays in the ledger (and the run lock stays) so `on-error` or the next run retries.
"""

from __future__ import annotations

import contextlib
import logging

from emg_borg.core import stream
from emg_borg.core.files import remove_empty_dirs, remove_tree
from emg_borg.core.run import BackupRun
from emg_borg.core.runlock import NOTHING, OTHER, RunLock
from emg_borg.core.runtime import Ledger, RuntimeDir, run_owner_pid
from emg_borg.core.signals import signals_deferred
from emg_borg.errors import EmgBorgError
from emg_borg.lifecycle import archive_check, archives, outcome, providers, tools

logger = logging.getLogger(__name__)


def _release_core(run: BackupRun, entry: dict) -> None:
    if entry["kind"] == stream.KIND:
        stream.release(entry, run_owner_pid())
    else:
        remove_tree(entry["path"])


def release_resources(run: BackupRun) -> None:
    """Release everything the ledger lists and every plugin holds; raise one error listing what
    could not be released (the rest is released all the same)."""
    run.release_errors = []
    known = providers.registry(run.hook)
    # The state first, while nothing is released yet: an overflowed snapshot must be reported
    # even if a release below fails.
    for problem in providers.check_entries(run, known):
        run.failures.append(problem.replace("{archive}", run_archive(run)))
    for impl in reversed(run.hook.emg_borg_release.get_hookimpls()):
        try:
            impl.function(run=run)
        except EmgBorgError as error:
            run.release_errors.append(f"plugin {impl.plugin_name}: {error}")
        except Exception as error:  # noqa: BLE001 - one plugin's failure must not stop the others
            run.release_errors.append(f"plugin {impl.plugin_name}: {type(error).__name__}: {error}")
    providers.release_entries(run, known, _release_core)
    if not run.ledger.entries:
        run.ledger.delete()
    elif run.ledger.unsaved:
        try:
            run.ledger.save()
        except OSError as error:
            run.release_errors.append(f"cannot update the ledger {run.ledger.path}: {error.strerror}")
    if run.release_errors:
        raise EmgBorgError("release incomplete: " + "; ".join(run.release_errors))


def release_and_unlock(run: BackupRun, lock: RunLock) -> None:
    """Release everything, remove the tool's selection file (its roots are gone) and the emptied mount
    directories, and give up the run lock once the ledger is empty. A release that failed keeps
    the lock and the ledger, so `on-error` or the next run tries again."""
    with signals_deferred():
        try:
            release_resources(run)
        finally:
            for path in tools.selection_files(run.runtime):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            remove_empty_dirs(run.runtime.snapshots)
            if not run.ledger.entries:
                lock.give_up(run.owner_pid)


def release_backup(config, manager, *, force=False, repository=None, dry_run=False, borgmatic_config=None,
                   command=outcome.AFTER_BACKUP) -> str:
    """`after-backup` / `on-error` (`command`): release the run's snapshot, mounts, staging and lock,
    then report the run's end to the plugins (after-backup: a success; on-error: a failure)."""
    runtime = RuntimeDir(config["backup"]["runtime_dir"])
    lock = RunLock(runtime)
    run = BackupRun(config=config, runtime=runtime, ledger=Ledger(runtime), hook=manager.hook,
                    repository=repository, dry_run=dry_run, borgmatic_config=borgmatic_config,
                    owner_pid=run_owner_pid())
    found, other = NOTHING, None
    if runtime.root.exists():
        with runtime.guard():  # a before-backup starting now must not lose its patterns file
            found, other = lock.claim(run.owner_pid, run.ledger, force=force, dry_run=dry_run)
            if found == NOTHING:
                for path in tools.selection_files(runtime):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
    if found == NOTHING:
        if command == outcome.ON_ERROR and not dry_run:  # before-backup failed, or borgmatic before it
            outcome.report(run, command, succeeded=False)
        return "nothing to release"
    if found == OTHER:
        logger.warning(
            "the run lock belongs to another running backup (pid %s, run %s); leaving its resources alone "
            "(use --force if that process is not an emg-borg backup)", other.get("pid"), other.get("run_id"),
        )
        return "lock held by another run"
    if dry_run:
        for entry in reversed(run.ledger.entries):
            logger.info("would release %s %s", entry["owner"], {k: v for k, v in entry.items() if k != "owner"})
        return "dry run"
    run.run_id = run.ledger.meta.get("run_id", run.run_id)
    run.started = run.ledger.meta.get("started", run.started)
    # What the streamers recorded, before the release removes it: a dump that did not reach borg
    # whole. After a failed borg (on-error) a stream it never reached says nothing new.
    # A failure after-backup reported is not reported again by the on-error borgmatic runs next
    # (when a release was incomplete, the ledger and the statuses are still there).
    found = stream.problems(run.runtime, unread=command == outcome.AFTER_BACKUP)
    reported = run.ledger.meta.get("reported", [])
    run.failures.extend(problem for problem in found if problem not in reported)
    run.ledger.meta["reported"] = list(dict.fromkeys([*reported, *found]))
    handed_to_borg = archive_check.expected_manifest(run)
    selection = archive_check.handed_selection(run)
    with outcome.reported(run, command):
        release_and_unlock(run, lock)
        if command == outcome.ON_ERROR:
            run.failures.extend(archive_check.stored_by_failed_run(run, handed_to_borg, selection))
        elif not run.failures:
            run.failures.extend(archive_check.check(run, handed_to_borg, selection))
        if run.failures:
            raise EmgBorgError("; ".join(run.failures))
    return "released"


def run_archive(run: BackupRun) -> str:
    """Name the archive of this run, found by the run id in the archives' manifests. When borg
    cannot be asked (borgmatic need not pass the passphrase to hooks) the run is named instead."""
    run_id = run.ledger.meta.get("run_id", run.run_id)
    started = run.ledger.meta.get("started", run.started)
    which = f"the archive of emg-borg run {run_id} (started {started})"
    if not run.repository and not run.borgmatic_config:
        return which
    return archives.name_run_archive(which, run_id, started, run.repository, run.borgmatic_config,
                                     run.config["backup"]["tool"])
