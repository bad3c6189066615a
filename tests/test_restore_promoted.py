"""Restore after a promotion, with two real MariaDB servers: the primary dies after the backup,
its GTID replica (which has applied newer traffic) is promoted and is now the live database, and
the EMG host is rebuilt from the archive. The restore takes configuration and spool from the
archive, loads no dump into the promoted database, and starts the message ids above its newest."""

from __future__ import annotations

import contextlib

import pytest

from conftest import Emg, leftovers, started_mariadb
from emg_borg.demo import sample
from emg_borg.emg.layout import DbProfile
from emg_borg.external.mysql import Connection
from emg_borg.plugins.mysql.restore import same_server
from test_restore_e2e import config_files, error_lines, files_under, rel, spool_files

pytestmark = [pytest.mark.e2e, pytest.mark.runs_restore]

MARGIN = 1000


@pytest.fixture
def primary_and_replica(tmp_path_factory):
    """A primary with its binary log and a read-only GTID replica of it, both of this test only
    (it kills one and promotes the other), stopped at the end even when the test fails."""
    with contextlib.ExitStack() as servers:
        primary = servers.enter_context(started_mariadb(tmp_path_factory, server_id=1))
        replica = servers.enter_context(started_mariadb(tmp_path_factory, server_id=2, read_only=True))
        replica.replicate_from(primary)
        yield primary, replica


def database_state(server, database: str) -> str:
    """The tables of `database` and a checksum of each: a dump loaded, or the database dropped and
    created again, changes it."""
    tables = ", ".join(server.sql(f"SHOW TABLES FROM {database}").split())
    return server.sql(f"CHECKSUM TABLE {tables}", database)


def emg_borg_sessions(server) -> list[str]:
    return server.sql("SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE USER = '{sample.DB_USER}'").splitlines()


def restore(emg, target, *options, check=True):
    target.mkdir()
    return emg.emg_borg("restore", "--repository", str(emg.repo), "--target", str(target), *options, check=check)


def test_restore_after_a_promotion_keeps_the_promoted_database_and_counts_on_from_its_ids(primary_and_replica,
                                                                                          tmp_path):
    primary, replica = primary_and_replica
    emg = Emg(tmp_path, primary)  # server.cfg's DB profile names the primary; the schema replicates
    emg.write_config("none", f"[seqno]\nmargin = {MARGIN}\n")
    emg.borgmatic_create()
    archived_files = {**config_files(emg), **spool_files(emg)}
    seqno_path = rel(emg.tree.spooldir / "seqno")
    # Traffic after the backup, and a table the dump does not have: the replica applies both.
    primary.sql("INSERT INTO routelog (id, connector) VALUES (5000, 'mgp-in1'), (5001, 'mgp-in1');"
                "CREATE TABLE after_backup (id INT PRIMARY KEY); INSERT INTO after_backup VALUES (1);", emg.database)
    replica.wait_caught_up(primary)
    primary.stop()  # the primary dies

    # The archived DB profile names the dead primary: the newest id cannot be read, nothing is written.
    refused = restore(emg, tmp_path / "refused", check=False)
    assert refused.returncode == 1 and list((tmp_path / "refused").iterdir()) == []
    [error] = error_lines(refused)
    assert f"cannot connect to MySQL {sample.DB_USER}@127.0.0.1:{primary.port}/:" in error
    assert "[mysql] host and port" in error and "pass --message-id N" in error

    # Named in [mysql] but not promoted yet: a dry run says it is read-only.
    emg.write_config("none", f'[seqno]\nmargin = {MARGIN}\n\n[mysql]\nhost = "127.0.0.1"\nport = {replica.port}\n')
    replica.sql("STOP SLAVE; RESET SLAVE ALL;")
    dry = restore(emg, tmp_path / "dry", "--categories", "config,data", "--dry-run")
    assert "is read-only (a replica not promoted yet?)" in dry.stdout
    assert list((tmp_path / "dry").iterdir()) == []

    replica.sql("SET GLOBAL read_only = 0;")  # promoted: the live database
    promoted = database_state(replica, emg.database)
    target = tmp_path / "target"
    result = restore(emg, target, "--categories", "config,data")
    restored = files_under(target)
    assert {k: v for k, v in restored.items() if k != seqno_path} == archived_files
    assert restored[seqno_path] == b"%d\n" % (5001 + MARGIN)
    assert (f"= {5001 + MARGIN} from the highest id in the live database 5001 + margin {MARGIN} "
            f"(also seen: the archive's message id 1049)") in result.stdout
    assert database_state(replica, emg.database) == promoted
    assert "load" not in result.stdout and "read-only" not in result.stdout
    # emgd reads the restored server.cfg, which still names the dead primary.
    assert (f"server.cfg's DB profile emg ({target / rel(emg.tree.server_cfg)}, restored) names "
            f"127.0.0.1:{primary.port}, but the live database is {sample.DB_USER}@127.0.0.1:{replica.port}/{emg.database} "
            f"([mysql] of {emg.config_path}): point the profile's HOST and PORT at it before starting emgd") \
        in result.stdout

    # The default categories include the database: the promoted one is left as it is.
    default = restore(emg, tmp_path / "default")
    assert f"left the database {emg.database} as it is: it has 6 tables" in default.stdout
    assert "loaded" not in default.stdout
    assert (tmp_path / "default" / seqno_path).read_bytes() == b"%d\n" % (5001 + MARGIN)
    assert database_state(replica, emg.database) == promoted
    assert replica.sql("SELECT COUNT(*), MAX(id) FROM routelog", emg.database).split() == ["52", "5001"]
    assert emg_borg_sessions(replica) == []

    # The promoted server down too: one line, nothing written.
    replica.stop()
    down = restore(emg, tmp_path / "down", "--categories", "config,data", check=False)
    assert down.returncode == 1 and list((tmp_path / "down").iterdir()) == []
    [error] = error_lines(down)
    assert f"cannot connect to MySQL {sample.DB_USER}@127.0.0.1:{replica.port}/:" in error
    assert "pass --message-id N" in error
    assert leftovers(emg) == []  # both servers are stopped: any process of the test is a leftover


@pytest.mark.parametrize("profile, connection, same", [
    (("127.0.0.1", 3306), ("localhost", None, None), True),
    (("db1", None), ("db1", 3306, None), True),
    (("db1", 3306), ("db2", 3306, None), False),
    (("127.0.0.1", 3306), ("127.0.0.1", 3307, None), False),
    ((None, None), (None, None, "/run/mysqld/mysqld.sock"), True),
    (("db1", 3306), (None, None, "/run/mysqld/mysqld.sock"), False),
])
def test_the_profile_names_the_server_read_or_another(profile, connection, same):
    """Whether the restore's checklist tells the operator to point server.cfg at the server it read."""
    db = DbProfile(label="emg", type="MYSQL", host=profile[0], port=profile[1], user="emg", password=None,
                   database="emg", line=1)
    host, port, socket = connection
    assert same_server(db, Connection(host=host, port=port, socket=socket, user="emg", database="emg")) is same
