"""Built-in plugin: Prometheus metrics of every backup run, for node exporter's textfile collector.

With `[metrics] textfile` set, the end of every run (`emg_borg_run_finished`: a failed
before-backup, after-backup, on-error) rewrites that file from a registry of its own with
prometheus_client's `write_to_textfile` (a temporary file beside it, renamed over it: the
collector never reads half a file), mode 0644, without timestamps. A value this run did not
measure (a failure before the dump; on-error after a before-backup that already reported) is
carried over from the previous file, and the last success time only ever moves on a success.

The plugin also times the dumps (from the start of `begin_dumps` to the end of `finish_dumps`)
and records that in the manifest as `dump_seconds`, so after-backup can report it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Info, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from emg_borg.config import Option
from emg_borg.hookspecs import hookimpl

logger = logging.getLogger(__name__)

NAME = "metrics"
LAST_SUCCESS = "emg_borg_last_success_timestamp_seconds"
PROVIDER = "emg_borg_snapshot_provider"  # an info metric: emg_borg_snapshot_provider_info{provider="..."} 1
GAUGES = {
    "emg_borg_last_run_timestamp_seconds": "When the last backup run ended, success or failure (seconds since the epoch).",
    "emg_borg_last_run_success": "1 if the last backup run succeeded, 0 if it failed.",
    LAST_SUCCESS: "When the last successful backup run ended (seconds since the epoch).",
    "emg_borg_last_run_duration_seconds": "How long the last run took, from before-backup to after-backup or on-error.",
    "emg_borg_freeze_window_seconds": "How long the last consistency point held the database lock.",
    "emg_borg_dump_bytes": "Size of the database dumps of the last run that made them.",
    "emg_borg_dump_duration_seconds": "How long the database dumps of the last run that made them took.",
    "emg_borg_message_id": "EMG's message id captured in the last consistency point (exact up to 2^53).",
}


def _prom_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must be an absolute path; got {value!r}"
    if not value.endswith(".prom"):
        return f"must end in .prom (the textfile collector reads only those); got {value!r}"
    return None


@hookimpl
def emg_borg_config_tables():
    return {"metrics": {
        "textfile": Option(str, None, "Prometheus text file rewritten after every backup run, success or failure, for "
                           "node exporter's textfile collector; unset: no metrics.", check=_prom_path,
                           example='"/var/lib/prometheus/node-exporter/emg_borg.prom"'),
    }}


@hookimpl
def emg_borg_preflight(run):
    """Notes the snapshot provider (chosen just before) and warns, without failing the backup,
    when the metrics cannot be written."""
    run.state(NAME)["provider"] = run.provider
    textfile = run.config["metrics"]["textfile"]
    if not textfile:
        return None
    if not os.access(Path(textfile).parent, os.W_OK):
        logger.warning("[metrics] textfile: cannot write into %s (missing or not writable); this run's metrics will "
                       "not be written", Path(textfile).parent)
    return []


@hookimpl(tryfirst=True)
def emg_borg_begin_dumps(run):
    run.state(NAME)["dumps_began"] = time.monotonic()


@hookimpl(trylast=True)
def emg_borg_finish_dumps(run):
    state = run.state(NAME)
    if "dumps_began" in state:
        state["dump_seconds"] = round(time.monotonic() - state["dumps_began"], 3)
    return None


@hookimpl
def emg_borg_manifest_fields(run):
    seconds = run.state(NAME).get("dump_seconds")
    return {"dump_seconds": seconds} if seconds is not None else None


@hookimpl
def emg_borg_run_finished(run, outcome):
    textfile = run.config["metrics"]["textfile"]
    if not textfile:
        return
    path = Path(textfile)
    previous = read_samples(path)
    # What this run did not measure stays as it was; a failure measures no last success.
    write(path, {**previous, **{name: value for name, value in measured(run, outcome).items() if value is not None}})
    logger.debug("metrics written to %s", path)


def measured(run, outcome) -> dict:
    """What this run knows, by sample name; None for what it did not measure."""
    facts = _facts_of_manifest(outcome.manifest) if outcome.manifest is not None else _facts_of_run(run)
    freeze_ms = facts["freeze_window_ms"]
    return {
        "emg_borg_last_run_timestamp_seconds": outcome.finished,
        "emg_borg_last_run_success": 1 if outcome.succeeded else 0,
        LAST_SUCCESS: outcome.finished if outcome.succeeded else None,
        "emg_borg_last_run_duration_seconds": outcome.duration,
        "emg_borg_freeze_window_seconds": freeze_ms / 1000 if freeze_ms is not None else None,
        "emg_borg_dump_bytes": facts["dump_bytes"],
        "emg_borg_dump_duration_seconds": facts["dump_seconds"],
        "emg_borg_message_id": facts["message_id"],
        PROVIDER + "_info": {"provider": facts["provider"]} if facts["provider"] else None,
    }


def _facts_of_manifest(manifest: dict) -> dict:
    return {"freeze_window_ms": manifest.get("freeze_window_ms"), "message_id": manifest.get("message_id"),
            "provider": manifest.get("snapshot_provider"), "dump_seconds": manifest.get("dump_seconds"),
            "dump_bytes": sum(int(d.get("bytes") or 0) for d in manifest.get("dumps") or [])}


def _facts_of_run(run) -> dict:
    """A before-backup that failed: what it got to measure."""
    state = run.state(NAME)
    finished = "dump_seconds" in state  # the dumps completed
    return {"freeze_window_ms": run.freeze_window_ms, "message_id": run.message_id, "provider": state.get("provider"),
            "dump_seconds": state.get("dump_seconds"), "dump_bytes": sum(d.bytes or 0 for d in run.dumps) if finished else None}


def read_samples(path: Path) -> dict:
    """emg-borg's samples in the previous file: name -> value (labels, for the info metric)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        logger.warning("[metrics] cannot read the previous %s (%s); values not measured by this run are lost",
                       path, error.strerror)
        return {}
    found = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == PROVIDER + "_info":
                    found[sample.name] = dict(sample.labels)
                elif sample.name in GAUGES:
                    found[sample.name] = sample.value
    except ValueError as error:
        logger.warning("[metrics] %s does not parse (%s); starting it afresh", path, error)
        return {}
    return found


def write(path: Path, values: dict) -> None:
    """Write the samples through a registry of their own; atomically, mode 0644."""
    registry = CollectorRegistry(auto_describe=False)
    for name, text in GAUGES.items():
        if values.get(name) is not None:
            Gauge(name, text, registry=registry).set(values[name])
    if values.get(PROVIDER + "_info"):
        Info(PROVIDER, "The snapshot provider of the last run that chose one.", registry=registry).info(
            values[PROVIDER + "_info"])
    umask = os.umask(0o022)  # the temporary file, renamed into place, is created 0644
    try:
        write_to_textfile(str(path), registry)
    finally:
        os.umask(umask)
