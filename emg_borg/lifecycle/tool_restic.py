"""restic (0.14 and newer) as the backup tool (`[backup] tool = "restic"`).

Backup side: before-backup takes the same consistency point and writes `RUNTIME_DIR/restic-files`
for `restic backup --tag emg-borg --files-from-verbatim RUNTIME_DIR/restic-files`: the spool's
snapshot at its stable mount path, the live configuration, executables and logs selected, the
staged `seqno`, the dumps and the manifest (`restic_files`). restic reads no named pipes, so the
dumps are always staged. restic stores what it read: the manifest's `stored_roots` say which live
path each stored root stands for, and the restore side maps every path back.

Restore side: the repository and its password come the way restic users give them (see
`emg_borg.lifecycle.repository`); `restic snapshots --json` lists the snapshots, emg-borg's own
found by the tag `emg-borg` or by the manifest among their paths; `restic dump` reads one file;
`restic ls` lists; `restic restore --include` extracts (`restic_restore`).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil

from emg_borg.core.backup_tool import BackupTool, Item, Listed, Listing
from emg_borg.core.files import write_private
from emg_borg.core.manifest import ARCHIVE_PATH
from emg_borg.errors import CommandError, EmgBorgError
from emg_borg.external import restic
from emg_borg.external.execute import run as run_command
from emg_borg.lifecycle import restic_files, restic_restore
from emg_borg.lifecycle.checks import FAIL, OK, WARN, Check
from emg_borg.lifecycle.repository import restic_location

logger = logging.getLogger(__name__)

TAG = "emg-borg"
NO_PIPES = '[backup] tool = "restic": restic reads no named pipes'
REPOSITORY_VARIABLES = ("RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE")
PASSWORD_VARIABLES = ("RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND", "RESTIC_PASSWORD")
# restic 0.14 compares a file's mtime, size, ctime and inode with the parent snapshot's; a Btrfs,
# ZFS or LVM snapshot at the same stable path keeps all four, so nothing more is needed (measured:
# README "restic").
BACKUP_OPTIONS = f"--tag {TAG} --files-from-verbatim"


def snapshot_time(text: str) -> datetime.datetime:
    """restic's RFC 3339 time (nanoseconds, `Z`) as an aware datetime, to the second."""
    return datetime.datetime.fromisoformat(re.sub(r"\.\d+", "", text).replace("Z", "+00:00"))


def manifest_path(snapshot: dict) -> str | None:
    """Where an emg-borg snapshot holds its manifest: the path named in its list of paths."""
    return next((p for p in snapshot.get("paths") or () if p.endswith(f"/{ARCHIVE_PATH}")), None)


SFTP = re.compile(r"^sftp:(?://(?:(?P<url_user>[^@/]+)@)?(?P<url_host>[^:/]+)(?::(?P<port>\d+))?/"
                  r"|(?:(?P<user>[^@:/]+)@)?(?P<host>[^:/]+):)")
# What the ssh that restic starts for an `sftp:` repository must be told, or restic waits for ever.
SSH_SETTINGS = (
    ("batchmode", lambda value: value == "yes", "BatchMode yes (else it waits at a password or host-key prompt)"),
    ("connecttimeout", lambda value: value != "none", "ConnectTimeout 30 (else it waits for a host that does not answer)"),
    ("serveraliveinterval", lambda value: value != "0",
     "ServerAliveInterval 15 (else it waits for ever for a server that stops answering)"),
)


def ssh_check(location: str) -> Check:
    """The settings `ssh -G` states for the host of an `sftp:` repository, as restic's ssh gets them."""
    found = SFTP.match(location)
    if found is None:
        return Check("ssh", WARN, "the host of the sftp: repository was not recognised; not checked")
    user, host, port = found["url_user"] or found["user"], found["url_host"] or found["host"], found["port"]
    argv = ("ssh", "-G", *(("-p", port) if port else ()), *(("-l", user) if user else ()), host)
    try:
        result = run_command(argv, check=False, timeout=30)
    except CommandError as error:
        return Check("ssh", WARN, str(error))
    settings = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    if result.returncode != 0 or not settings:
        return Check("ssh", WARN, f"ssh -G {host} failed (exit {result.returncode}); the ssh settings were not checked")
    missing = [advice for name, good, advice in SSH_SETTINGS if not good(settings.get(name, ""))]
    if missing:
        return Check("ssh", WARN, f"for {host}, set in root's ~/.ssh/config: " + "; ".join(missing))
    return Check("ssh", OK, f"{host}: BatchMode, ConnectTimeout {settings['connecttimeout']}, ServerAliveInterval "
                            f"{settings['serveraliveinterval']}")


