"""The tests' own leftover check (conftest.leftovers) looks at the test's own resources only: a
real emg-borg backup running on the same machine (its mounts under /var/lib/emg-borg) is not a
test's leftover, while the test's own mounts, loop devices and processes are."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Emg, REAL, leftovers, mount_table

pytestmark = pytest.mark.loop


@contextlib.contextmanager
def bind_mounts():
    """`mount(source, target)` bind-mounts; every mount made is undone on the way out."""
    made: list[Path] = []

    def mount(source: Path, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
        made.append(target)

    try:
        yield mount
    finally:
        for target in reversed(made):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_foreign_emg_borg_mount_is_not_a_leftover_but_the_tests_own_are(tmp_path):
    if not shutil.which("mount"):
        pytest.skip("mount is missing")
    emg = Emg(tmp_path, None)
    foreign = Path(tempfile.mkdtemp(prefix="emg-borg-foreign-"))  # outside the test's own temp dir
    unrelated = Path(tempfile.mkdtemp(prefix="unrelated-"))
    try:
        with bind_mounts() as mount:
            # Where a real emg-borg run on this machine mounts its snapshot view.
            elsewhere = foreign / "var" / "lib" / "emg-borg" / "snapshots" / "var" / "spool" / "emg"
            mount(unrelated, elsewhere)
            assert str(elsewhere) in [target for target, _ in mount_table()]
            assert leftovers(emg) == []

            # The same mount in the test's own runtime_dir, or anywhere under a name carrying the
            # installation's instance tag, is a leftover.
            own = emg.runtime / "snapshots" / "spool"
            mount(unrelated, own)
            tagged = foreign / emg.instance_tag
            mount(unrelated, tagged)
            found = leftovers(emg, settle=0)
            assert f"mount {own}" in " ".join(found) and f"mount {tagged}" in " ".join(found), found
            assert not [f for f in found if str(elsewhere) in f], found
    finally:
        for directory in (foreign, unrelated):
            shutil.rmtree(directory)
    shutil.rmtree(emg.runtime)
    assert leftovers(emg) == []


def test_the_tests_own_processes_and_loop_devices_are_leftovers(tmp_path):
    emg = Emg(tmp_path, None)
    sleeper = subprocess.Popen(["sleep", "60"])  # carries the test's mark, like whatever emg-borg starts
    try:
        found = leftovers(emg, settle=0)
        assert found == [f"process {sleeper.pid}: sleep 60"], found
    finally:
        sleeper.kill()
        sleeper.wait()
    assert leftovers(emg) == []

    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(2**20)
    attached = subprocess.run([REAL["losetup"], "--find", "--show", str(image)], capture_output=True, text=True)
    if attached.returncode != 0:
        pytest.skip(f"no loop devices here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        assert leftovers(emg, settle=0) == [f"loop device {device} on {image}"]
    finally:
        subprocess.run([REAL["losetup"], "--detach", device], check=True)
    assert leftovers(emg) == []
