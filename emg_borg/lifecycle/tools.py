"""Where the backup tool is chosen: `[backup] tool` for a backup, the repository's `tool` for the
restore side (see `repository.resolve_repository`). Everything else asks the chosen tool through
the contract of `emg_borg.core.backup_tool`."""

from __future__ import annotations

from pathlib import Path

from emg_borg.core.backup_tool import BackupTool
from emg_borg.lifecycle.tool_borg import Borg
from emg_borg.lifecycle.tool_restic import Restic

TOOLS: dict[str, BackupTool] = {tool.name: tool for tool in (Borg(), Restic())}
DEFAULT = "borg"


def named(name: str) -> BackupTool:
    return TOOLS[name]


def configured(config) -> BackupTool:
    return TOOLS[config["backup"]["tool"]]


def of(repository) -> BackupTool:
    """The tool that reads `repository` (borg unless it says otherwise)."""
    return TOOLS[getattr(repository, "tool", None) or DEFAULT]


def selection_files(runtime) -> list[Path]:
    """Every file in runtime_dir that a tool reads: whichever tool ran, its file goes with the run."""
    return [tool.selection_path(runtime) for tool in TOOLS.values()]
