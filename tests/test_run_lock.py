"""The run lock when hooks are driven by scripts (cron) rather than borgmatic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import leftovers

pytestmark = pytest.mark.e2e


def test_two_scripts_from_one_parent_are_two_owners(emg, tmp_path):
    """Two backup scripts started by the same parent (like two cron jobs): the second fails
    clearly and its on-error leaves the first run's snapshot and staging alone."""
    cli = f"{sys.executable} -m emg_borg -c {emg.config_path}"
    first = tmp_path / "first.sh"
    first.write_text(f"{cli} before-backup || exit 1\ntouch {tmp_path}/first-ready\nsleep 30\n{cli} after-backup\n")
    second = tmp_path / "second.sh"
    second.write_text(f"{cli} before-backup 2> {tmp_path}/second.err || {cli} on-error 2> {tmp_path}/on-error.err\n")
    runner = subprocess.Popen(["bash", str(first)], start_new_session=True)  # its sleep goes with it
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "first-ready").exists():
            assert runner.poll() is None and time.monotonic() < deadline, "first run did not get ready"
            time.sleep(0.1)
        manifest = emg.runtime / "staging" / "emg-borg" / "manifest.json"
        before = manifest.read_bytes()
        subprocess.run(["bash", str(second)], check=True)
        assert "another emg-borg backup is running" in (tmp_path / "second.err").read_text()
        assert "belongs to another running backup" in (tmp_path / "on-error.err").read_text()
        assert manifest.read_bytes() == before
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    subprocess.run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "after-backup"], check=True)
    assert leftovers(emg) == []
