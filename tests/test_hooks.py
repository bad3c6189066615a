"""The plugin hooks: each is documented, each is called, and third-party plugins load through the
`emg_borg` entry-point group exactly like the built-in ones."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys


from conftest import ROOT, run
from emg_borg import hookspecs
from emg_borg.plugins import DEFAULT_PLUGINS, get_plugin_manager

HOOKS = sorted(name for name, value in vars(hookspecs).items() if name.startswith("emg_borg_") and callable(value))


def test_every_hook_has_a_docstring_and_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in HOOKS:
        assert inspect.getdoc(getattr(hookspecs, name)), name
        assert f"`{name}`" in readme, f"{name} is not documented in README.md"


def test_default_plugins_register_and_implement_only_known_hooks():
    manager = get_plugin_manager(load_entrypoints=False)
    assert sorted(manager.get_name(p) for p in manager.get_plugins()) == sorted(DEFAULT_PLUGINS)
    manager.check_pending()  # raises on a hookimpl without a hookspec
    implemented = {impl.function.__name__ for name in HOOKS for impl in getattr(manager.hook, name).get_hookimpls()}
    # every hook but the restore ones is implemented by some built-in plugin
    missing = set(HOOKS) - implemented
    assert missing <= {"emg_borg_restore_database", "emg_borg_live_message_id"}, missing


THIRD_PARTY = '''
from emg_borg.hookspecs import hookimpl
from emg_borg.lifecycle.run import Snapshot

CALLS = []

@hookimpl
def emg_borg_snapshot_providers():
    return ["copyfs"]

@hookimpl
def emg_borg_cleanup_stale(run):
    open(run.runtime.root / "cleanup-called", "w").close()

@hookimpl
def emg_borg_hold_consistency_point(run):
    import contextlib
    @contextlib.contextmanager
    def point():
        open(run.runtime.root / "point-entered", "w").close()
        yield
    return point()

@hookimpl
def emg_borg_take_snapshot(run, provider):
    """A toy provider: copies the spool to a stable path (enough to prove the hook is used)."""
    if provider != "copyfs":
        return None
    import shutil
    base = run.runtime.snapshots
    target = base / str(run.layout.spooldir).lstrip("/")
    run.ledger.add("copyfs", "copy", path=target)
    shutil.copytree(run.layout.spooldir, target)
    return Snapshot(provider="copyfs", origin=run.layout.spooldir, base=base, name="copy")

@hookimpl
def emg_borg_release(run):
    import shutil
    for entry in run.ledger.of("copyfs"):
        shutil.rmtree(entry["path"], ignore_errors=True)
        run.ledger.remove(entry)

@hookimpl(tryfirst=True)
def emg_borg_capture_message_id(run):
    run.message_id_source = "site plugin"
    return 424242

@hookimpl
def emg_borg_begin_dumps(run):
    return None

@hookimpl
def emg_borg_finish_dumps(run):
    pass

@hookimpl
def emg_borg_backup_patterns(run):
    return ["# site plugin was here"]

@hookimpl
def emg_borg_manifest_fields(run):
    return {"site": {"rack": "B7"}}
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


def test_third_party_plugin_drives_every_backup_hook(emg, tmp_path):
    env = install_entry_point(tmp_path, "site", "emg_site_plugin", THIRD_PARTY)
    emg.write_config("copyfs")
    cli = [sys.executable, "-m", "emg_borg", "-c", str(emg.config_path)]
    run([*cli, "before-backup"], env=env)
    manifest = json.loads((emg.runtime / "staging/emg-borg/manifest.json").read_text())
    assert manifest["site"] == {"rack": "B7"}
    assert manifest["message_id"] == 424242 and manifest["message_id_source"] == "site plugin"
    assert manifest["snapshot_provider"] == "copyfs"
    patterns = (emg.runtime / "patterns").read_text()
    assert "# site plugin was here" in patterns
    assert f"R {emg.runtime / 'snapshots'}/./{str(emg.tree.spooldir).lstrip('/')}" in patterns
    assert (emg.runtime / "cleanup-called").exists() and (emg.runtime / "point-entered").exists()
    run([*cli, "after-backup"], env=env)
    assert not (emg.runtime / "snapshots" / str(emg.tree.spooldir).lstrip("/")).exists()


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
