"""`emg-borg verify`'s `--scratch-db` specification."""

from __future__ import annotations

import pytest

from emg_borg.errors import UsageError
from emg_borg.external.mysql import Connection
from emg_borg.lifecycle import verify


def test_scratch_db_spec():
    base = Connection(host="10.0.0.5", port=3306, socket=None, user="emguser", database="emg", password="pw")
    plain = verify.parse_scratch_db("emg_drill", base)
    assert (plain.host, plain.user, plain.database, plain.password) == ("10.0.0.5", "emguser", "emg_drill", "pw")
    other = verify.parse_scratch_db("root@127.0.0.1:3307/drill", base)
    assert (other.host, other.port, other.user, other.password) == ("127.0.0.1", 3307, "root", None)
    sock = verify.parse_scratch_db("root@socket:/run/mysqld/mysqld.sock/drill", base)
    assert (sock.socket, sock.host, sock.database) == ("/run/mysqld/mysqld.sock", None, "drill")
    with pytest.raises(UsageError, match="--scratch-db"):
        verify.parse_scratch_db("drill; DROP DATABASE emg", base)
