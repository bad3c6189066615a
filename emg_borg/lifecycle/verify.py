"""`emg-borg verify`: a restore drill that changes nothing live.

It extracts an archive's configuration, spool and dumps into a scratch directory and checks what
a restore depends on: each dump's size and sha256 against the manifest, that the restored
server.cfg parses, and that `seqno` holds the manifest's message id. With `--load-dump` each
dump's plugin also loads it into a throwaway database (`--scratch-db`), checks it and drops it
again. The result is a verdict: every check, and one line for monitoring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from emg_borg.core.run import VerifyRun
from emg_borg.core.signals import signals_raise
from emg_borg.emg import servercfg
from emg_borg.errors import EmgBorgError, UsageError, shortened
from emg_borg.lifecycle import extract as extraction
from emg_borg.lifecycle.archives import Selection, select
from emg_borg.lifecycle.restore import archived_layout

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class Verdict:
    archive: str
    time: str
    message_id: int | None
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def line(self) -> str:
        if self.ok:
            return f"verify OK: {self.archive}: " + "; ".join(f"{c.name} {c.detail}" for c in self.checks)
        return f"verify FAILED: {self.archive}: " + "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "archive": self.archive, "time": self.time, "message_id": self.message_id,
                "checks": [dataclasses.asdict(c) for c in self.checks]}


def verify(config, manager, selection: Selection, *, load_dump=False, scratch_db=None, scratch_dir=None) -> Verdict:
    drill = VerifyRun(config=config, layout=None, scratch_db=scratch_db, load_dump=load_dump)
    problems = [p for found in manager.hook.emg_borg_verify_options(verify=drill) for p in found or ()]
    if problems:
        raise UsageError(problems[0])  # before any work
    scratch = Path(scratch_dir).resolve() if scratch_dir else None
    if scratch is not None and scratch.is_dir() and any(scratch.iterdir()):
        raise UsageError(f"--scratch-dir {scratch} is not empty")
    repository, archive = select(selection)
    manifest = archive.manifest
    wanted = tuple(c for c in ("config", "data", "database") if manifest.categories.get(c))
    checks: list[Check] = []
    # SIGTERM/SIGHUP become errors, so the scratch directory (with the decrypted dumps) is removed.
    with signals_raise(), contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(tempfile.mkdtemp(prefix="emg-borg-verify-"))
            stack.callback(shutil.rmtree, scratch, True)
        else:
            scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        extracted = extraction.extract(repository, archive, wanted, scratch)
        if not extracted.complete:
            checks.append(Check("extract", False, extraction.incomplete(extracted, repository)))
        else:
            checks.append(Check("extract", extracted.items > 0, f"{extracted.items} items of {', '.join(wanted)}"))
        checks.extend(file_checks(scratch, manifest))
        if load_dump:
            drill.layout = archived_layout(repository, archive)
            checks.extend(load_checks(manager, drill, manifest, scratch))
    return Verdict(archive.name, archive.time.isoformat(timespec="seconds"), manifest.get("message_id"), checks)


def file_checks(root: Path, manifest) -> list[Check]:
    checks = []
    for dump in manifest.dumps:
        problem = dump.problem(root / dump.path)
        checks.append(Check("dump", problem is None, problem or f"{dump.path} {dump.bytes} bytes, sha256 matches"))
    if not manifest.dumps:
        checks.append(Check("dump", True, "the archive has no database dump"))
    cfg_path = root / str(manifest.get("server_cfg", "")).lstrip("/")
    try:
        cfg = servercfg.read(cfg_path)
        checks.append(Check("server.cfg", True, f"parses ({len(cfg.general)} settings, {len(cfg.blocks)} blocks)"))
    except EmgBorgError as error:
        checks.append(Check("server.cfg", False, str(error)))
    expected = manifest.get("message_id")
    if expected is None:
        checks.append(Check("seqno", False, "the manifest records no message id"))
        return checks
    seqno = root / str(manifest.get("seqno_path") or "").lstrip("/")
    try:
        found = seqno.read_text().strip() if manifest.get("seqno_path") else None
    except OSError:
        found = None
    if found is None:
        checks.append(Check("seqno", False, f"{manifest.get('seqno_path')} is missing"))
    else:
        ok = found == str(expected)
        checks.append(Check("seqno", ok, shortened(found) + ("" if ok else f", the manifest says {expected}")))
    return checks


def load_checks(manager, drill: VerifyRun, manifest, root: Path) -> list[Check]:
    """Each dump loaded by its plugin into the scratch database."""
    if not manifest.dumps:
        return [Check("load", False, "the archive has no database dump to load")]
    checks = []
    for dump in manifest.dumps:
        if dump.problem(root / dump.path):
            checks.append(Check("load", False, f"{dump.path} not loaded: it does not match the manifest"))
            continue
        outcome = manager.hook.emg_borg_verify_dump(verify=drill, dump=dump, path=root / dump.path)
        if outcome is None:
            checks.append(Check("load", False, f"no installed plugin loads {dump.plugin} dumps ({dump.path})"))
        else:
            checks.append(Check("load", *outcome))
    return checks
