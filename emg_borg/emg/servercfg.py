"""A parser for EMG's server.cfg.

The syntax, from the vendor's guides: `#` starts a comment line; a line is `KEY=value` or a bare
flag (`PDULOG`); a block is `KIND label <` on one line, its settings, then `>` alone. Blocks do
not nest. Every entry keeps its line number so errors and discoveries can point at the line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from emg_borg.errors import ConfigError, quoted

_BLOCK_START = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\s+(\S+))?\s*<$")
_SETTING = re.compile(r"^([A-Za-z][A-Za-z0-9_.\-]*)\s*=\s*(.*)$")
_FLAG = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str  # upper-cased
    value: str | None  # None for a bare flag
    line: int


@dataclasses.dataclass
class Block:
    kind: str  # upper-cased, e.g. CONNECTOR, DB, PLUGIN
    label: str
    line: int
    entries: list[Entry] = dataclasses.field(default_factory=list)

    def get(self, key: str, default=None):
        for entry in self.entries:
            if entry.key == key.upper():
                return entry.value
        return default

    def entry(self, key: str) -> Entry | None:
        return next((e for e in self.entries if e.key == key.upper()), None)


@dataclasses.dataclass
class ServerCfg:
    path: Path
    general: list[Entry]
    blocks: list[Block]

    def get(self, key: str, default=None):
        entry = self.entry(key)
        return entry.value if entry else default

    def entry(self, key: str) -> Entry | None:
        # The last occurrence wins, as with most line-oriented configuration files.
        found = None
        for entry in self.general:
            if entry.key == key.upper():
                found = entry
        return found

    def has_flag(self, key: str) -> bool:
        return self.entry(key) is not None

    def block(self, kind: str, label: str) -> Block | None:
        return next((b for b in self.blocks if b.kind == kind.upper() and b.label == label), None)

    def all_entries(self):
        """Yield (block or None, entry) for every setting in the file, in file order."""
        for entry in self.general:
            yield None, entry
        for block in self.blocks:
            for entry in block.entries:
                yield block, entry


def parse(text: str, path: Path) -> ServerCfg:
    general: list[Entry] = []
    blocks: list[Block] = []
    current: Block | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if "\0" in raw:
            raise ConfigError("a NUL byte: server.cfg is text", path, number)
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == ">":
            if current is None:
                raise ConfigError("'>' closes no block", path, number)
            blocks.append(current)
            current = None
            continue
        block_start = _BLOCK_START.match(line)
        if block_start:
            if current is not None:
                raise ConfigError(
                    f"block {current.kind} {current.label} opened on line {current.line} is not closed with '>' "
                    f"before a new block starts",
                    path, number,
                )
            current = Block(block_start.group(1).upper(), block_start.group(2) or "", number)
            continue
        setting = _SETTING.match(line)
        if setting:
            entry = Entry(setting.group(1).upper(), setting.group(2).strip(), number)
        elif _FLAG.match(line):
            entry = Entry(line.upper(), None, number)
        else:
            raise ConfigError(f"cannot parse {quoted(line, 60)}: expected KEY=value, a flag, 'KIND label <' or '>'",
                              path, number)
        (current.entries if current is not None else general).append(entry)
    if current is not None:
        raise ConfigError(f"block {current.kind} {current.label} is never closed with '>'", path, current.line)
    return ServerCfg(Path(path), general, blocks)


def read(path) -> ServerCfg:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError("server.cfg not found (set [emg] emgdir or server_cfg)", path)
    except OSError as error:
        raise ConfigError(f"cannot read server.cfg: {error.strerror}", path)
    return parse(text, path)
