"""Extraction helpers: progress lines while borg extracts, and the destination checks."""

from __future__ import annotations

import datetime
import os

import pytest

from emg_borg.core.progress import PROGRESS
from emg_borg.errors import UsageError
from emg_borg.lifecycle import archives, extract


def test_progress_logs_percent_every_interval(caplog):
    progress = extract.Progress("extracting data", interval=0)
    with caplog.at_level(PROGRESS, logger="emg_borg"):
        progress({"type": "progress_percent", "current": 512 * 1024, "total": 2 * 1024 * 1024,
                  "info": ["var/spool/emg/leveldb/000005.ldb"], "finished": False})
        progress({"type": "progress_percent", "finished": True})
    assert [r.getMessage() for r in caplog.records] == [
        "extracting data: 25% (512.0 KiB of 2.0 MiB) var/spool/emg/leveldb/000005.ldb"]
    quiet = extract.Progress("extracting data", interval=3600)
    with caplog.at_level(PROGRESS, logger="emg_borg"):
        quiet({"type": "progress_percent", "current": 1, "total": 2, "finished": False})
    assert len(caplog.records) == 1


def test_destination_checks(tmp_path):
    assert extract.check_destination(None, in_place=False) is None
    assert str(extract.check_destination(None, in_place=True)) == "/"
    with pytest.raises(UsageError, match="--in-place"):
        extract.check_destination("/", in_place=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        extract.check_destination(str(busy), in_place=False)
    assert extract.check_destination(str(busy), in_place=True) == busy
    archive = archives.Archive("host-emg-2026-11-20T14:00:00", datetime.datetime.now().astimezone(), {})
    first = extract.new_directory(archive, tmp_path)
    first.mkdir()
    assert extract.new_directory(archive, tmp_path).name == first.name + "-2"
    assert os.sep not in first.name
