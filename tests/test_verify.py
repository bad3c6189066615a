"""`emg-borg verify`'s `--scratch-db` specification."""

from __future__ import annotations

from emg_borg.external.mysql import Connection
from emg_borg.plugins.mysql import restore as verify


def test_scratch_db_spec():
    base = Connection(host="10.0.0.5", port=3306, socket=None, user="emguser", database="emg", password="pw")
    plain = verify.parse_scratch_db("emg_drill", base)
    assert (plain.host, plain.user, plain.database, plain.password) == ("10.0.0.5", "emguser", "emg_drill", "pw")
    other = verify.parse_scratch_db("root@127.0.0.1:3307/drill", base)
    assert (other.host, other.port, other.user, other.password) == ("127.0.0.1", 3307, "root", None)
    sock = verify.parse_scratch_db("root@socket:/run/mysqld/mysqld.sock/drill", base)
    assert (sock.socket, sock.host, sock.database) == ("/run/mysqld/mysqld.sock", None, "drill")
    assert verify.scratch_db_problem("drill; DROP DATABASE emg").startswith("--scratch-db 'drill; DROP DATABASE emg'")
    assert verify.scratch_db_problem("root@127.0.0.1:3307/drill") is None


def test_a_bad_scratch_db_is_refused_before_any_work(tmp_path):
    from conftest import run_emg_borg

    scratch = tmp_path / "scratch"
    result = run_emg_borg("verify", "--repository", str(tmp_path / "no-repo-needed"), "--scratch-dir", str(scratch),
                          "--load-dump", "--scratch-db", "not a name!", check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert len(errors) == 1 and "--scratch-db 'not a name!': expected NAME" in errors[0]
    assert "extracting" not in result.stderr and not scratch.exists()
