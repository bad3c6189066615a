"""The package's shape, checked: imports point one way (no cycles, no layer reaching up), no
module is long, only the command line writes to stdout, and the core knows no database engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emg_borg"

# Each layer may import itself and the layers after it, never one before it.
LAYERS = [
    ("command line", ("emg_borg.cli", "emg_borg.__main__", "emg_borg.demo")),
    ("lifecycle", ("emg_borg.lifecycle",)),
    ("plugins", ("emg_borg.plugins",)),
    ("hook specifications", ("emg_borg.hookspecs",)),
    ("configuration", ("emg_borg.config",)),
    ("EMG domain and external commands", ("emg_borg.emg", "emg_borg.external")),
    ("shared types", ("emg_borg.core", "emg_borg.errors", "emg_borg")),
]
CORE = ("emg_borg/cli", "emg_borg/lifecycle", "emg_borg/core", "emg_borg/config.py", "emg_borg/hookspecs.py",
        "emg_borg/errors.py")
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(path: Path) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:` (annotations only, never executed)."""
    lines = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    lines.add(child.lineno)
    return lines


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    edges = {}
    for name, path in found.items():
        skip = _type_checking_only(path)
        tree = ast.parse(path.read_text())
        kept = ast.Module(body=[n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                                and n.lineno not in skip], type_ignores=[])
        tmp_edges = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in kept.body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            tmp_edges.update(n for n in names if n in known and n != name)
        edges[name] = tmp_edges
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def layer_of(name: str) -> int:
    best, rank = -1, None
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), number
    assert rank is not None, f"{name} belongs to no layer"
    return rank


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_point_down_the_layers():
    upward = []
    for name, targets in graph().items():
        for target in targets:
            if layer_of(target) < layer_of(name) and target != "emg_borg":
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert upward == []


def test_no_module_is_long():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert long == {}


def _writes_stdout(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print":
                if not any(k.arg == "file" for k in node.keywords):
                    lines.append(node.lineno)
            elif isinstance(func, ast.Attribute) and "sys.stdout" in ast.unparse(func):
                lines.append(node.lineno)
    return lines


def test_only_the_command_line_writes_to_stdout():
    writers = {name: _writes_stdout(path) for name, path in modules().items()
               if not name.startswith(("emg_borg.cli", "emg_borg.demo")) and _writes_stdout(path)}
    assert writers == {}


def test_the_stdout_check_sees_a_print(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import sys\nprint('a')\nsys.stdout.write('b')\nprint('c', file=sys.stderr)\n")
    assert _writes_stdout(sample) == [2, 3]


@pytest.mark.parametrize("word", ["mysql", "mariadb", "mysqldump"])
def test_the_core_names_no_database_engine(word):
    named = []
    for path in sorted(PACKAGE.parent.glob("emg_borg/**/*.py")):
        relative = str(path.relative_to(PACKAGE.parent))
        if relative.startswith(CORE):
            named += [f"{relative}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if word in line.lower()]
    assert named == []
