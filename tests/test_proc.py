"""Whether emgd runs, read from /proc: by the process name the kernel keeps (15 characters) or
by the file name of its executable, for `emgd` and for versioned binaries like
`emgd-7.2.0-50785`."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import start_named
from emg_borg.core import proc


def fake_process(root, pid: int, comm: str, exe: str | None = None) -> None:
    directory = root / str(pid)
    directory.mkdir(parents=True)
    (directory / "comm").write_text(comm + "\n")
    if exe is not None:
        os.symlink(exe, directory / "exe")


def test_emgd_found_by_comm_or_by_executable_name(tmp_path):
    fake = tmp_path / "proc"
    fake_process(fake, 12, "emgd", "/opt/emg/bin/emgd")
    fake_process(fake, 30, "emgd-7.2.0-5078", "/opt/emg/bin/emgd-7.2.0-50785")  # comm cut to 15 characters
    fake_process(fake, 41, "worker", "/opt/emg/bin/emgd-7.2.0-50785")  # renamed its thread, the binary tells
    fake_process(fake, 42, "emgd", "/opt/emg/bin/emgd-7.1.9 (deleted)")  # upgraded under it
    fake_process(fake, 7, "bash", "/usr/bin/bash")
    fake_process(fake, 8, "emgdump", "/usr/local/bin/emgdump")  # a prefix without the dash is another program
    fake_process(fake, 9, "python3", "/usr/bin/python3.11")  # emg-borg itself
    fake_process(fake, 10, "kworker/0:1")  # a kernel thread: no exe
    (fake / "self").mkdir()
    (fake / "99").mkdir()  # a process that ended: nothing to read
    assert proc.emgd_pids(proc=str(fake)) == [12, 30, 41, 42]
    assert proc.emgd_pids(proc=str(tmp_path / "none")) == []


@pytest.mark.starts_emgd
@pytest.mark.parametrize("name", ["emgd", "emgd-7.2.0-50785"])
def test_a_running_emgd_is_found_under_its_versioned_name(tmp_path, name):
    binary = tmp_path / "bin" / name
    binary.parent.mkdir()
    shutil.copy("/bin/sleep", binary)
    process = start_named(binary, 30)
    try:
        assert process.pid in proc.emgd_pids()
    finally:
        process.kill()
        process.wait()
    assert process.pid not in proc.emgd_pids()


def test_other_processes_are_not_emgd(tmp_path):
    binary = tmp_path / "emgdummy"
    shutil.copy("/bin/sleep", binary)
    process = start_named(binary, 30)
    try:
        assert process.pid not in proc.emgd_pids()
    finally:
        process.kill()
        process.wait()
