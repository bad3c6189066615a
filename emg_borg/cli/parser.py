"""The command line's grammar: every command and option, each with its help text."""

from __future__ import annotations

import argparse

from emg_borg import __version__
from emg_borg.config import DEFAULT_CONFIG_PATH
from emg_borg.emg.categories import CATEGORIES, DEFAULT_SELECTION
from emg_borg.errors import UsageError

JSON_HELP = "print the result as JSON on stdout (messages stay on stderr)"
CATEGORY_HELP = f"comma-separated categories: {', '.join(CATEGORIES)} or all (default %(default)s)"


class ArgumentError(UsageError):
    """A command line argparse rejected; carries the usage line of the (sub)command."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else None
        raise ArgumentError(f"{command}: {message}" if command else message, self.format_usage().rstrip())


def _add_selection(parser) -> None:
    """Archive selection shared by archives, patterns, extract, restore and verify."""
    parser.add_argument("--repository", metavar="REPO",
                        help="borg repository (default: the first of --borgmatic-config, else $BORG_REPO); with "
                             "--borgmatic-config also the label or path of one of its repositories")
    parser.add_argument("--borgmatic-config", metavar="FILE",
                        help="take the repository and what borg needs to read it (passphrase, ssh_command, "
                             "remote_path, key directory, archive names) from this borgmatic configuration")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--archive", metavar="NAME", default=None, help="archive name, or 'latest' (default)")
    group.add_argument("--at", metavar="WHEN",
                       help="the newest archive created at or before WHEN, e.g. '2026-11-20 14:00' (local time "
                            "unless a zone is given)")
    parser.add_argument("--host", metavar="NAME", help="choose among the archives of the node with this hostname "
                                                       "(default: this machine's)")
    parser.add_argument("--node", metavar="N", type=int,
                        help="choose among the archives of the node with this NODEID (default: this machine's, "
                             "from server.cfg)")
    parser.add_argument("--any-node", action="store_true", help="choose among the archives of every node")


def _command(sub, name: str, summary: str, description: str | None = None):
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emg-borg", description="Consistent borg backups and guided restores of the EMG SMS gateway, "
                                                  "run by borgmatic as command hooks.")
    parser.add_argument("--version", action="version", version=f"emg-borg {__version__}", help="show the version")
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG_PATH), metavar="PATH",
                        help="emg-borg's TOML configuration (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug messages)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = _command(sub, "before-backup", "freeze the consistency point and write the borg patterns file",
                 "Run by borgmatic before `borg create`: snapshot the spool, read the message id and start the "
                 "database dump in one consistency point, then stage manifest, dump and seqno and write the "
                 "patterns file named in borgmatic's patterns_from.")
    p.add_argument("--dry-run", action="store_true",
                   help="show the plan and run the preflight checks (database login, privileges, commands); "
                        "change nothing")
    p.add_argument("--repository", help="the repository borgmatic is backing up to (borgmatic's {repository})")
    p.add_argument("--borgmatic-config", metavar="FILE",
                   help="borgmatic's configuration ({configuration_filename}): with read_special: true and one "
                        "repository the dump streams into borg through a named pipe ([backup] stream_dumps)")
    p.add_argument("--json", action="store_true", help="print the manifest (or the dry-run plan) as JSON on stdout")

    for name, text in (("after-backup", "release the snapshot, mounts, staging area and run lock"),
                       ("on-error", "release everything after a failed backup (same as after-backup)")):
        p = _command(sub, name, text, f"Run by borgmatic after the backup{' fails' if name == 'on-error' else ''}: "
                                      f"{text}. Idempotent; leaves another live run's resources alone.")
        p.add_argument("--dry-run", action="store_true", help="list what would be released; release nothing")
        p.add_argument("--repository", help="the repository borgmatic backed up to, to name an untrustworthy archive")
        p.add_argument("--borgmatic-config", metavar="FILE",
                       help="borgmatic's configuration ({configuration_filename}): name an untrustworthy archive "
                            "in each of its repositories")
        p.add_argument("--force", action="store_true", help="release even if another live process holds the run lock")

    p = _command(sub, "doctor", "check everything a backup needs; change nothing",
                 "Check, changing nothing, everything a backup needs: the configuration, server.cfg, SPOOLDIR and "
                 "its snapshots, runtime_dir and its free space, borg and borgmatic, each plugin's preflight "
                 "(database login, privileges, the [seqno] query) and, with --borgmatic-config, borgmatic's hooks, "
                 "patterns_from and repository. One line per check (ok, warn, FAIL); exit 1 if any FAIL.")
    p.add_argument("--borgmatic-config", metavar="FILE",
                   help="also check this borgmatic configuration (hooks, patterns_from) and its first repository")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = _command(sub, "discover", "show the EMG layout found from server.cfg and the category of each root")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = _command(sub, "config", "generate a sample configuration, or validate one")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    config_sub.required = True
    _command(config_sub, "generate", "print a commented sample configuration with every key and its default")
    _command(config_sub, "validate", "check the configuration given with -c; list every error with its line")

    p = _command(sub, "archives", "list emg-borg archives, newest first")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = _command(sub, "patterns", "print a borg patterns file selecting categories of an archive",
                 "Print a borg patterns file selecting categories of an archive, for "
                 "`borg extract --patterns-from FILE` run in the target directory.")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION, help=CATEGORY_HELP)

    p = _command(sub, "extract", "extract categories of an archive into a directory (or in place)")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION, help=CATEGORY_HELP)
    p.add_argument("--destination", metavar="DIR", help="empty or new directory to extract into (default: a new "
                                                        "directory emg-borg-ARCHIVE here)")
    p.add_argument("--in-place", action="store_true", help="extract over the live paths (with --destination: over DIR)")
    p.add_argument("--dry-run", action="store_true", help="list what would be extracted, by category; write nothing")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = _command(sub, "restore", "recover EMG on this machine from an archive",
                 "Recover EMG on this machine from an archive, following the vendor's recovery steps: refuse "
                 "while emgd runs, move the old spool aside, extract configuration and spool over the live "
                 "paths, load the database dump into an empty database, write SPOOLDIR/seqno so message ids "
                 "never go backwards, and print a checklist of what is left to do.")
    _add_selection(p)
    p.add_argument("--categories", default=DEFAULT_SELECTION, help=CATEGORY_HELP)
    p.add_argument("--skip-data", action="store_true",
                   help="do not restore the spool (queues, delivery reports); keep the live one")
    p.add_argument("--message-id", type=int, metavar="N",
                   help="a message id known to have been used; the highest known id (plus the margin) wins")
    p.add_argument("--database", action="store_true",
                   help="load the dump even when the database already has tables (with --force-database)")
    p.add_argument("--force-database", action="store_true",
                   help="drop a non-empty database and recreate it from the dump (implies --database)")
    p.add_argument("--force", action="store_true", help="restore even while emgd runs")
    p.add_argument("--old-spool", action="store_true",
                   help="restore a spool older than [restore] max_spool_age (its messages may be sent twice)")
    p.add_argument("--target", default="/", help=argparse.SUPPRESS)  # tests restore into a chroot-like tree
    p.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = _command(sub, "verify", "restore drill into a scratch directory; changes nothing live",
                 "A restore drill: extract configuration, spool and dumps into a scratch directory, check the "
                 "dumps against the manifest, parse server.cfg and check seqno; with --load-dump also load "
                 "each dump into a throwaway database. Exit 0 and one 'verify OK' line, or 1.")
    _add_selection(p)
    p.add_argument("--load-dump", action="store_true", help="also load each dump into --scratch-db and drop it again")
    p.add_argument("--scratch-db", metavar="SPEC",
                   help="throwaway database: NAME, user@host:port/NAME or user@socket:/path/NAME")
    p.add_argument("--scratch-dir", metavar="DIR", help="where to extract (default: a temporary directory, removed "
                                                        "afterwards)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    return parser
