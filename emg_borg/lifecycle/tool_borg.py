"""borg 1.4 as the backup tool (`[backup] tool = "borg"`, the default).

Backup side: borgmatic runs `borg create` with the patterns file before-backup writes
(`patterns_from`): the plugins' pattern lines with `/./` roots, so files read from the snapshot
and the staging area are archived under their live paths, and `-` lines for the named pipes and
devices under the roots (borg with `read_special`, which a streamed dump needs, would block on
them). Restore side: `borg list`, `borg extract --stdout` of one member, `borg extract` with a
patterns file built from the manifest's category roots, in the destination directory.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import tempfile
from pathlib import Path

from emg_borg import __version__
from emg_borg.core.backup_tool import BackupTool, Item, Listed, Listing
from emg_borg.core.files import write_private
from emg_borg.emg import categories as category_module
from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external import borg
from emg_borg.external.execute import run as run_command
from emg_borg.lifecycle import borg_version, transfer
from emg_borg.lifecycle.checks import FAIL, OK, WARN, Check

logger = logging.getLogger(__name__)


def archive_time(entry: dict) -> datetime.datetime:
    """borg's start time of an archive (local, without zone) as an aware datetime, to the second."""
    naive = datetime.datetime.fromisoformat(entry.get("start") or entry["time"])
    return naive.replace(microsecond=0).astimezone()


@contextlib.contextmanager
def patterns_file(lines, directory=None):
    """A private temporary borg patterns file holding `lines`, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="emg-borg-patterns-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def special_file_exclusions(run, lines: list[str]) -> list[str]:
    """`-` lines for every FIFO and device under the roots borg walks (paths as borg sees them,
    before the `/./`): with read_special, which streaming needs, borg would block on one."""
    found = []
    for line in lines:
        if line.startswith("R ") and not line[2:].startswith(f"{run.runtime.staging}/"):
            found += transfer.special_files(line[2:].replace("/./", "/", 1))
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        run.warnings.append(f"not archived: {len(found)} named pipe(s) or device(s) in the EMG tree ({shown}); "
                            f"borg with read_special would block reading them")
        logger.warning("%s", run.warnings[-1])
    return [f"- pp:{path}" for path in found]


def staged_roots(run) -> list[str]:
    """The `R` roots of emg-borg's own archive members, the dumps first: borg reads its roots in
    order, and a streamed manifest is served only after every streamed dump has passed."""
    top = run.runtime.staging / "emg-borg"
    members = sorted(top.iterdir(), key=lambda path: (path.name != "dumps", path.name))
    return [f"R {run.runtime.staging}/./emg-borg/{path.name}" for path in members]


def _version_line(argv) -> str | None:
    try:
        result = run_command(argv, timeout=30)
    except CommandError:
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


class Borg(BackupTool):
    name = "borg"
    selection_name = "patterns"
    selection_label = "patterns file"
    line_label = "pattern lines"
    repository_advice = "pass --borgmatic-config {configuration_filename}"

    def preflight(self, run) -> list[str]:
        # First: with a borg older than 1.4 (or none) nothing else matters: it would archive a wrong tree.
        too_old, _ = borg_version.check(run.borgmatic_config)
        return [too_old] if too_old else []

    def transfer(self, run) -> list[str]:
        problems = []
        if run.borgmatic_config:
            problems += transfer.overlaps(run.runtime.root, run.borgmatic_config, self.selection_path(run.runtime))
        if "database" in run.categories:
            run.stream_dumps, run.transfer_reason, streaming = transfer.choose(run, run.borgmatic_config)
            run.keep_streams = (run.stream_dumps and bool(run.borgmatic_config)
                                and transfer.retries(run.borgmatic_config) > 0)
            problems += streaming
        return problems

    def describe_transfer(self, streaming: bool, why: str) -> str:
        return transfer.describe(streaming, why)

    def collect(self, run, lines: list[str]) -> list[str]:
        return special_file_exclusions(run, lines) + lines  # first: borg's first matching pattern wins

    def write_selection(self, run, collected: list[str]) -> int:
        lines = [
            f"# borg patterns written by emg-borg {__version__} for run {run.run_id} at {run.started}",
            "# Read by borgmatic through patterns_from; rewritten by every before-backup.",
            *staged_roots(run),
            *collected,
        ]
        text = "\n".join(dict.fromkeys(lines)) + "\n"
        write_private(self.selection_path(run.runtime), text)
        return len(text.splitlines())

    def doctor(self, run, borgmatic_config) -> list[Check]:
        """The borg borgmatic runs (its `local_path`, else `borg` on PATH), and borgmatic."""
        try:
            problem, found = borg_version.check(borgmatic_config)
        except EmgBorgError as error:  # an unreadable borgmatic configuration: its own check says so
            problem, found = str(error), ""
        checks = [Check("borg", FAIL, problem) if problem else Check("borg", OK, found)]
        found = _version_line(("borgmatic", "--version"))
        if found is None:
            checks.append(Check("borgmatic", WARN, "borgmatic: not found on PATH (needed unless a script runs the hooks)"))
        else:
            checks.append(Check("borgmatic", OK, f"borgmatic {found} ({shutil.which('borgmatic')})"))
        return checks

    # restore side
    def listing(self, repository) -> Listing:
        data = borg.list_repository(repository.location, env=repository.env, glob=repository.match_archives)
        entries = [Listed(e["name"], e.get("id") or e["name"], archive_time(e)) for e in data["archives"]]
        return Listing(data["repository"]["id"], entries)

    def read(self, repository, listed: Listed, path: str) -> bytes | None:
        return borg.read_file(repository.location, listed.name, path, env=repository.env)

    def read_member(self, repository, archive, path: str) -> bytes | None:
        return borg.read_file(repository.location, archive.name, path, env=repository.env)

    @staticmethod
    def _items(found) -> list[Item]:
        return [Item(item["path"], item.get("type"), item.get("size", 0)) for item in found]

    def members(self, repository, archive, paths) -> list[Item]:
        return self._items(borg.list_items(repository.location, archive.name, paths=tuple(paths), env=repository.env))

    def plan(self, repository, archive, selected) -> list[Item]:
        with patterns_file(category_module.pattern_lines(archive.manifest.categories, selected)) as patterns:
            return self._items(borg.list_items(repository.location, archive.name, patterns, env=repository.env))

    def extract(self, repository, archive, selected, destination, progress=None):
        lines = category_module.pattern_lines(archive.manifest.categories, selected)
        with patterns_file(lines) as patterns:
            return borg.extract(repository.location, archive.name, patterns, destination, progress, env=repository.env)
