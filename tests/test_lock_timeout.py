"""The global read lock is bounded by [mysql] lock_timeout: a long-running query in the way makes
before-backup fail (lock = "required") or go on unlocked with a warning (lock = "best-effort"),
and the waiting FLUSH TABLES WITH READ LOCK never stays behind to block EMG's writers."""

from __future__ import annotations

import json
import threading
import time

import pymysql
import pytest

from conftest import leftovers

pytestmark = pytest.mark.e2e


def long_query(mariadb, database, seconds):
    """A long-running write, which FLUSH TABLES WITH READ LOCK must wait for."""
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)

    def run():
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE routelog SET status = status + SLEEP({seconds}) ORDER BY id LIMIT 1")
        connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    return thread


def insert_takes(mariadb, database) -> float:
    connection = pymysql.connect(unix_socket=mariadb.socket, user="root", database=database, autocommit=True)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO routelog (id) VALUES (99999)")
    connection.close()
    return time.monotonic() - started


def test_required_lock_times_out_cleanly(emg, mariadb):
    emg.write_config("none", "[mysql]\nlock_timeout = 1\n")
    blocker = long_query(mariadb, emg.database, 6)
    started = time.monotonic()
    result = emg.emg_borg("before-backup", check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and "cannot take a global read lock" in errors[0] and "waited 1 s" in errors[0]
    assert 'lock = "best-effort"' in errors[0]
    assert elapsed < 5
    # The killed FLUSH does not linger: writers go on while the long query still runs.
    assert insert_takes(mariadb, emg.database) < 1
    blocker.join()
    assert leftovers(emg) == []


def test_best_effort_goes_on_unlocked_and_says_so(emg, mariadb):
    emg.write_config("none", '[mysql]\nlock_timeout = 1\nlock = "best-effort"\n')
    blocker = long_query(mariadb, emg.database, 4)
    result = emg.emg_borg("before-backup", "--json")
    blocker.join()
    assert "warning: no global read lock" in result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["consistency_lock"] == "failed, unlocked (best-effort)"
    assert "binlog_file" not in manifest["dumps"][0]
    emg.emg_borg("after-backup")
    assert leftovers(emg) == []
