"""restic (0.14 and newer): the version, listing snapshots, the repository's id, reading one file
of a snapshot, listing and restoring paths of a snapshot.

The repository and its password reach restic the way restic users give them: in the environment
(`RESTIC_REPOSITORY`, `RESTIC_PASSWORD_FILE`, `RESTIC_PASSWORD_COMMAND`, ...), passed through in
`env`, never in argv (a `rest:` URL may carry a password). Reads take no repository lock
(`--no-lock`): they work on a read-only or append-only repository, and a restic that is stopped
leaves no stale lock behind. Every restic is started to die with emg-borg (even by SIGKILL: a
listing over a stalled SFTP connection would otherwise run on). Errors become one line: restic's
own last error line.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess

from emg_borg.core.backup_tool import CREDENTIALS
from emg_borg.errors import CommandError
from emg_borg.external.execute import describe, die_with_parent, last_line, run, stated_version

logger = logging.getLogger(__name__)

RESTIC = "restic"
READ = ("--no-lock",)
NOT_FOUND = re.compile(r'path "?.*"? not found in snapshot|no matching ID found|cannot dump file: path')
IGNORED = re.compile(r"^ignoring error for (?P<path>/.*?): (?P<error>.*)$")


def _error(what: str, result) -> CommandError:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    said = [line.removeprefix("Fatal: ").strip() for line in stderr.splitlines()
            if line.strip() and not line.startswith(("Is there a repository", "/"))]
    reason = (said[-1] if said else "") or last_line(stderr) or "no error output"
    # restic names the repository in its errors; a `rest:` URL may carry a password.
    reason = CREDENTIALS.sub(r"\g<user>:***@", reason)
    return CommandError(f"{what} failed (exit {result.returncode}): {reason}", result.returncode,
                        CREDENTIALS.sub(r"\g<user>:***@", stderr))


def _run(argv: tuple, what: str, env=None) -> str:
    result = run(argv, check=False, env=env, dies_with_us=True)
    if result.returncode != 0:
        raise _error(what, result)
    return result.stdout


def version(command=(RESTIC,)) -> str:
    """The version `restic version` states ("0.14.0")."""
    return stated_version((*command, "version"), r"restic (\d+\.\d+(?:\.\d+)?\S*)")


def snapshots(env=None) -> list[dict]:
    """`restic snapshots --json`: every snapshot, each with `id`, `short_id`, `time` (RFC 3339),
    `hostname`, `paths` and `tags`."""
    return json.loads(_run((RESTIC, *READ, "snapshots", "--json"), "restic snapshots", env) or "[]") or []


def repository_id(env=None) -> str:
    """The repository's id (`restic cat config`): the same wherever the repository is reached from."""
    return json.loads(_run((RESTIC, *READ, "cat", "config"), "restic cat config", env))["id"]


def dump(snapshot: str, path: str, env=None) -> bytes | None:
    """The content of file `path` (as stored) of a snapshot; None when the snapshot has no such file."""
    argv = (RESTIC, *READ, "dump", snapshot, path)
    logger.debug("running: %s", describe(argv))
    try:
        result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=die_with_parent)
    except FileNotFoundError:
        raise CommandError(f"{RESTIC}: command not found (apt-get install restic)")
    if result.returncode == 0:
        return result.stdout
    if NOT_FOUND.search(result.stderr.decode(errors="replace")):
        return None
    raise _error(f"restic dump {path} from {snapshot}", result)


def ls(snapshot: str, paths, env=None, recursive=True) -> list[dict]:
    """The nodes under the stored `paths` of a snapshot (recursively, or the paths and their
    children), each with `path`, `type` (file, dir, symlink, ...) and `size`."""
    if not paths:
        return []
    deep = ("--recursive",) if recursive else ()
    out = _run((RESTIC, *READ, "ls", "--json", *deep, snapshot, *paths), f"restic ls {snapshot}", env)
    nodes = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [node for node in nodes if node.get("struct_type") == "node"]


def pattern_of(path: str) -> str:
    """`path` as a restic pattern matching it alone: restic matches each component like Go's
    filepath.Match, where `\\`, `*`, `?` and `[` are special."""
    return re.sub(r"([\\*?\[])", r"\\\1", path)


def restore(snapshot: str, target, includes, env=None) -> list[tuple[str, str]]:
    """`restic restore SNAPSHOT --target TARGET --include ...`: the stored paths `includes` (and
    what lies below them) restored under `target`. Returns (stored path, error) for each path
    restic could not write (its "ignoring error for" lines, exit 1); other failures raise."""
    argv = (RESTIC, *READ, "restore", snapshot, "--target", str(target),
            *(f"--include={pattern_of(p)}" for p in includes))
    result = run(argv, check=False, env=env, dies_with_us=True)
    ignored = [(m["path"], m["error"]) for m in map(IGNORED.match, result.stderr.splitlines()) if m]
    if result.returncode == 0 or (result.returncode == 1 and ignored):
        return ignored
    raise _error(f"restic restore {snapshot}", result)
