"""The plugin hooks: each is documented, each is called, and third-party plugins load through the
`emg_borg` entry-point group exactly like the built-in ones, snapshot providers included."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys

from conftest import ROOT, leftovers, run
from emg_borg import hookspecs
from emg_borg.core import snapshot as snapshot_module
from emg_borg.plugins import DEFAULT_PLUGINS, get_plugin_manager

HOOKS = sorted(name for name, value in vars(hookspecs).items() if name.startswith("emg_borg_") and callable(value))
PROVIDER_METHODS = ("claims", "preflight", "clean_stale", "prepare", "take", "check", "release")


def test_every_hook_and_provider_method_is_documented_in_the_code_and_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in HOOKS:
        assert inspect.getdoc(getattr(hookspecs, name)), name
        assert f"`{name}`" in readme, f"{name} is not documented in README.md"
    for method in PROVIDER_METHODS:
        assert f"`{method}(" in inspect.getdoc(snapshot_module), method
        assert f"`{method}(" in readme, f"the provider method {method} is not documented in README.md"


def test_default_plugins_register_and_implement_every_hook():
    manager = get_plugin_manager(load_entrypoints=False)
    assert sorted(manager.get_name(p) for p in manager.get_plugins()) == sorted(DEFAULT_PLUGINS)
    manager.check_pending()  # raises on a hookimpl without a hookspec
    implemented = {impl.function.__name__ for name in HOOKS for impl in getattr(manager.hook, name).get_hookimpls()}
    assert set(HOOKS) - implemented == set()


THIRD_PARTY = '''
import contextlib, shutil
from emg_borg.config import Option
from emg_borg.core.snapshot import Resource, Snapshot, SnapshotProvider
from emg_borg.hookspecs import hookimpl


class CopyFs(SnapshotProvider):
    """A toy provider: copies the spool to a stable path (enough to prove the contract is used)."""
    name = "copyfs"

    def clean_stale(self, run):
        open(run.runtime.root / "clean-stale-called", "w").close()

    def take(self, run):
        base = run.runtime.snapshots
        target = base / str(run.layout.spooldir).lstrip("/")
        # The core must have recorded the copy before it is made:
        def copy():
            assert any(e["owner"] == "copyfs" and e["path"] == str(target) for e in run.ledger.entries)
            shutil.copytree(run.layout.spooldir, target)
        yield Resource("copy", {"path": target}, copy)
        return Snapshot(provider="copyfs", origin=run.layout.spooldir, base=base, name="copy")

    def release(self, run, entry):
        shutil.rmtree(entry["path"], ignore_errors=True)


@hookimpl
def emg_borg_config_tables():
    return {"site": {"rack": Option(str, "A1", "Where the gateway stands."),
                     "fail": Option(bool, False, "Fail while capturing the message id (for the tests).")}}


@hookimpl
def emg_borg_snapshot_providers():
    return [CopyFs()]


@hookimpl
def emg_borg_hold_consistency_point(run):
    @contextlib.contextmanager
    def point():
        open(run.runtime.root / "point-entered", "w").close()
        yield
    return point()


@hookimpl(tryfirst=True)
def emg_borg_capture_message_id(run):
    if run.config["site"]["fail"]:
        raise RuntimeError("the site's id service is down")
    run.message_id_source = "site plugin"
    return 424242


@hookimpl
def emg_borg_backup_patterns(run):
    return ["# site plugin was here"]


@hookimpl
def emg_borg_manifest_fields(run):
    return {"site": {"rack": run.config["site"]["rack"]}}


@hookimpl
def emg_borg_release(run):
    raise RuntimeError("the site plugin's release failed")


@hookimpl
def emg_borg_run_finished(outcome):  # only the argument it wants, as pluggy allows
    raise RuntimeError(f"the site's monitor is down ({outcome.command}, succeeded={outcome.succeeded})")
'''


def install_entry_point(tmp_path, name, module_name, module_source=None) -> dict:
    """A distribution on PYTHONPATH declaring `name` in the emg_borg entry-point group."""
    site = tmp_path / "site"
    dist = site / f"{module_name}_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[emg_borg]\n{name} = {module_name}\n")
    if module_source is not None:
        (site / f"{module_name}.py").write_text(module_source)
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def test_third_party_plugin_drives_every_backup_hook_and_its_own_provider(emg, tmp_path):
    env = install_entry_point(tmp_path, "site", "emg_site_plugin", THIRD_PARTY)
    emg.write_config("copyfs", '[site]\nrack = "B7"\n')
    cli = [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path)]
    generated = run([*cli, "config", "generate"], env=env).stdout
    assert "[site]\n# Where the gateway stands.\nrack = \"A1\"\n" in generated
    run([*cli, "before-backup"], env=env)
    manifest = json.loads((emg.runtime / "staging/emg-borg/manifest.json").read_text())
    assert manifest["site"] == {"rack": "B7"}
    assert manifest["message_id"] == 424242 and manifest["message_id_source"] == "site plugin"
    assert manifest["snapshot_provider"] == "copyfs"
    patterns = (emg.runtime / "patterns").read_text()
    assert "# site plugin was here" in patterns
    copy = emg.runtime / "snapshots" / str(emg.tree.spooldir).lstrip("/")
    assert f"R {emg.runtime / 'snapshots'}/./{str(emg.tree.spooldir).lstrip('/')}" in patterns
    assert (copy / "seqno.hdb").read_bytes() == (emg.tree.spooldir / "seqno.hdb").read_bytes()
    assert (emg.runtime / "clean-stale-called").exists() and (emg.runtime / "point-entered").exists()
    # The site plugin's release fails; everything else is still released, and the user is told.
    result = run([*cli, "after-backup"], env=env, check=False)
    assert result.returncode == 1
    assert "plugin site: RuntimeError: the site plugin's release failed" in result.stderr
    # The run's end is still reported (a failure: the release was incomplete); the plugin's own
    # failure to record it is only a warning.
    assert ("emg-borg: warning: plugin site could not record the end of the run: RuntimeError: the site's monitor is "
            "down (after-backup, succeeded=False)") in result.stderr.splitlines()
    assert not copy.exists() and not (emg.runtime / "staging").exists()
    assert not (emg.runtime / "ledger.json").exists()


def test_a_failed_backup_shows_its_error_first_and_what_could_not_be_released_after(emg, tmp_path):
    env = install_entry_point(tmp_path, "site", "emg_site_plugin", THIRD_PARTY)
    emg.write_config("copyfs", '[site]\nfail = true\n')
    result = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "before-backup"], env=env, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("emg-borg: error:")]
    assert result.returncode == 1
    assert errors == [
        "emg-borg: error: unexpected RuntimeError: the site's id service is down (run with -v for a traceback)",
        "emg-borg: error: release incomplete: plugin site: RuntimeError: the site plugin's release failed",
    ]
    # The snapshot copy and the staging area were still released, though the plugin's release failed.
    assert not (emg.runtime / "snapshots" / str(emg.tree.spooldir).lstrip("/")).exists()
    assert not (emg.runtime / "staging").exists() and not (emg.runtime / "ledger.json").exists()


def test_a_plugin_s_config_table_is_checked_with_file_and_line(emg, tmp_path):
    env = install_entry_point(tmp_path, "site", "emg_site_plugin", THIRD_PARTY)
    emg.write_config("copyfs", '[site]\nrack = 7\nshelf = "x"\n')
    result = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "config", "validate"], env=env,
                 check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert re.fullmatch(rf"emg-borg: error: {re.escape(str(emg.config_path))}:\d+: site.rack: expected a string, got 7",
                        lines[0]), lines
    assert "site.shelf: unknown key; known in [site]: rack" in lines[1]
    assert leftovers(emg) == []


def test_broken_third_party_plugin_is_a_clear_error_naming_it(emg, tmp_path):
    env = install_entry_point(tmp_path, "broken", "emg_missing_module")
    result = run([sys.executable, "-m", "emg_borg", "-c", str(emg.config_path), "discover"], check=False, env=env)
    assert result.returncode == 1
    assert re.search(r"emg-borg: error: cannot load plugin 'broken' \(emg_missing_module\).*ModuleNotFoundError", result.stderr)


def test_unknown_snapshot_provider_is_a_config_error(emg):
    emg.write_config("xfs")
    result = emg.emg_borg("before-backup", check=False)
    assert result.returncode == 2
    assert "snapshot.provider: unknown snapshot provider 'xfs'; known: auto, btrfs" in result.stderr
    assert not emg.runtime.exists()
