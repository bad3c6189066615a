"""The backup lifecycle: `before-backup`, `after-backup` and `on-error`.

`before_backup` freezes one consistency point and leaves behind exactly what borg must read: the
snapshot (mounted where needed), the staging area (manifest, dump, `seqno`) and the patterns
file borgmatic names in `patterns_from`. Any failure releases everything it created, lock
included, before the error reaches the user. `release_backup` undoes a run; it is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from emg_borg import __version__
from emg_borg.emg.categories import CATEGORIES
from emg_borg.errors import ConfigError, EmgBorgError
from emg_borg.external import findmnt
from emg_borg.lifecycle.run import (
    BackupRun, Ledger, RunLock, RuntimeDir, remove_tree, run_owner_pid, write_private,
)
from emg_borg.plugins import get_plugin_manager

logger = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
MANIFEST_ARCHIVE_PATH = "emg-borg/manifest.json"


class Interrupted(EmgBorgError):
    """SIGTERM or SIGHUP arrived; turned into an exception so that cleanup runs."""


@contextlib.contextmanager
def signals_raise():
    """While working, SIGTERM/SIGHUP raise `Interrupted` (SIGINT already raises)."""

    def handler(signum, frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; releasing everything")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so a release is never cut short.

    The signals are recorded by handlers rather than blocked: a blocked mask would be inherited
    by the commands the release runs (umount, zfs destroy), which could then not be stopped."""
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:
        raise Interrupted(f"interrupted by {signal.Signals(received[0]).name} (held until everything was released)")


def selected_categories(config) -> tuple:
    return tuple(dict.fromkeys(config["backup"]["categories"]))


def check_provider(config, hook) -> str:
    """The configured snapshot provider, if some plugin offers it (checked here, not in the
    schema, because plugins may add providers)."""
    provider = config["snapshot"]["provider"]
    known = sorted({name for names in hook.emg_borg_snapshot_providers() for name in names or ()})
    if provider != "auto" and provider not in known:
        raise config.error("snapshot", "provider", f"unknown snapshot provider {provider!r}; known: auto, {', '.join(known)}")
    return provider


def resolve_provider(run: BackupRun) -> str:
    """The snapshot provider to use: the configured one, or for `auto` the one matching the file
    system that holds SPOOLDIR."""
    provider = check_provider(run.config, run.hook)
    if provider != "auto":
        return provider
    spooldir = run.layout.spooldir
    mount = findmnt.find(spooldir)
    if mount is None:
        raise EmgBorgError(f"cannot tell which file system holds SPOOLDIR {spooldir} (findmnt found nothing)")
    chosen = run.hook.emg_borg_snapshot_provider(run=run, filesystem=mount.fstype)
    if not chosen:
        raise EmgBorgError(
            f"SPOOLDIR {spooldir} is on {mount.fstype} ({mount.target}), which emg-borg cannot snapshot; "
            f"move the spool to Btrfs, ZFS or LVM, or set [snapshot] provider = \"none\" to knowingly back up "
            f"the live, inconsistent spool"
        )
    logger.info("snapshot provider auto: %s (SPOOLDIR %s is on %s at %s)", chosen, spooldir, mount.fstype, mount.target)
    return chosen


def check_runtime_dir(run: BackupRun) -> None:
    """The runtime directory must lie outside every archived root, or borg would archive
    emg-borg's own staging area and snapshot mounts twice."""
    runtime = run.runtime.root
    for root in run.layout.roots:
        if root.category in run.categories and (runtime == root.path or root.path in runtime.parents):
            raise run.config.error(
                "backup", "runtime_dir",
                f"{runtime} lies inside the {root.category} root {root.path}; choose a directory outside it "
                f"(default /var/lib/emg-borg)",
            )


def new_run(config, *, dry_run=False, repository=None, manager=None) -> BackupRun:
    manager = manager or get_plugin_manager()
    runtime = RuntimeDir(config["backup"]["runtime_dir"])
    return BackupRun(
        config=config, runtime=runtime, ledger=Ledger(runtime.ledger), hook=manager.hook,
        dry_run=dry_run, repository=repository,
    )


