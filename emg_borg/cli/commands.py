"""One function per command: call the lifecycle, print its result (text or `--json`), return the
exit code. The only module that writes to stdout."""

from __future__ import annotations

import json
import logging
import os
import sys

from emg_borg.errors import EXIT_FAILURE, EXIT_OK, LINE_LIMIT, EmgBorgError, shortened

logger = logging.getLogger("emg_borg")

# Each command imports the lifecycle modules it needs when it runs: borgmatic starts emg-borg
# twice per backup, and the restore side's imports would only slow the hooks down.


def print_json(data) -> None:
    """Machine output for monitoring: JSON on stdout (messages go to stderr)."""
    print(json.dumps(data, indent=2, default=str))


def _tool(args, manager) -> str | None:
    """`[backup] tool` of the configuration, when there is one (a rebuilt machine has none yet:
    then borg, or restic when only RESTIC_REPOSITORY names a repository)."""
    if not os.path.exists(args.config):
        return None
    from emg_borg.errors import ConfigError
    try:
        return _config(args, manager)["backup"]["tool"]
    except ConfigError:
        return None  # an unreadable configuration does not stop the restore side (as before restic)


def _selection(args, manager) -> archives.Selection:  # noqa: F821 - imported in the body
    from emg_borg.lifecycle import archives
    nodes = archives.node_choice(args.host, args.node, args.any_node, args.config, manager)
    return archives.Selection(repository=args.repository, borgmatic_config=args.borgmatic_config,
                              archive=args.archive, at=args.at, nodes=nodes, tool=_tool(args, manager))


def _config(args, manager, required=True):
    """The configuration; for restore-side commands on a rebuilt machine (no config file yet)
    the defaults."""
    from emg_borg.lifecycle import session
    if required or os.path.exists(args.config):
        return session.load_config(args.config, manager)
    return session.default_config(manager)


def before_backup(args, manager) -> int:
    from emg_borg.lifecycle import backup, tools
    config = _config(args, manager)
    if args.dry_run:
        result = backup.before_backup(config, manager, dry_run=True, repository=args.repository,
                                      borgmatic_config=args.borgmatic_config)
    else:
        result = backup.before_backup_reported(config, manager, repository=args.repository,
                                               borgmatic_config=args.borgmatic_config)
    if args.dry_run and not args.json:
        logger.info("dry run: nothing changed. Would back up %s with snapshot provider %s:",
                    ", ".join(result["categories"]), result["snapshot_provider"])
        for root in result["roots"]:
            logger.info("  %-11s %s", root["category"], root["path"])
        if result["dump_transfer"] and result["database"]:
            tool = tools.named(result["backup_tool"])
            logger.info("%s", tool.describe_transfer(result["dump_transfer"] == "stream", result["dump_transfer_reason"]))
        for note in result["notes"]:
            logger.info("%s", note)
    if args.json:
        print_json(result)
    if args.dry_run:
        for problem in result["problems"][1:]:
            logger.warning("preflight: %s", problem)
        if result["problems"]:
            raise EmgBorgError(backup.preflight_message(result["problems"]))
        logger.info("preflight checks passed")
    return EXIT_OK


def release_run(args, manager) -> int:
    from emg_borg.lifecycle import release
    outcome = release.release_backup(_config(args, manager), manager, force=args.force, repository=args.repository,
                                     dry_run=args.dry_run, borgmatic_config=args.borgmatic_config,
                                     command=args.command)
    logger.info("%s: %s", args.command, outcome)
    return EXIT_OK


def discover(args, manager) -> int:
    config = _config(args, manager)
    data = manager.hook.emg_borg_discover_layout(config=config).to_dict()
    if args.json:
        print_json(data)
        return EXIT_OK
    out = sys.stdout
    out.write(f"EMGDIR      {data['emgdir']}\nserver.cfg  {data['server_cfg']}\nSPOOLDIR    {data['spooldir']}\n")
    out.write(f"logs        {data['logdir'] or '(none found)'}\nexecutables {data['bindir'] or '(none found)'}\n")
    db = data["database"]
    profile = f"{db['database']} (profile {db['profile']}, {db['user']}@{db['host']}:{db['port']})" if db else "(no DBPROFILE)"
    out.write(f"database    {profile}\n")
    if data["node_id"] is not None:
        out.write(f"NODEID      {data['node_id']}\n")
    out.write("\nroots:\n")
    for root in data["roots"]:
        out.write(f"  {root['category']:<12}{root['path']}  ({root['why']})\n")
    if data["references"]:
        out.write("\nfiles referenced by server.cfg:\n")
        for ref in data["references"]:
            where = f" in {ref['block']}" if ref["block"] else ""
            missing = "" if ref["exists"] else "  MISSING"
            out.write(f"  line {ref['line']:<4} {ref['keyword']}={ref['value']}{where} -> {ref['path']} "
                      f"[{ref['category']}]{missing}\n")
    return EXIT_OK


def check_installation(args, manager) -> int:
    from emg_borg.lifecycle import doctor
    checks = doctor.doctor(args.config, manager, args.borgmatic_config)
    if args.json:
        print_json({"ok": not doctor.failed(checks),
                    "checks": [{**check.to_dict(), "detail": shortened(check.detail, LINE_LIMIT)} for check in checks]})
    else:
        for check in checks:  # a FAIL line quotes an error: as short as the error lines on stderr
            print(shortened(f"{check.status:<4} {check.name:<13} {check.detail}", LINE_LIMIT))
    return EXIT_FAILURE if doctor.failed(checks) else EXIT_OK


