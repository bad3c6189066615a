"""The `emg-borg` command line: parsing (`parser`), printing (`commands`), logging and exit codes.

Every command logs human-readable lines on stderr (borgmatic shows them), prints machine output
(`--json`) on stdout, and exits 0 (ok), 1 (failure; everything started was released) or 2 (bad
usage or configuration; nothing was changed). No line it logs is longer than `LINE_LIMIT`
characters: a longer one keeps its head and tail around its length.
"""

from __future__ import annotations

import logging
import sys

from emg_borg.cli.commands import COMMANDS
from emg_borg.cli.parser import ArgumentError, build_parser
from emg_borg.core.progress import PROGRESS
from emg_borg.errors import EXIT_FAILURE, EXIT_USAGE, LINE_LIMIT, ConfigError, EmgBorgError, describe, shortened
from emg_borg.lifecycle.session import plugin_manager

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
        # Here every error, warning and traceback becomes lines: one bound for them all, whatever
        # value a message or an exception carried.
        return "\n".join(shortened(line, LINE_LIMIT) for line in text.split("\n"))


def setup_logging(verbosity: int) -> None:
    # Progress of long steps on a terminal only: borgmatic's log and cron mail get the summaries.
    normal = PROGRESS if sys.stderr.isatty() else logging.INFO
    level = {-1: logging.ERROR, 0: normal, 1: logging.DEBUG}.get(max(-1, min(verbosity, 1)), normal)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("emg_borg")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv=None) -> int:
    setup_logging(0)
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as error:
        sys.stderr.write(error.usage + "\n")
        logger.error("%s", error)
        return EXIT_USAGE
    setup_logging(args.verbose - args.quiet)
    try:
        return COMMANDS[args.command](args, plugin_manager()) or 0
    except ConfigError as error:
        for problem in error.problems:  # every problem of a file, one line each
            logger.error("%s", problem)
        return error.exit_code
    except EmgBorgError as error:
        logger.error("%s", error)
        _further(error)
        return error.exit_code
    except KeyboardInterrupt as error:
        logger.error("interrupted")
        _further(error)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback with -v
        logger.debug("traceback", exc_info=True)
        logger.error("unexpected %s: %s (run with -v for a traceback)", type(error).__name__, describe(error))
        _further(error)
        return EXIT_FAILURE


def _further(error: BaseException) -> None:
    """The lines that follow an error: what the cleanup after it could not do."""
    for line in getattr(error, "further", ()):
        logger.error("%s", line)


if __name__ == "__main__":
    raise SystemExit(main())