def before_backup(config, *, dry_run=False, repository=None) -> dict:
    """Freeze the consistency point and prepare everything borg reads. Returns a summary."""
    run = new_run(config, dry_run=dry_run, repository=repository)
    run.layout = run.hook.emg_borg_discover_layout(config=config)
    run.categories = selected_categories(config)
    check_runtime_dir(run)
    run.provider = resolve_provider(run)
    problems = [problem for found in run.hook.emg_borg_preflight(run=run) for problem in found or ()]
    if dry_run:
        plan = plan_summary(run)
        plan["problems"] = problems
        return plan
    if problems:
        raise EmgBorgError(preflight_message(problems))

    run.runtime.ensure()
    lock = RunLock(run.runtime.lock)
    stale = lock.acquire(run_owner_pid(), run.run_id)
    try:
        with signals_raise():
            if stale is not None or run.ledger.entries:
                logger.warning(
                    "found leftovers of an earlier run (run %s, started %s) that did not finish; releasing them",
                    (stale or run.ledger.meta).get("run_id", "unknown"), (stale or run.ledger.meta).get("started", "unknown"),
                )
                release_resources(run)
            run.hook.emg_borg_cleanup_stale(run=run)
            run.ledger.meta = {"run_id": run.run_id, "started": run.started}
            run.ledger.add("core", "staging", path=run.runtime.staging)
            remove_tree(run.runtime.staging)
            run.runtime.staging.mkdir(mode=0o700, parents=True)
            freeze(run)
            run.hook.emg_borg_finish_dumps(run=run)
            write_seqno(run)
            manifest = write_manifest(run)
            write_patterns(run)
    except BaseException:
        release_and_unlock(run, lock)
        raise
    logger.info(
        "ready for borg: message id %s, freeze window %.1f ms, %d pattern lines in %s",
        run.message_id, run.freeze_window_ms or 0, len(run.runtime.patterns.read_text().splitlines()), run.runtime.patterns,
    )
    return manifest


def freeze(run: BackupRun) -> None:
    """Enter the consistency point: snapshot, message id and dump start describe one instant."""
    started = time.monotonic()
    with contextlib.ExitStack() as point:
        for holder in run.hook.emg_borg_hold_consistency_point(run=run):
            if holder is not None:
                point.enter_context(holder)
        if run.provider != "none":
            run.snapshot = run.hook.emg_borg_take_snapshot(run=run, provider=run.provider)
            if run.snapshot is None:
                raise ConfigError(f"no plugin provides the snapshot provider {run.provider!r}")
        else:
            run.hook.emg_borg_take_snapshot(run=run, provider="none")
        run.message_id = run.hook.emg_borg_capture_message_id(run=run)
        run.hook.emg_borg_begin_dumps(run=run)
    if run.freeze_window_ms is None:
        run.freeze_window_ms = round((time.monotonic() - started) * 1000, 3)


def write_seqno(run: BackupRun) -> None:
    """Stage `SPOOLDIR/seqno` with the captured id; it lands in the archive at the spool's path."""
    if run.message_id is None:
        logger.warning("no message id captured: the archive will have no %s/seqno", run.layout.spooldir)
        return
    write_private(run.runtime.staged(run.layout.spooldir / "seqno"), f"{run.message_id}\n", 0o644)


def machine_identity() -> dict:
    identity = {"hostname": socket.gethostname()}
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            identity["machine_id"] = Path(path).read_text().strip()
            break
    with contextlib.suppress(OSError):
        identity["product_uuid"] = Path("/sys/class/dmi/id/product_uuid").read_text().strip()
    return identity


def archived_categories(run: BackupRun) -> dict:
    """Archive-relative roots of each archived category (the manifest's `categories`)."""
    categories: dict[str, list[str]] = {}
    for root in run.layout.roots:
        if root.category in run.categories:
            categories.setdefault(root.category, []).append(str(root.path).lstrip("/"))
    if run.dump_results:
        categories["database"] = ["emg-borg/mysql"]
    return categories


