"""A year of archives costs what a handful does: `archives` and `restore --dry-run` need one
`borg list`, and each manifest is read from the repository once, then comes from the local cache
(archives never change). Measured by counting the borg processes emg-borg starts (a `borg` on
PATH that logs its arguments), not by the clock."""

from __future__ import annotations

import collections
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import borg, borg_cat, borg_list

pytestmark = pytest.mark.e2e

# Many small archives in one Python process, by borg's own command code: no interpreter start-up
# and no self-test per archive. Each holds a manifest like the real one's, of this node, older.
MAKE_ARCHIVES = r"""
import datetime, json, os, sys
from borg.archiver import Archiver
repository, manifest, first, count = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs("emg-borg", exist_ok=True)
now = datetime.datetime.now().replace(microsecond=0)
for number in range(first, first + count):
    when = now - datetime.timedelta(days=400 - number)  # one a day, all before the real backup
    with open("emg-borg/manifest.json", "w") as f:
        json.dump({**manifest, "run_id": f"old-{number}", "message_id": number, "created": when.isoformat()}, f)
    archiver = Archiver()
    args = archiver.get_args(["borg", "create", "--timestamp", when.isoformat(), f"{repository}::old-{number:03d}",
                              "emg-borg"], None)
    assert archiver.run(args) == 0
"""


def make_archives(emg, manifest: dict, first: int, count: int, workdir: Path) -> None:
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "BORG_SELFTEST": "disabled"}
    subprocess.run([sys.executable, "-c", MAKE_ARCHIVES, str(emg.repo), json.dumps(manifest), str(first), str(count)],
                   cwd=workdir, env=env, check=True, capture_output=True)


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A `borg` first on PATH that logs each call's arguments, then runs the real one."""
    real = shutil.which("borg")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "borg-calls"
    wrapper = bindir / "borg"
    wrapper.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {log}\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def kinds(log: Path) -> collections.Counter:
    """The borg calls logged, by kind: `list` (archives of a repository), `manifest` (one
    manifest read), `items` (an archive's items listed), `other`."""
    counts = collections.Counter()
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("list --json ") and "::" not in line:
            counts["list"] += 1
        elif line.startswith("extract --stdout") and line.endswith("emg-borg/manifest.json"):
            counts["manifest"] += 1
        elif line.startswith("list --json-lines"):
            counts["items"] += 1
        else:
            counts["other"] += 1
    return counts


def test_forty_archives_cost_what_a_handful_does_once_cached(emg, counted, tmp_path):
    borg("init", "--encryption=none", str(emg.repo))
    emg.borgmatic_create()
    real, = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, real, "emg-borg/manifest.json"))
    make_archives(emg, manifest, 0, 2, tmp_path / "content")
    target = tmp_path / "target"
    target.mkdir()

    def cost(*args) -> collections.Counter:
        counted.unlink(missing_ok=True)
        emg.emg_borg(*args, "--repository", str(emg.repo))
        return kinds(counted)

    def costs() -> dict:
        return {
            "archives, first": cost("archives"),
            "archives, again": cost("archives"),
            "restore --dry-run": cost("restore", "--dry-run", "--target", str(target)),
        }

    few = costs()
    make_archives(emg, manifest, 2, 38, tmp_path / "content")
    many = costs()
    assert len(borg_list(emg.repo)) == 41

    # The newest manifest was read (and cached) by after-backup's look at the archive.
    assert few["archives, first"] == {"list": 1, "manifest": 2}
    assert many["archives, first"] == {"list": 1, "manifest": 38}  # only the new ones are read
    assert few["archives, again"] == many["archives, again"] == {"list": 1}
    assert few["restore --dry-run"] == many["restore --dry-run"]
    assert many["restore --dry-run"]["list"] == 1 and many["restore --dry-run"]["manifest"] == 0
    listed = json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)
    assert [a["message_id"] for a in listed[:3]] == [1049, 39, 38] and len(listed) == 41
    assert json.loads(emg.emg_borg("restore", "--dry-run", "--json", "--target", str(target), "--repository",
                                   str(emg.repo)).stdout)["archive"] == real

    repository_id = json.loads(borg("list", "--json", str(emg.repo)).stdout)["repository"]["id"]
    cache = Path(os.environ["BORG_BASE_DIR"]) / ".cache" / "emg-borg" / f"manifests-{repository_id}.json"
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700 and stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert len(json.loads(cache.read_text())["archives"]) == 41
    # A pruned archive is forgotten by the next complete listing.
    borg("delete", f"{emg.repo}::old-000")
    assert len(json.loads(emg.emg_borg("archives", "--repository", str(emg.repo), "--json").stdout)) == 40
    assert len(json.loads(cache.read_text())["archives"]) == 40
