"""`before-backup`: freeze one consistency point and leave behind exactly what the backup tool
must read.

That is the snapshot (mounted where needed), the staging area (manifest, dumps, `seqno`) and the
selection file of the tool (`[backup] tool`): borg's patterns file that borgmatic names in
`patterns_from`, or restic's `--files-from-verbatim` list. Any failure releases everything it
created, run lock included, before the error reaches the user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from emg_borg import __version__
from emg_borg.core import stream
from emg_borg.core.files import remove_tree, write_private
from emg_borg.core.host import machine_identity
from emg_borg.core.manifest import ARCHIVE_PATH, DUMPS_DIR, FORMAT_VERSION
from emg_borg.core.run import BackupRun
from emg_borg.core.runlock import RunLock
from emg_borg.core.runtime import CORE, Ledger, RuntimeDir, run_owner_pid
from emg_borg.core.signals import signals_raise
from emg_borg.emg.categories import CATEGORIES
from emg_borg.errors import EmgBorgError
from emg_borg.external import execute
from emg_borg.lifecycle import outcome, providers, tools
from emg_borg.lifecycle.release import release_and_unlock, release_resources

logger = logging.getLogger(__name__)


def selected_categories(config) -> tuple:
    return tuple(dict.fromkeys(config["backup"]["categories"]))


def check_runtime_dir(run: BackupRun) -> None:
    """The runtime directory must lie outside every archived root, or borg would archive
    emg-borg's own staging area and snapshot mounts twice; and only root may change it or a
    directory above it, or another user could plant a link where root writes its files."""
    runtime = run.runtime.root
    unsafe = run.runtime.unsafe()
    if unsafe:
        raise run.config.error("backup", "runtime_dir", f"{runtime} is not safe: {unsafe}")
    for root in run.layout.roots:
        if root.category in run.categories and (runtime == root.path or root.path in runtime.parents):
            raise run.config.error(
                "backup", "runtime_dir",
                f"{runtime} lies inside the {root.category} root {root.path}; choose a directory outside it "
                f"(default /var/lib/emg-borg)",
            )


def new_run(config, manager, *, dry_run=False, repository=None, borgmatic_config=None) -> BackupRun:
    runtime = RuntimeDir(config["backup"]["runtime_dir"])
    return BackupRun(config=config, runtime=runtime, ledger=Ledger(runtime), hook=manager.hook,
                     dry_run=dry_run, repository=repository, borgmatic_config=borgmatic_config)


def before_backup(config, manager, *, dry_run=False, repository=None, borgmatic_config=None, run=None) -> dict:
    """Freeze the consistency point and prepare everything the backup tool reads. Returns the manifest, or
    for a dry run the plan with the preflight problems."""
    run = run or new_run(config, manager, dry_run=dry_run, repository=repository, borgmatic_config=borgmatic_config)
    run.layout = run.hook.emg_borg_discover_layout(config=config)
    run.categories = selected_categories(config)
    check_runtime_dir(run)
    provider = providers.resolve(run)
    run.provider = provider.name
    tool = run.tool = tools.configured(config)
    problems = tool.preflight(run) + provider.preflight(run)
    problems += [p for found in run.hook.emg_borg_preflight(run=run) for p in found or ()]
    problems += tool.transfer(run)  # how the dumps reach the tool: streamed or staged
    if dry_run:
        return {**plan_summary(run), "problems": problems}
    if problems:
        raise EmgBorgError(preflight_message(problems))

    run.runtime.ensure()
    lock = RunLock(run.runtime)
    run.owner_pid = run_owner_pid()
    stale = lock.take(run.owner_pid, run.run_id, run.started, run.ledger)
    try:
        with signals_raise():
            if stale is not None or run.ledger.entries:
                earlier = stale or run.ledger.meta
                logger.warning("found leftovers of an earlier run (run %s, started %s) that did not finish; "
                               "releasing them", earlier.get("run_id", "unknown"), earlier.get("started", "unknown"))
                release_resources(run)
            run.ledger.meta = {"run_id": run.run_id, "started": run.started}
            run.ledger.add(CORE, "staging", path=run.runtime.staging)
            remove_tree(run.runtime.staging)
            run.runtime.staging.mkdir(mode=0o700, parents=True)
            providers.drive(run, provider.name, provider.prepare(run))
            provider.clean_stale(run)
            try:
                if "database" in run.categories:
                    logger.info("%s", tool.describe_transfer(run.stream_dumps, run.transfer_reason))
                freeze(run, provider)
                run.step = "starting the dump streams"
                for handle in run.streams:
                    handle.carry()
                for found in run.hook.emg_borg_finish_dumps(run=run):
                    run.dumps.extend(found or ())
                run.step = "staging the seqno"
                write_seqno(run)
                run.step = "collecting the selection"
                selection = tool.collect(run, pattern_lines(run))
                run.step = "writing the manifest"
                manifest = write_manifest(run, tool.manifest_fields(run, selection))
                run.step = f"writing the {tool.selection_label}"
                count = tool.write_selection(run, selection)
            except OSError as error:
                where = f" ({error.filename})" if error.filename else ""
                raise EmgBorgError(f"{error.strerror or error} while {run.step}{where}") from error
    except BaseException as error:
        try:
            release_and_unlock(run, lock)
        except EmgBorgError as incomplete:
            # The user sees the original error first; what could not be released follows it.
            error.further = [*getattr(error, "further", []), str(incomplete)]
        raise
    logger.info(
        "ready for %s: message id %s, freeze window %.1f ms, %d %s in %s", tool.name,
        run.message_id, run.freeze_window_ms or 0, count, tool.line_label, tool.selection_path(run.runtime),
    )
    return manifest


def before_backup_reported(config, manager, *, repository=None, borgmatic_config=None) -> dict:
    """`before-backup` as borgmatic runs it: a failure ends the run and is reported to the plugins
    (`emg_borg_run_finished`) after everything was released."""
    run = new_run(config, manager, repository=repository, borgmatic_config=borgmatic_config)
    with outcome.reported(run, outcome.BEFORE_BACKUP):
        return before_backup(config, manager, run=run)


def freeze(run: BackupRun, provider) -> None:
    """Enter the consistency point: snapshot, message id and dump start describe one instant."""
    started = time.monotonic()
    with contextlib.ExitStack() as point:
        run.step = "taking the consistency point's lock"
        for holder in run.hook.emg_borg_hold_consistency_point(run=run):
            if holder is not None:
                point.enter_context(holder)
        # A holder may bound the point (`run.freeze_deadline`): every command inside gets only
        # the time left, and is stopped when it is over.
        point.enter_context(execute.deadline(run.freeze_deadline))
        run.step = f"taking the {provider.name} snapshot"
        run.snapshot = providers.drive(run, provider.name, provider.take(run))
        run.step = "reading the message id"
        run.message_id = run.hook.emg_borg_capture_message_id(run=run)
        run.step = "starting the dumps"
        run.hook.emg_borg_begin_dumps(run=run)
        run.step = "releasing the consistency point"
    run.step = "finishing the dumps"
    if run.freeze_window_ms is None:
        run.freeze_window_ms = round((time.monotonic() - started) * 1000, 3)


def write_seqno(run: BackupRun) -> None:
    """Stage `SPOOLDIR/seqno` with the captured id; it lands in the archive at the spool's path."""
    if run.message_id is None:
        logger.warning("no message id captured: the archive will have no %s/seqno", run.layout.spooldir)
        return
    write_private(run.runtime.staged(run.layout.spooldir / "seqno"), f"{run.message_id}\n", 0o644)


