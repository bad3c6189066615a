"""The `emg-borg` command line.

Every command logs human-readable lines on stderr (borgmatic shows them), prints machine output
(`--json`) on stdout, and exits 0 (ok), 1 (failure; everything started was released) or 2 (bad
usage or configuration; nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from emg_borg import __version__, config as config_module
from emg_borg.emg.categories import DEFAULT_SELECTION
from emg_borg.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EmgBorgError, UsageError

logger = logging.getLogger("emg_borg")


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "emg-borg: "
        if record.levelno >= logging.ERROR:
            prefix += "error: "
        elif record.levelno >= logging.WARNING:
            prefix += "warning: "
        text = prefix + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.INFO, 1: logging.DEBUG}.get(max(-1, min(verbosity, 1)), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("emg_borg")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _add_selection(parser) -> None:
    """Archive selection shared by extract, restore, verify and archives."""
    parser.add_argument("--repository", help="borg repository (default: the first of --borgmatic-config, else $BORG_REPO)")
    parser.add_argument("--borgmatic-config", help="take the repository from this borgmatic configuration")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--archive", default=None, help="archive name, or 'latest' (default)")
    group.add_argument("--at", metavar="WHEN", help="the newest archive created at or before WHEN (local time unless a zone is given)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emg-borg", description="Consistent borg backups and guided restores of the EMG SMS gateway.")
    parser.add_argument("--version", action="version", version=f"emg-borg {__version__}")
    parser.add_argument("-c", "--config", default=str(config_module.DEFAULT_CONFIG_PATH), help="TOML configuration (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("before-backup", help="freeze the consistency point and write the borg patterns file")
    p.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("--repository", help="the repository borgmatic is backing up to (borgmatic's {repository})")
    p.add_argument("--json", action="store_true", help="print the manifest (or the dry-run plan) as JSON")

    for name, text in (("after-backup", "release the snapshot, mounts, staging area and lock"),
                       ("on-error", "release everything after a failed backup (same as after-backup)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dry-run", action="store_true", help="list what would be released")
        p.add_argument("--repository", help="the repository borgmatic backed up to, to name an untrustworthy archive")
        p.add_argument("--force", action="store_true", help="release even if another live process holds the run lock")

    p = sub.add_parser("discover", help="show the EMG layout and the category of each root")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("config", help="generate or validate a configuration")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    config_sub.required = True
    config_sub.add_parser("generate", help="print a commented sample configuration")
    config_sub.add_parser("validate", help="check the configuration given with -c")

    p = sub.add_parser("archives", help="list emg-borg archives, newest first")
    _add_selection(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("patterns", help="print a borg patterns file selecting categories of an archive")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION, help="comma-separated (default %(default)s)")

    p = sub.add_parser("extract", help="extract categories of an archive")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION, help="config,data,database,logs,executables or all (default %(default)s)")
    p.add_argument("--destination", help="directory to extract into (default: a new directory)")
    p.add_argument("--in-place", action="store_true", help="extract over / (the live paths)")
    p.add_argument("--dry-run", action="store_true", help="list what would be extracted, by category")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("restore", help="recover EMG on this machine from an archive")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION)
    p.add_argument("--skip-data", action="store_true", help="restore configuration and seqno only, not the spool")
    p.add_argument("--message-id", type=int, help="a message id known to have been used (the highest wins)")
    p.add_argument("--database", action="store_true", help="load the dump even into a database that has tables")
    p.add_argument("--force-database", action="store_true", help="allow overwriting a non-empty database")
    p.add_argument("--force", action="store_true", help="restore even while emgd runs")
    p.add_argument("--target", default="/", help=argparse.SUPPRESS)  # tests restore into a chroot-like tree
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("verify", help="restore drill into a scratch directory; changes nothing live")
    _add_selection(p)
    p.add_argument("--load-dump", action="store_true", help="also load the dump into --scratch-db")
    p.add_argument("--scratch-db", help="throwaway database: NAME, or user@host:port/NAME or socket:/path/NAME")
    p.add_argument("--scratch-dir", help="where to extract (default: a temporary directory, removed afterwards)")
    p.add_argument("--json", action="store_true")
    return parser


def print_json(data) -> None:
    """Machine output for monitoring: JSON on stdout (messages go to stderr)."""
    print(json.dumps(data, indent=2, default=str))


def _load_config(args):
    return config_module.load(args.config)


def cmd_before_backup(args):
    from emg_borg.lifecycle import backup

    result = backup.before_backup(_load_config(args), dry_run=args.dry_run, repository=args.repository)
    if args.dry_run and not args.json:
        logger.info("dry run: nothing changed. Would back up %s with snapshot provider %s:",
                    ", ".join(result["categories"]), result["snapshot_provider"])
        for root in result["roots"]:
            logger.info("  %-11s %s", root["category"], root["path"])
    if args.json:
        print_json(result)
    if args.dry_run:
        for problem in result["problems"][1:]:
            logger.warning("preflight: %s", problem)
        if result["problems"]:
            raise EmgBorgError(backup.preflight_message(result["problems"]))
        logger.info("preflight checks passed")
    return EXIT_OK


def cmd_release(args):
    from emg_borg.lifecycle import backup

    outcome = backup.release_backup(_load_config(args), force=args.force, repository=args.repository, dry_run=args.dry_run)
    logger.info("%s: %s", args.command, outcome)
    return EXIT_OK


def cmd_discover(args):
    from emg_borg.lifecycle.backup import new_run

    config = _load_config(args)
    run = new_run(config)
    layout = run.hook.emg_borg_discover_layout(config=config)
    data = layout.to_dict()
    if args.json:
        print_json(data)
        return EXIT_OK
    out = sys.stdout
    out.write(f"EMGDIR      {data['emgdir']}\nserver.cfg  {data['server_cfg']}\nSPOOLDIR    {data['spooldir']}\n")
    out.write(f"logs        {data['logdir'] or '(none found)'}\nexecutables {data['bindir'] or '(none found)'}\n")
    db = data["database"]
    out.write(f"database    {'%s (profile %s, %s@%s:%s)' % (db['database'], db['profile'], db['user'], db['host'], db['port']) if db else '(no DBPROFILE)'}\n")
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
            out.write(f"  line {ref['line']:<4} {ref['keyword']}={ref['value']}{where} -> {ref['path']} [{ref['category']}]{missing}\n")
    return EXIT_OK


def cmd_config(args):
    if args.config_command == "generate":
        sys.stdout.write(config_module.sample())
        return EXIT_OK
    from emg_borg.lifecycle.backup import check_provider
    from emg_borg.plugins import get_plugin_manager

    check_provider(config_module.load(args.config), get_plugin_manager().hook)
    logger.info("%s: configuration is valid", args.config)
    return EXIT_OK


def _restore_command(name):
    def command(args):
        from emg_borg.lifecycle import restore

        return getattr(restore, f"cmd_{name}")(args, _load_config(args) if _config_exists(args) else None)

    return command


def _config_exists(args) -> bool:
    import os

    return os.path.exists(args.config)


COMMANDS = {
    "before-backup": cmd_before_backup,
    "after-backup": cmd_release,
    "on-error": cmd_release,
    "discover": cmd_discover,
    "config": cmd_config,
    "archives": _restore_command("archives"),
    "patterns": _restore_command("patterns"),
    "extract": _restore_command("extract"),
    "restore": _restore_command("restore"),
    "verify": _restore_command("verify"),
}


def main(argv=None) -> int:
    setup_logging(0)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    setup_logging(args.verbose - args.quiet)
    try:
        return COMMANDS[args.command](args) or EXIT_OK
    except EmgBorgError as error:
        logger.error("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback with -v
        logger.debug("traceback", exc_info=True)
        logger.error("unexpected %s: %s (run with -v for a traceback)", type(error).__name__, error)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
