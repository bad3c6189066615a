"""The README's demo command runs end to end: backup through borgmatic, disaster, restore."""

from __future__ import annotations

import sys

import pytest

from conftest import run

pytestmark = [pytest.mark.e2e, pytest.mark.runs_restore, pytest.mark.slow]


def test_demo_backs_up_and_restores(tmp_path):
    result = run([sys.executable, "-m", "emg_borg.demo", "--workdir", str(tmp_path / "demo")])
    out = result.stdout
    assert "verify OK" in out
    assert "seqno: 6000 (the archive's message id 5000, plus [seqno] margin 1000)" in out
    assert "database emg: 501 rows in routelog, highest id 5000" in out
    assert "server.cfg restored: True; logs restored: False" in out
    assert out.rstrip().endswith("=== Done: the demo backed up and restored a live EMG through borgmatic and borg")