def archived_categories(run: BackupRun) -> dict:
    """Archive-relative roots of each archived category (the manifest's `categories`)."""
    categories: dict[str, list[str]] = {}
    for root in run.layout.roots:
        if root.category in run.categories:
            categories.setdefault(root.category, []).append(str(root.path).lstrip("/"))
    if run.dumps:
        categories["database"] = [DUMPS_DIR]
    return categories


def write_manifest(run: BackupRun, tool_fields: dict) -> dict:
    identity = machine_identity()
    manifest = {
        "format_version": FORMAT_VERSION,
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
        "warnings": run.warnings,
        "dumps": [dump.to_dict() for dump in run.dumps],
        "dump_transfer": ("stream" if run.stream_dumps else "staged") if run.dumps else None,
        "categories": archived_categories(run),
        "excluded_categories": [c for c in CATEGORIES if c not in run.categories],
        "backup_tool": run.tool.name,
        **tool_fields,
    }
    for fields in run.hook.emg_borg_manifest_fields(run=run):
        manifest.update(fields or {})
    if run.streams:  # served through a named pipe once borg has read the dumps, with their sha256
        stream.serve_manifest(run.runtime, run.ledger, run.owner_pid, manifest, run.runtime.staging / ARCHIVE_PATH,
                              run.streams)
    else:
        write_private(run.runtime.staging / ARCHIVE_PATH, json.dumps(manifest, indent=2) + "\n")
    return manifest


def pattern_lines(run: BackupRun) -> list[str]:
    """The plugins' pattern lines: the selection in borg's pattern language, which every tool reads."""
    lines = []
    for contribution in run.hook.emg_borg_backup_patterns(run=run):
        lines.extend(contribution or [])
    return lines


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
        "dump_transfer": ("stream" if run.stream_dumps else "staged") if "database" in run.categories else None,
        "dump_transfer_reason": run.transfer_reason or None,
        "backup_tool": run.tool.name,
        "patterns_file": str(run.tool.selection_path(run.runtime)),
        "notes": list(run.notes),  # what the plugins' checks found, e.g. the replica the dump is taken on
    }
