"""borg's error line, from its plain and its `--log-json` output."""

from __future__ import annotations

from emg_borg.external import borg as borg_module


def test_borg_error_line_plain_and_json():
    json_lines = ('{"type": "progress_percent", "message": "x"}\n'
                  '{"type": "log_message", "levelname": "ERROR", "message": "Archive nosuch does not exist"}\n')
    assert borg_module.error_line(json_lines) == "Archive nosuch does not exist"
    assert borg_module.error_line("some output\nRepository /x does not exist.\n") == "Repository /x does not exist."
