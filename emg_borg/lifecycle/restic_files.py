"""The selection for restic: the plugins' borg pattern lines turned into a list for `restic backup
--files-from-verbatim`, and the stored roots that say which live path each stored path stands for.

The plugins describe what to archive in borg's pattern language (`emg_borg_backup_patterns`):
`R` roots (`base/./path`: read `base/path`, archive it as `path`) and `!`/`-`/`+` lines. restic
has neither `/./` nor patterns in a file list, so the roots are walked here, the first matching
line deciding each path as borg would (a line matches a path or a directory above it; `!` also
skips what lies below). A directory whose whole tree is selected is listed as one line (restic
reads it recursively); one with something left out inside is replaced by its selected children
(`keep_replaced` keeps the spool's view whole: see there).
restic stores what it reads, so the spool lands under the snapshot's mount path and `seqno`
under the staging area: every `base` of a `/./` root becomes a stored root standing for `/`.

Understood: `R`, `P` (default style), and `pp:`, `pf:`, `sh:` (the default), `fm:` and `re:`
lines. A path holding a newline cannot be listed and is left out with a warning.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import re

from emg_borg.errors import EmgBorgError

logger = logging.getLogger(__name__)


def _shell_regex(pattern: str) -> str:
    """borg's `sh:` style: `**/` any directories, `*` and `?` within one component."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Rule:
    action: str  # "!" exclude and skip below, "-" exclude, "+" include
    style: str
    pattern: str

    def matches(self, path: str) -> bool:
        """Whether the rule matches `path` (absolute) or a directory above it."""
        relative = path.lstrip("/")
        if self.style == "pp":
            top = self.pattern.strip("/")
            return relative == top or relative.startswith(top + "/") or not top
        if self.style == "pf":
            return relative == self.pattern.strip("/")
        if self.style == "re":
            return re.search(self.pattern, relative) is not None
        if self.style == "fm":
            regex = fnmatch.translate(self.pattern.lstrip("/").rstrip("/"))
            return any(re.match(regex, candidate) for candidate in _self_and_parents(relative))
        regex = re.compile(_shell_regex(self.pattern.lstrip("/").rstrip("/")) + r"\Z")
        return any(regex.match(candidate) for candidate in _self_and_parents(relative))


def _self_and_parents(relative: str):
    parts = relative.split("/")
    return ("/".join(parts[:n]) for n in range(len(parts), 0, -1))


@dataclasses.dataclass
class Selection:
    roots: list[str]  # the paths restic reads (`base/path`), in order
    rules: list[Rule]
    stored_roots: dict[str, str]  # stored base -> the live path it stands for


def parse(lines) -> Selection:
    roots, rules, stored, style = [], [], {}, "sh"
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if kind == "P":
            style = rest
        elif kind == "R":
            base, marker, path = rest.partition("/./")
            if marker:
                stored[os.path.normpath(base)] = "/"
                roots.append(os.path.normpath(f"{base}/{path}"))
            else:
                roots.append(os.path.normpath(rest))
        elif kind in ("!", "-", "+"):
            prefix, colon, pattern = rest.partition(":")
            if colon and prefix in ("pp", "pf", "sh", "fm", "re"):
                rules.append(Rule(kind, prefix, pattern))
            else:
                rules.append(Rule(kind, style, rest))
        else:
            raise EmgBorgError(f"selection line {line!r}: not understood for restic (R, P, !, -, + lines only)")
    return Selection(list(dict.fromkeys(roots)), rules, stored)


def keep_replaced(selection: Selection) -> None:
    """Drop the `- pf:` lines that leave out a file another root stores in its place (the
    snapshot's stale `seqno`, replaced by the staged one). Left out, they would split the
    snapshot's view into its entries, and restic 0.14 finds no parent snapshot once the entries
    change (a file added to the spool), so it would read the whole spool again. Listed whole,
    the view's copy is stored too; the restore side lets the staging area's copy win."""
    supplied = {live_path(selection.stored_roots, root) for root in selection.roots
                if live_path(selection.stored_roots, root) != os.path.normpath(root)}
    selection.rules = [rule for rule in selection.rules
                       if not (rule.action == "-" and rule.style == "pf"
                               and live_path(selection.stored_roots, rule.pattern) in supplied)]


def _decide(rules, path: str) -> str:
    for rule in rules:
        if rule.matches(path):
            return rule.action
    return "+"


def _walk(rules, path: str, skipped: list) -> tuple[bool, list[str]]:
    """(whole, lines): whether `path` and all below it are selected, and the lines listing what
    is selected when it is not."""
    action = _decide(rules, path)
    if "\n" in path:
        skipped.append(path)
        return False, []
    try:
        is_dir = os.path.isdir(path) and not os.path.islink(path)
    except OSError:
        is_dir = False
    if not is_dir:
        return (True, [path]) if action == "+" else (False, [])
    if action == "!":
        return False, []
    try:
        children = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError:
        return (True, [path]) if action == "+" else (False, [])  # restic reports it when it reads it
    whole, lines = action == "+", []
    for child in children:
        child_whole, child_lines = _walk(rules, child.path, skipped)
        whole = whole and child_whole
        lines += child_lines
    return (True, [path]) if whole else (False, lines)


def files(selection: Selection) -> tuple[list[str], list[str]]:
    """The lines of the `--files-from-verbatim` list, and the paths left out because no line can
    name them."""
    lines, skipped = [], []
    for root in selection.roots:
        if not os.path.lexists(root):
            continue  # borg skips a missing root with a warning; restic would fail the whole run
        lines += _walk(selection.rules, root, skipped)[1]
    if skipped:
        logger.warning("not archived by restic: %d path(s) whose names hold a newline (%s)", len(skipped),
                       ", ".join(map(repr, skipped[:3])))
    return list(dict.fromkeys(lines)), skipped


def live_path(stored_roots: dict, stored: str) -> str:
    """The live path a stored path stands for (the longest stored root holding it decides)."""
    stored = os.path.normpath("/" + stored.lstrip("/"))
    best = None
    for base in stored_roots:
        if stored == base or stored.startswith(base.rstrip("/") + "/"):
            if best is None or len(base) > len(best):
                best = base
    if best is None:
        return stored
    rest = os.path.relpath(stored, best)
    return os.path.normpath(os.path.join(stored_roots[best], "" if rest == "." else rest))


def stored_paths(stored_roots: dict, live: str) -> list[str]:
    """Every stored path that may hold archive path `live`: itself, and its place under each stored root."""
    live = os.path.normpath("/" + live.lstrip("/"))
    found = [live]
    for base, stands_for in stored_roots.items():
        if live == stands_for or live.startswith(stands_for.rstrip("/") + "/"):
            found.append(os.path.normpath(os.path.join(base, os.path.relpath(live, stands_for))))
    return list(dict.fromkeys(found))