def write_manifest(run: BackupRun) -> dict:
    identity = machine_identity()
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "created": run.started,
        "hostname": identity["hostname"],
        "machine": identity,
        "emg_borg_version": __version__,
        "run_id": run.run_id,
        "emgdir": str(run.layout.emgdir),
        "server_cfg": str(run.layout.server_cfg),
        "spooldir": str(run.layout.spooldir),
        "logdir": str(run.layout.logdir) if run.layout.logdir else None,
        "bindir": str(run.layout.bindir) if run.layout.bindir else None,
        "node_id": run.layout.node_id,
        "message_id": run.message_id,
        "message_id_source": run.message_id_source,
        "seqno_path": str(run.layout.spooldir / "seqno").lstrip("/") if run.message_id is not None else None,
        "snapshot_provider": run.provider,
        "snapshot": run.snapshot.to_dict() if run.snapshot else None,
        "consistency_lock": run.lock_state,
        "freeze_window_ms": run.freeze_window_ms,
        "mysql": None,  # filled in by the database plugin
        "categories": archived_categories(run),
        "excluded_categories": [c for c in CATEGORIES if c not in run.categories],
    }
    for fields in run.hook.emg_borg_manifest_fields(run=run):
        manifest.update(fields or {})
    write_private(run.runtime.manifest, json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_patterns(run: BackupRun) -> None:
    lines = [
        f"# borg patterns written by emg-borg {__version__} for run {run.run_id} at {run.started}",
        "# Read by borgmatic through patterns_from; rewritten by every before-backup.",
        f"R {run.runtime.staging}/./emg-borg",
    ]
    for contribution in run.hook.emg_borg_backup_patterns(run=run):
        lines.extend(contribution or [])
    write_private(run.runtime.patterns, "\n".join(dict.fromkeys(lines)) + "\n")


def release_resources(run: BackupRun) -> None:
    """Release everything the ledger lists; collect errors so one failure does not stop the rest."""
    run.release_errors = []
    run.hook.emg_borg_release(run=run)
    for entry in run.ledger.of("core"):
        try:
            remove_tree(Path(entry["path"]))
            run.ledger.remove(entry)
        except OSError as error:
            run.release_errors.append(f"cannot remove {entry['path']}: {error.strerror}")
    if not run.ledger.entries:
        run.ledger.delete()
    if run.release_errors:
        raise EmgBorgError("release incomplete: " + "; ".join(run.release_errors))


def release_and_unlock(run: BackupRun, lock: RunLock) -> None:
    """Release everything, remove the patterns file (its roots are gone) and the emptied mount
    directories, and give up the run lock once the ledger is empty. A release that failed keeps
    the lock and the ledger, so `on-error` or the next run tries again."""
    with signals_deferred():
        try:
            release_resources(run)
        finally:
            with contextlib.suppress(FileNotFoundError):
                run.runtime.patterns.unlink()
            with contextlib.suppress(OSError):
                _remove_empty_dirs(run.runtime.snapshots)
            if not run.ledger.entries:
                lock.release()


def release_backup(config, *, force=False, repository=None, dry_run=False) -> str:
    """`after-backup` / `on-error`: release the run's snapshot, mounts, staging and lock."""
    run = new_run(config, repository=repository, dry_run=dry_run)
    lock = RunLock(run.runtime.lock)
    if not run.runtime.root.exists() or (not run.ledger.entries and lock.read() is None):
        with contextlib.suppress(FileNotFoundError):
            run.runtime.patterns.unlink()
        return "nothing to release"
    other = lock.held_by_other_live_run(run_owner_pid())
    if other and not force:
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
    release_and_unlock(run, lock)
    if run.failures:
        raise EmgBorgError("; ".join(run.failures))
    return "released"


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir() or os.path.ismount(top):
        return
    for child in top.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_empty_dirs(child)
    top.rmdir()


def preflight_message(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more; see before-backup --dry-run)" if len(problems) > 1 else ""
    return f"preflight check failed: {problems[0]}{more}"


def plan_summary(run: BackupRun) -> dict:
    """What a dry run reports: the layout, the categories, the provider and the roots."""
    layout = run.layout
    return {
        "dry_run": True,
        "emgdir": str(layout.emgdir),
        "spooldir": str(layout.spooldir),
        "categories": list(run.categories),
        "snapshot_provider": run.provider,
        "roots": [
            {"category": r.category, "path": str(r.path)} for r in layout.roots if r.category in run.categories
        ],
        "database": layout.db.database if layout.db else None,
        "patterns_file": str(run.runtime.patterns),
    }