def config(args, manager) -> int:
    from emg_borg.lifecycle import session
    from emg_borg.lifecycle.providers import check_configured
    if args.config_command == "generate":
        sys.stdout.write(session.sample_config(manager))
        return EXIT_OK
    check_configured(session.load_config(args.config, manager), manager.hook)
    logger.info("%s: configuration is valid", args.config)
    return EXIT_OK


def list_archives(args, manager) -> int:
    from emg_borg.lifecycle import archives, extract
    repository = archives.resolve_repository(args.repository, args.borgmatic_config, _tool(args, manager))
    nodes = archives.NodeChoice(args.host, args.node, args.any_node)  # every node's unless narrowed
    rows = [{**a.summary(), "node": archives.Node.of(a.manifest).label}
            for a in archives.emg_archives(repository, nodes)]
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        logger.info("no emg-borg archives (archives without emg-borg/manifest.json do not count)")
        return EXIT_OK
    width = max(len("node"), *(len(row["node"]) for row in rows))
    print(f"{'time':<25} {'message id':>12} {'provider':<9} {'freeze ms':>10} {'dump':>10}  {'node':<{width}}  archive")
    for row in rows:
        freeze = "-" if row["freeze_window_ms"] is None else f"{row['freeze_window_ms']:.1f}"
        dump = "-" if row["dump_bytes"] is None else extract.human_size(row["dump_bytes"])
        print(f"{row['time']:<25} {str(row['message_id']):>12} {str(row['snapshot_provider']):<9} {freeze:>10} "
              f"{dump:>10}  {row['node']:<{width}}  {row['name']}")
    return EXIT_OK


def patterns(args, manager) -> int:
    from emg_borg.lifecycle import extract
    sys.stdout.write(extract.patterns_of(_selection(args, manager), args.categories))
    return EXIT_OK


def extract_archive(args, manager) -> int:
    from emg_borg.lifecycle import extract
    if args.dry_run:
        extract.check_destination(args.destination, args.in_place)
        result = extract.extract_plan(_selection(args, manager), args.categories)
        if args.json:
            print_json(result)
            return EXIT_OK
        print(f"dry run: would extract from {result['archive']}:")
        for category, items in result["categories"].items():
            size = sum(item.get("size") or 0 for item in items)
            print(f"{category} ({len(items)} items, {extract.human_size(size)}):")
            for item in items:
                print(f"  {item['path']}")
        return EXIT_OK
    result = extract.extract_categories(_selection(args, manager), args.categories, args.destination, args.in_place)
    if args.json:
        print_json(result)
    else:
        print(f"extracted {', '.join(result['categories'])} of {result['archive']} into {result['destination']} "
              f"({result['items']} items)")
    return EXIT_OK


def restore_archive(args, manager) -> int:
    from emg_borg.lifecycle import restore
    request = restore.RestoreRequest(
        selection=_selection(args, manager), categories=args.categories, skip_data=args.skip_data, message_id=args.message_id,
        load_database=args.database, force_database=args.force_database, force=args.force, target=args.target,
        dry_run=args.dry_run, old_spool=args.old_spool,
    )
    result = restore.restore(_config(args, manager, required=False), manager, request)
    if args.json:
        print_json(result.to_dict())
        return EXIT_FAILURE if result.not_restored else EXIT_OK
    heading = "dry run: would restore" if result.dry_run else "restored"
    if result.not_restored:
        heading = f"restore INCOMPLETE ({len(result.not_restored)} path(s) could not be written): restored"
    print(f"{heading} from {result.archive} ({result.time}, {result.age} old, message id {result.message_id}) into "
          f"{result.target}")
    for line in result.done:
        print(f"  done: {line}")
    print("still to do:")
    for line in result.todo:
        print(f"  - {line}")
    if result.not_restored:
        shown = "; ".join(result.not_restored[:3]) + (f"; and {len(result.not_restored) - 3} more"
                                                       if len(result.not_restored) > 3 else "")
        logger.error("restore incomplete: borg could not write %d path(s): %s", len(result.not_restored), shown)
        return EXIT_FAILURE
    return EXIT_OK


def verify_archive(args, manager) -> int:
    from emg_borg.lifecycle import verify
    verdict = verify.verify(_config(args, manager, required=False), manager, _selection(args, manager), load_dump=args.load_dump,
                            scratch_db=args.scratch_db, scratch_dir=args.scratch_dir)
    if args.json:
        print_json(verdict.to_dict())
        (logger.info if verdict.ok else logger.error)("%s", verdict.line())
    else:
        print(verdict.line() if verdict.ok else shortened(verdict.line(), LINE_LIMIT))  # a failure: an error line
    return EXIT_OK if verdict.ok else EXIT_FAILURE


COMMANDS = {
    "before-backup": before_backup,
    "after-backup": release_run,
    "on-error": release_run,
    "discover": discover,
    "doctor": check_installation,
    "config": config,
    "archives": list_archives,
    "patterns": patterns,
    "extract": extract_archive,
    "restore": restore_archive,
    "verify": verify_archive,
}
