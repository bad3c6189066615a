"""The throwaway MariaDB of the demo, the tests and the benchmarks (emg_borg.demo.mariadb)."""

from __future__ import annotations


def test_a_throwaway_server_keeps_its_temporary_files_in_its_own_directory(mariadb):
    # In the shared /tmp, servers removed each other's temporary tables: a large INSERT ... SELECT
    # from the same table failed ("Error on delete of '/tmp/#sql-temptable-...MAI' (Errcode: 2)").
    assert mariadb.sql("SELECT @@tmpdir").strip() == str(mariadb.base / "tmp")
