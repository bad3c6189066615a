"""Categories of an archive's paths and the borg patterns selecting them, checked with borg's own
pattern matcher."""

from __future__ import annotations

import io

import pytest

from borg.patterns import PatternMatcher, load_pattern_file

from emg_borg.emg import categories
from emg_borg.errors import UsageError

# The sample layout: logs inside EMGDIR, a blacklist outside it, the spool elsewhere.
SAMPLE = {
    "config": ["etc/emg", "srv/emg-shared/blacklist"],
    "data": ["var/spool/emg"],
    "logs": ["etc/emg/log"],
    "database": ["emg-borg/mysql"],
}
# The vendor default: the spool inside EMGDIR too.
VENDOR = {"config": ["etc/emg"], "data": ["etc/emg/spool"], "logs": ["etc/emg/log"], "executables": ["etc/emg/bin"]}

PATHS = [
    "etc/emg/server.cfg", "etc/emg/log/general", "etc/emg/log", "etc/emg/spool/seqno", "etc/emg/spool/leveldb/CURRENT",
    "etc/emg/bin/emgd", "etc/emg/logbook", "srv/emg-shared/blacklist", "srv/emg-shared/other", "var/spool/emg/seqno",
    "emg-borg/mysql/emg.sql", "emg-borg/manifest.json", "tmp/borgmatic.yaml",
]


def borg_selects(lines) -> set:
    """The PATHS that borg extract would extract with these pattern lines (borg's own matcher)."""
    roots, patterns = [], []
    load_pattern_file(io.StringIO("\n".join(lines) + "\n"), roots, patterns)
    matcher = PatternMatcher()
    matcher.add_inclexcl(patterns)
    matcher.add_includepaths(roots)
    return {p for p in PATHS if matcher.match(p)}


def by_category(manifest_categories, selected) -> set:
    return {p for p in PATHS if categories.category_of(p, manifest_categories) in selected}


def test_parse_categories():
    assert categories.parse(categories.DEFAULT_SELECTION) == ("config", "data", "database")
    assert categories.parse("logs, Config") == ("config", "logs")
    assert categories.parse("all") == categories.CATEGORIES
    with pytest.raises(UsageError, match="unknown category 'spool'"):
        categories.parse("config,spool")
    with pytest.raises(UsageError, match="no categories"):
        categories.parse(" , ")


def test_longest_root_decides_the_category():
    assert categories.category_of("etc/emg/server.cfg", SAMPLE) == "config"
    assert categories.category_of("etc/emg/log/general", SAMPLE) == "logs"
    assert categories.category_of("etc/emg/logbook", SAMPLE) == "config"  # a prefix is not a parent
    assert categories.category_of("/var/spool/emg/seqno", SAMPLE) == "data"
    assert categories.category_of("emg-borg/manifest.json", SAMPLE) is None


def test_config_patterns_prune_the_nested_log_root():
    lines = categories.pattern_lines(SAMPLE, ("config",))
    assert lines == ["! pp:etc/emg/log", "R etc/emg", "R srv/emg-shared/blacklist"]


@pytest.mark.parametrize("layout", [SAMPLE, VENDOR], ids=["sample", "vendor"])
@pytest.mark.parametrize("selected", [
    ("config",), ("data",), ("logs",), ("config", "data", "database"), ("config", "logs"), ("data", "logs"),
    ("executables",), ("config", "data", "database", "logs", "executables"),
])
def test_borg_extracts_exactly_the_selected_categories(layout, selected):
    if not any(layout.get(c) for c in selected):
        with pytest.raises(UsageError, match="holds none of the selected categories"):
            categories.pattern_lines(layout, selected)
        return
    assert borg_selects(categories.pattern_lines(layout, selected)) == by_category(layout, selected)


def test_three_nested_levels():
    layout = {"config": ["a"], "logs": ["a/b"], "data": ["a/b/c"]}
    lines = categories.pattern_lines(layout, ("config", "data"))
    assert lines == ["+ pp:a/b/c", "! pp:a/b", "R a"]
    global PATHS
    saved, PATHS = PATHS, ["a/x", "a/b/y", "a/b/c/z", "d"]
    try:
        assert borg_selects(lines) == {"a/x", "a/b/c/z"}
    finally:
        PATHS = saved


def test_selected_roots_and_missing():
    assert categories.selected_roots(VENDOR, ("config", "data")) == ["etc/emg"]
    assert categories.selected_roots(VENDOR, ("data",)) == ["etc/emg/spool"]
    assert categories.missing(SAMPLE, ("config", "executables")) == ["executables"]


@pytest.mark.parametrize("layout", [SAMPLE, VENDOR], ids=["sample", "vendor"])
@pytest.mark.parametrize("selected", [("logs",), ("data",), ("logs", "data"), ("executables", "logs")])
def test_no_include_line_for_a_path_that_is_already_a_root(layout, selected):
    """borg warns "Include pattern ... never matched" (exit 1) for `+ pp:X` next to `R X`."""
    if not categories.selected_roots(layout, selected):
        pytest.skip("the layout holds none of these")
    lines = categories.pattern_lines(layout, selected)
    roots = {line[2:] for line in lines if line.startswith("R ")}
    assert not [line for line in lines if line.startswith("+ pp:") and line[5:] in roots], lines
    assert borg_selects(lines) == {p for p in PATHS if categories.category_of(p, layout) in selected}
