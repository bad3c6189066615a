"""`[metrics] textfile`: what node exporter's textfile collector would read after real borgmatic
runs, parsed with prometheus_client's own parser: values equal to the archive's manifest, a
failure that never moves the last success, a file replaced whole (mode 0644, no temporary file
left behind, no timestamps)."""

from __future__ import annotations

import json
import stat
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Emg, borg_cat, borg_list, leftovers, run, run_emg_borg

pytestmark = pytest.mark.e2e


def metrics_config(path) -> str:
    return f'[metrics]\ntextfile = "{path}"\n'


def samples(path) -> dict:
    """Sample name -> value; the info metric's name -> its labels."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            assert sample.timestamp is None, sample
            found[sample.name] = dict(sample.labels) if sample.name.endswith("_info") else sample.value
    return found


@pytest.fixture
def prom_dir(tmp_path):
    directory = tmp_path / "node-exporter"
    directory.mkdir()
    return directory


def test_a_borgmatic_backup_writes_what_its_archive_says(tmp_path, mariadb, prom_dir):
    prom = prom_dir / "emg_borg.prom"
    emg = Emg(tmp_path, mariadb, extra_config=metrics_config(prom))
    before = time.time()
    emg.borgmatic_create()
    [archive] = borg_list(emg.repo)
    manifest = json.loads(borg_cat(emg.repo, archive, "emg-borg/manifest.json"))

    found = samples(prom)
    assert found["emg_borg_last_run_success"] == 1
    assert before <= found["emg_borg_last_success_timestamp_seconds"] <= time.time()
    assert found["emg_borg_last_success_timestamp_seconds"] == found["emg_borg_last_run_timestamp_seconds"]
    assert 0 < found["emg_borg_last_run_duration_seconds"] <= time.time() - before
    assert found["emg_borg_message_id"] == manifest["message_id"] == 1049
    [dump] = manifest["dumps"]
    assert found["emg_borg_dump_bytes"] == dump["bytes"] > 0
    assert found["emg_borg_dump_duration_seconds"] == manifest["dump_seconds"] > 0
    assert found["emg_borg_freeze_window_seconds"] == pytest.approx(manifest["freeze_window_ms"] / 1000)
    assert found["emg_borg_snapshot_provider_info"] == {"provider": "none"}
    # Replaced whole: world-readable for the collector, no temporary file left beside it.
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [p.name for p in prom_dir.iterdir()] == ["emg_borg.prom"]
    assert leftovers(emg) == []


def test_a_failed_run_keeps_the_last_success_and_says_it_failed(tmp_path, mariadb, prom_dir):
    prom = prom_dir / "emg_borg.prom"
    emg = Emg(tmp_path, mariadb, extra_config=metrics_config(prom))
    emg.borgmatic_create()
    good = samples(prom)

    emg.write_config("none", metrics_config(prom) + '[seqno]\ncommand = "false"\n')
    result = emg.borgmatic_create(check=False)
    assert result.returncode != 0
    assert "could not record" not in result.stderr + result.stdout
    failed = samples(prom)
    assert failed["emg_borg_last_run_success"] == 0
    assert failed["emg_borg_last_run_timestamp_seconds"] > good["emg_borg_last_run_timestamp_seconds"]
    assert failed["emg_borg_last_success_timestamp_seconds"] == good["emg_borg_last_success_timestamp_seconds"]
    # The failed run captured no message id and made no dump: the last ones stay.
    assert failed["emg_borg_message_id"] == good["emg_borg_message_id"]
    assert failed["emg_borg_dump_bytes"] == good["emg_borg_dump_bytes"]
    # No temporary file is left beside it (an inode number can be reused, so it cannot prove the rename).
    assert [p.name for p in prom_dir.iterdir()] == ["emg_borg.prom"]
    assert len(borg_list(emg.repo)) == 1 and leftovers(emg) == []


def test_borg_failing_after_a_good_before_backup_is_a_failure(tmp_path, mariadb, prom_dir):
    """The repository does not exist: before-backup succeeds, borg create fails, and only
    on-error runs (the example's after-backup has `states: [finish]`)."""
    prom = prom_dir / "emg_borg.prom"
    emg = Emg(tmp_path, mariadb, extra_config=metrics_config(prom))
    result = run(["borgmatic", "--config", str(emg.borgmatic_config()), "create"], check=False)
    assert result.returncode != 0
    found = samples(prom)
    assert found["emg_borg_last_run_success"] == 0
    assert "emg_borg_last_success_timestamp_seconds" not in found  # never succeeded
    assert found["emg_borg_message_id"] == 1049  # before-backup got that far: on-error read its manifest
    assert found["emg_borg_last_run_duration_seconds"] > 0
    assert leftovers(emg) == []


def test_a_failing_before_backup_alone_reports_the_failure(tmp_path, mariadb, prom_dir):
    prom = prom_dir / "emg_borg.prom"
    emg = Emg(tmp_path, mariadb, extra_config=metrics_config(prom) + '[seqno]\ncommand = "false"\n')
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 1
    found = samples(prom)
    assert found["emg_borg_last_run_success"] == 0
    assert found["emg_borg_last_run_duration_seconds"] > 0
    assert "emg_borg_last_success_timestamp_seconds" not in found and "emg_borg_message_id" not in found
    assert found["emg_borg_snapshot_provider_info"] == {"provider": "none"}
    # on-error afterwards (nothing left to release) says failure again and loses nothing.
    emg.emg_borg("on-error")
    again = samples(prom)
    assert again["emg_borg_last_run_success"] == 0
    assert again["emg_borg_last_run_duration_seconds"] == found["emg_borg_last_run_duration_seconds"]
    # after-backup with nothing to release reports nothing: there was no run to call a success.
    emg.emg_borg("after-backup")
    assert samples(prom) == again


def test_an_unwritable_metrics_directory_warns_and_the_backup_goes_on(tmp_path, mariadb):
    missing = tmp_path / "no-such-dir" / "emg_borg.prom"
    emg = Emg(tmp_path, mariadb, extra_config=metrics_config(missing))
    first = emg.emg_borg("before-backup")
    assert f"emg-borg: warning: [metrics] textfile: cannot write into {missing.parent}" in first.stderr
    second = emg.emg_borg("after-backup")
    assert "emg-borg: warning: plugin emg_borg.plugins.metrics could not record the end of the run" in second.stderr
    assert not missing.parent.exists() and leftovers(emg) == []


@pytest.mark.parametrize("value, problem", [
    ("emg_borg.prom", "must be an absolute path"),
    ("/var/lib/prometheus/node-exporter/emg_borg.txt", "must end in .prom"),
])
def test_the_textfile_must_be_an_absolute_prom_path(tmp_path, value, problem):
    path = tmp_path / "c.toml"
    path.write_text(f'[emg]\nemgdir = "/etc/emg"\n\n[metrics]\ntextfile = "{value}"\n')
    result = run_emg_borg("-c", str(path), "config", "validate", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"emg-borg: error: {path}:5: metrics.textfile: {problem}")