class Restic(BackupTool):
    name = "restic"
    selection_name = "restic-files"
    selection_label = "restic file list"
    line_label = "paths"
    repository_advice = "give the hooks RESTIC_REPOSITORY and RESTIC_PASSWORD_FILE, or pass --repository"
    stores_failed_runs = "restic saves its snapshot and exits 3 when it could not read every file"

    def backup_command(self, runtime) -> str:
        return f"restic backup {BACKUP_OPTIONS} {self.selection_path(runtime)}"

    def hooks_name_repository(self) -> bool:
        return (any(os.environ.get(name) for name in REPOSITORY_VARIABLES)
                and any(os.environ.get(name) for name in PASSWORD_VARIABLES))

    # backup side
    def preflight(self, run) -> list[str]:
        return []  # before-backup does not run restic; the operator's restic backup does

    def transfer(self, run) -> list[str]:
        if "database" not in run.categories:
            return []
        run.stream_dumps, run.transfer_reason = False, NO_PIPES
        if run.config["backup"]["stream_dumps"] == "always":
            return [f'[backup] stream_dumps = "always": {NO_PIPES}; set it to "auto" or "never"']
        return []

    def describe_transfer(self, streaming: bool, why: str) -> str:
        return f"dumps staged as files ({why})"

    def collect(self, run, lines: list[str]) -> restic_files.Selection:
        selection = restic_files.parse(lines)
        selection.stored_roots.setdefault(str(run.runtime.staging), "/")
        restic_files.keep_replaced(selection)
        files, skipped = restic_files.files(selection)
        if skipped:
            run.warnings.append(f"not archived: {len(skipped)} path(s) whose names hold a newline, which restic's "
                                f"--files-from-verbatim cannot name")
        selection.roots = files
        return selection

    def manifest_fields(self, run, collected) -> dict:
        return {"stored_roots": dict(sorted(collected.stored_roots.items())), "staged_root": str(run.runtime.staging)}

    def write_selection(self, run, collected) -> int:
        staged = sorted(str(path) for path in (run.runtime.staging / "emg-borg").iterdir())
        lines = list(dict.fromkeys([*staged, *collected.roots]))
        write_private(self.selection_path(run.runtime), "\n".join(lines) + "\n")
        return len(lines)

    def not_stored(self, repository, archive, selection: list[str]) -> list[str]:
        # restic 0.14 skips a listed path that is gone with a warning and exit 0; one it cannot
        # read (EACCES, EIO) stays among the snapshot's `paths` with nothing stored (exit 3). So
        # the snapshot's tree is asked: the entries of the listed paths' directories.
        listed = [path for path in selection if path]
        if not listed:
            return []
        parents = sorted({os.path.dirname(path) for path in listed})
        stored = {node["path"] for node in restic.ls(archive.id or archive.name, parents, repository.env,
                                                      recursive=False)}
        return [path for path in listed if path not in stored]

    def doctor(self, run, borgmatic_config) -> list[Check]:
        found = shutil.which(restic.RESTIC)
        if found is None:
            checks = [Check("restic", FAIL, "restic: not found on PATH (apt-get install restic)")]
        else:
            try:
                checks = [Check("restic", OK, f"restic {restic.version()} ({found})")]
            except CommandError as error:
                checks = [Check("restic", FAIL, str(error))]
        checks.append(Check("restic files", OK, f"back up with: {self.backup_command(run.runtime)}"))
        if "database" in run.categories:
            stage = "FAIL" if run.config["backup"]["stream_dumps"] == "always" else OK
            checks.append(Check("dumps", stage, f"staged as files under runtime_dir ({NO_PIPES})"))
        given = [name for name in REPOSITORY_VARIABLES + PASSWORD_VARIABLES if os.environ.get(name)]
        if given:
            checks.append(Check("restic env", OK, f"{', '.join(given)} set (values not shown)"))
        else:
            checks.append(Check("restic env", WARN, "no RESTIC_REPOSITORY and no RESTIC_PASSWORD_FILE/COMMAND in "
                                                   "this environment: the repository was not checked"))
        try:
            location = restic_location()
        except EmgBorgError as error:
            location = None
            checks.append(Check("restic env", WARN, str(error)))
        if location and location.startswith("sftp:"):
            checks.append(ssh_check(location))
        return checks

    # restore side
    def listing(self, repository) -> Listing:
        snapshots = restic.snapshots(env=repository.env)
        entries = []
        for snapshot in snapshots:
            path = manifest_path(snapshot)
            if path is None and TAG not in (snapshot.get("tags") or ()):
                continue  # not emg-borg's
            entries.append(Listed(snapshot.get("short_id") or snapshot["id"][:8], snapshot["id"],
                                  snapshot_time(snapshot["time"]), path or ""))
        return Listing(restic.repository_id(env=repository.env), entries)

    def read(self, repository, listed: Listed, path: str) -> bytes | None:
        return restic.dump(listed.id, path, env=repository.env) if path else None

    def read_member(self, repository, archive, path: str) -> bytes | None:
        # The staging area's copy wins (the staged seqno over the snapshot's stale one).
        for stored in reversed(restic_restore.Selected(archive.manifest, ()).stored([path.strip("/")])):
            data = restic.dump(archive.id or archive.name, stored, env=repository.env)
            if data is not None:
                return data
        return None

    def members(self, repository, archive, paths) -> list[Item]:
        selection = restic_restore.Selected(archive.manifest, ())
        return restic_restore.items(archive.id or archive.name, selection, [p.strip("/") for p in paths], repository.env,
                                    keep=lambda path: True)

    def plan(self, repository, archive, selected) -> list[Item]:
        selection = restic_restore.Selected(archive.manifest, selected)
        return restic_restore.items(archive.id or archive.name, selection, selection.tops(), repository.env)

    def extract(self, repository, archive, selected, destination, progress=None):
        selection = restic_restore.Selected(archive.manifest, selected)
        return restic_restore.extract(archive.id or archive.name, selection, destination, repository.env)
