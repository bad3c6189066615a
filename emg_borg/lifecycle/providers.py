"""Snapshot providers, run by the core: choosing one, driving it ledger-first, releasing.

Providers only describe what they create (`Resource`s) and how to release one ledger entry;
the rules live here: every resource is in the ledger before it exists, entries are released
newest first, a failure to release one entry never stops the others, and what could not be
released stays in the ledger for the next run.
"""

from __future__ import annotations

import logging

from emg_borg.core.run import BackupRun
from emg_borg.core.snapshot import SnapshotProvider
from emg_borg.errors import EmgBorgError
from emg_borg.external import findmnt

logger = logging.getLogger(__name__)


def registry(hook) -> dict[str, SnapshotProvider]:
    """Every provider the plugins offer, by name."""
    found: dict[str, SnapshotProvider] = {}
    for offered in hook.emg_borg_snapshot_providers():
        for provider in offered or ():
            if provider.name in found:
                raise EmgBorgError(f"two plugins offer the snapshot provider {provider.name!r}")
            found[provider.name] = provider
    return found


def check_configured(config, hook) -> str:
    """The configured provider name, if some plugin offers it (checked here, not in the schema,
    because plugins add providers)."""
    name = config["snapshot"]["provider"]
    known = sorted(registry(hook))
    if name != "auto" and name not in known:
        raise config.error("snapshot", "provider", f"unknown snapshot provider {name!r}; known: auto, {', '.join(known)}")
    return name


def resolve(run: BackupRun) -> SnapshotProvider:
    """The provider to use: the configured one, or for `auto` the first (by `claim_order`) that
    claims the file system holding SPOOLDIR."""
    name = check_configured(run.config, run.hook)
    providers = registry(run.hook)
    if name != "auto":
        return providers[name]
    spooldir = run.layout.spooldir
    mount = findmnt.find(spooldir)
    if mount is None:
        raise EmgBorgError(f"cannot tell which file system holds SPOOLDIR {spooldir} (findmnt found nothing)")
    for provider in sorted(providers.values(), key=lambda p: p.claim_order):
        if provider.name != "none" and provider.claims(run, mount.fstype):
            logger.info("snapshot provider auto: %s (SPOOLDIR %s is on %s at %s)", provider.name, spooldir,
                        mount.fstype, mount.target)
            return provider
    raise EmgBorgError(
        f"SPOOLDIR {spooldir} is on {mount.fstype} ({mount.target}), which emg-borg cannot snapshot; move the spool "
        f"to {', '.join(sorted(n for n in providers if n != 'none'))}, or set [snapshot] provider = \"none\" to "
        f"knowingly back up the live, inconsistent spool"
    )


def drive(run: BackupRun, owner: str, steps):
    """Run a provider's generator: write each yielded `Resource` to the ledger, then create it.
    Returns the generator's return value (the `Snapshot` of `take`)."""
    if steps is None:
        return None
    try:
        resource = next(steps)
        while True:
            run.ledger.add(owner, resource.kind, **resource.data)
            resource.create()
            resource = next(steps)
    except StopIteration as end:
        return end.value


def check_entries(run: BackupRun, providers: dict[str, SnapshotProvider]) -> list[str]:
    """Before anything is released: problems that make the run's archive untrustworthy."""
    problems = []
    for entry in run.ledger.of():
        provider = providers.get(entry["owner"])
        if provider is None:
            continue
        try:
            problem = provider.check(run, entry)
        except EmgBorgError as error:
            run.release_errors.append(f"{entry['owner']}: cannot check {entry['kind']} {_what(entry)}: {error}")
            continue
        if problem:
            problems.append(problem)
    return problems


def release_entries(run: BackupRun, providers: dict[str, SnapshotProvider], core_release) -> None:
    """Release every ledger entry, newest first: a provider's through the provider, the core's
    through `core_release`. Each entry released is removed from the ledger; a failure is
    recorded in `run.release_errors` and the entry stays for the next run."""
    for entry in run.ledger.of():
        if entry.get("released_by") == "plugin":
            continue  # its plugin's `release` hook releases it (and reported it if it could not)
        owner = entry["owner"]
        release = core_release if owner == "core" else (providers[owner].release if owner in providers else None)
        if release is None:
            run.release_errors.append(f"cannot release {entry['kind']} {_what(entry)}: no snapshot provider "
                                      f"{owner!r} is installed (left in the ledger)")
            continue
        try:
            release(run, entry)
        except (EmgBorgError, OSError) as error:
            run.release_errors.append(f"{owner}: cannot release {entry['kind']} {_what(entry)}: {error}")
            continue
        run.ledger.remove(entry)


def _what(entry: dict) -> str:
    return str(entry.get("name") or entry.get("target") or entry.get("path") or "")
