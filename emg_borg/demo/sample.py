"""A realistic sample EMG installation under a directory of your choice.

Layout (all below `root`): EMGDIR `etc/emg` with server.cfg, client.cfg, license, users, routing
(referenced relatively), a symlinked-versioned `bin/`, and `log/` with several log kinds;
SPOOLDIR `var/spool/emg` outside EMGDIR holding a LevelDB-style spool, `seqno.hdb` and a stale
`seqno`; a blacklist referenced by absolute path outside EMGDIR; and the `emg` database schema
with a user `emguser` whose password lives only in server.cfg.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DB_USER = "emguser"
DB_PASSWORD = "s3cret#pass;word"  # contains option-file metacharacters on purpose
DB_NAME = "emg"

SCHEMA_SQL = """
CREATE TABLE routelog (id BIGINT NOT NULL PRIMARY KEY, connector VARCHAR(64), sender VARCHAR(32),
  recipient VARCHAR(32), status INT, created TIMESTAMP DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB;
CREATE TABLE connectorlog (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, message_id BIGINT, connector VARCHAR(64),
  event VARCHAR(32)) ENGINE=InnoDB;
CREATE TABLE messagebody (message_id BIGINT NOT NULL PRIMARY KEY, body TEXT) ENGINE=InnoDB;
CREATE TABLE emguser (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, username VARCHAR(64), password VARCHAR(128)) ENGINE=InnoDB;
CREATE TABLE cfg_general (name VARCHAR(64) PRIMARY KEY, value VARCHAR(255)) ENGINE=InnoDB;
"""


@dataclasses.dataclass
class SampleEmg:
    root: Path
    emgdir: Path
    spooldir: Path
    logdir: Path
    bindir: Path
    blacklist: Path
    server_cfg: Path

    def config_files(self) -> list[Path]:
        return [self.emgdir / n for n in ("server.cfg", "client.cfg", "license", "users", "routing", "plugin.cfg")] + [self.blacklist]


def server_cfg_text(spooldir: Path, blacklist: Path, db_port: int | None, extra: str = "", database: str = DB_NAME) -> str:
    db = ""
    if db_port is not None:
        db = f"""DBPROFILE=emg
DB emg <
HOST=127.0.0.1
PORT={db_port}
USERNAME={DB_USER}
PASSWORD={DB_PASSWORD}
DBNAME={database}
TYPE=MYSQL
INSTANCES=4
>
"""
    return f"""# EMG server configuration (sample for emg-borg)
ROTATELOGS=100M:5
PDULOG
ROUTELOGDB
SPOOLDIR={spooldir}
ROUTING=routing
BLACKLIST={blacklist}
{db}CONNECTOR mgp-in1 <
TYPE=INCOMING
PROTOCOL=MGP
ADDRESS=127.0.0.1:7185
USERS=users
>
CONNECTOR smpp-out1 <
TYPE=OUTGOING
PROTOCOL=SMPP
ADDRESS=127.0.0.1:2775
USERNAME=smppuser
PASSWORD=smpppass
>
PLUGIN stats <
LIBRARY=bin/libstats.so
CONFIG=plugin.cfg
>
{extra}"""


def build(root, db_port: int | None = None, spooldir: Path | None = None, spool_files: int = 20,
          database: str = DB_NAME) -> SampleEmg:
    root = Path(root)
    emgdir = root / "etc" / "emg"
    spooldir = Path(spooldir) if spooldir else root / "var" / "spool" / "emg"
    blacklist = root / "srv" / "emg-shared" / "blacklist"
    for d in (emgdir / "log", emgdir / "bin", spooldir / "leveldb", blacklist.parent):
        d.mkdir(parents=True, exist_ok=True)
    sample = SampleEmg(root, emgdir, spooldir, emgdir / "log", emgdir / "bin", blacklist, emgdir / "server.cfg")
    sample.server_cfg.write_text(server_cfg_text(spooldir, blacklist, db_port, database=database))
    os.chmod(sample.server_cfg, 0o600)
    (emgdir / "client.cfg").write_text("HOST=127.0.0.1\nPORT=7185\nUSERNAME=admin\nPASSWORD=adminpass\n")
    (emgdir / "license").write_text("LICENSE-KEY=EMG-7-DEMO-0000-1111-2222\nNODES=1\n")
    (emgdir / "users").write_text("admin:adminpass:ADMIN\ncustomer1:c1pass\n")
    (emgdir / "routing").write_text("# routing table\n46* smpp-out1\n* smpp-out1\n")
    (emgdir / "plugin.cfg").write_text("INTERVAL=60\n")
    blacklist.write_text("46700000000\n46700000001\n")
    for name, text in (("general", "2026-11-20 12:00:00 emgd started\n"), ("general.1", "older general log\n"),
                       ("debug", "debug line\n"), ("connector.mgp-in1", "login admin\n"),
                       ("pdu.smpp-out1", "submit_sm seq=1\n"), ("security", "auth ok admin\n")):
        (emgdir / "log" / name).write_text(text)
    versioned = emgdir / "bin" / "emgd-7.2.0-50785"
    versioned.write_bytes(b"\x7fELF fake emgd binary\n" * 64)
    os.chmod(versioned, 0o755)
    link = emgdir / "bin" / "emgd"
    if not link.is_symlink():
        link.symlink_to(versioned.name)
    (emgdir / "bin" / "libstats.so").write_bytes(b"\x7fELF fake plugin\n")
    leveldb = spooldir / "leveldb"
    (leveldb / "CURRENT").write_text("MANIFEST-000002\n")
    (leveldb / "LOCK").write_bytes(b"")
    (leveldb / "MANIFEST-000002").write_bytes(os.urandom(256))
    (leveldb / "000005.ldb").write_bytes(os.urandom(8192))
    (leveldb / "000006.log").write_bytes(os.urandom(1024))
    for i in range(spool_files):
        (spooldir / f"queue-{i:04d}.hdb").write_bytes(os.urandom(512))
    (spooldir / "seqno.hdb").write_bytes(os.urandom(64))
    (spooldir / "seqno").write_text("1\n")  # stale text file; must not reach the archive
    return sample


def load_schema(mariadb, rows: int = 50, first_id: int = 1000, database: str = DB_NAME) -> None:
    """Create the `emg` database, the EMG user and some traffic in it."""
    mariadb.sql(
        f"CREATE DATABASE IF NOT EXISTS {database};"
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL ON *.* TO '{DB_USER}'@'127.0.0.1';"
        f"GRANT ALL ON *.* TO '{DB_USER}'@'localhost';"
    )
    mariadb.sql(SCHEMA_SQL, database)
    if rows:
        values = ",".join(f"({first_id + i},'mgp-in1','4670{i:07d}','4671{i:07d}',0)" for i in range(rows))
        mariadb.sql(f"INSERT INTO routelog (id, connector, sender, recipient, status) VALUES {values};", database)
    mariadb.sql(
        f"INSERT INTO messagebody VALUES ({first_id}, 'hello');"
        f"INSERT INTO emguser (username, password) VALUES ('admin','x');"
        f"INSERT INTO cfg_general VALUES ('version','7.2.0');",
        database,
    )
