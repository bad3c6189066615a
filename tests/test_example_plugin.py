"""The worked third-party plugin, examples/emg-borg-sqlite, installed with pip as an operator would
(into its own directory, found through the `emg_borg` entry-point group), backs up, verifies and
restores an SQLite database through real borgmatic and borg, beside the MySQL dump."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT, Emg, borg_cat, borg_list, leftovers, run

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The example installed by pip into a directory of its own."""
    target = tmp_path_factory.mktemp("sqlite-plugin")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT / "examples" / "emg-borg-sqlite")],
                   check=True, capture_output=True)
    assert list(target.glob("emg_borg_sqlite-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def plugin_env(plugin_dir, borg_environment):
    """This test's environment with the plugin's directory on PYTHONPATH."""
    target = plugin_dir
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{target}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def portal_db(path, rows):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS portal_user (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO portal_user (name) VALUES (?)", [(f"user{i}",) for i in rows])
    return path


def names(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM portal_user ORDER BY id")]


def test_the_core_names_the_example_plugin_nowhere():
    hits = [str(p) for p in (ROOT / "emg_borg").rglob("*.py") if "sqlite" in p.read_text().lower()]
    assert hits == []


def test_sqlite_plugin_backup_verify_restore_through_borgmatic(tmp_path, mariadb, plugin_env):
    emg = Emg(tmp_path, mariadb)
    (tmp_path / "portal").mkdir()
    db = portal_db(tmp_path / "portal" / "portal.db", range(3))
    emg.write_config("none", f'[sqlite]\npath = "{db}"\n')
    generated = run([sys.executable, "-m", "emg_borg", "config", "generate"], env=plugin_env).stdout
    assert "[sqlite]\n# SQLite database file to back up with EMG" in generated

    emg.init_repo()
    run(["borgmatic", "--config", str(emg.borgmatic_config()), "create"], env=plugin_env)
    [archive] = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))
    by_plugin = {d["plugin"]: d for d in manifest["dumps"]}
    assert set(by_plugin) == {"mysql", "sqlite"}
    sqlite_dump = by_plugin["sqlite"]
    assert sqlite_dump["path"] == "emg-borg/dumps/sqlite/portal.db" and sqlite_dump["database"] == str(db)
    copy = tmp_path / "copy.db"
    copy.write_bytes(borg_cat(emg.repo, archive, sqlite_dump["path"]))
    assert names(copy) == ["user0", "user1", "user2"] and copy.stat().st_size == sqlite_dump["bytes"]
    assert leftovers(emg) == []

    verified = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "verify", "--repository",
                    str(emg.repo), "--load-dump", "--scratch-db", f"{emg.database}_scratch", "--json"], env=plugin_env)
    loads = [c["detail"] for c in json.loads(verified.stdout)["checks"] if c["name"] == "load"]
    assert any("portal.db: integrity ok, 1 tables" in d for d in loads), loads

    # After the backup the live database changes, then is lost; restore brings back the archived one.
    portal_db(db, range(3, 5))
    assert len(names(db)) == 5
    cli = [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "restore", "--repository", str(emg.repo),
           "--categories", "database", "--json"]
    kept = json.loads(run(cli, env=plugin_env).stdout)
    assert any(f"left {db} as it is" in line for line in kept["done"]) and len(names(db)) == 5
    db.unlink()
    restored = json.loads(run(cli, env=plugin_env).stdout)
    assert names(db) == ["user0", "user1", "user2"]
    assert any(line.startswith(f"restored {db} (portal.db: integrity ok") for line in restored["done"])

    # Without the plugin, its table is an unknown one; without the table, the archive still restores
    # and the operator is told what was not loaded.
    db.unlink()
    refused = run(cli, check=False)
    assert refused.returncode == 2 and "unknown table [sqlite]" in refused.stderr
    emg.write_config("none")
    without = run(cli, check=False)
    assert without.returncode == 0 and not db.exists()
    assert "no installed plugin restores sqlite dumps" in without.stderr
