"""The plugin manager and the built-in plugins.

Built-in plugins are listed in `DEFAULT_PLUGINS` and registered exactly like third-party ones;
third-party plugins are found through the `emg_borg` entry-point group.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

import pluggy

from emg_borg import hookspecs
from emg_borg.errors import EmgBorgError

logger = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "emg_borg.plugins.layout",
    "emg_borg.plugins.seqno",
    "emg_borg.plugins.mysql",
    "emg_borg.plugins.none",
    "emg_borg.plugins.btrfs",
    "emg_borg.plugins.zfs",
    "emg_borg.plugins.lvm",
    "emg_borg.plugins.metrics",
)


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(name), name=name)
    if load_entrypoints:
        _load_entrypoints(manager)
    manager.check_pending()
    return manager


def _load_entrypoints(manager: pluggy.PluginManager) -> None:
    for entry_point in entry_points(group=hookspecs.PROJECT):
        if manager.get_plugin(entry_point.name) is not None or manager.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:  # noqa: BLE001 - any import failure must name the plugin
            raise EmgBorgError(
                f"cannot load plugin {entry_point.name!r} ({entry_point.value}) from the "
                f"{hookspecs.PROJECT} entry-point group: {type(error).__name__}: {error}"
            ) from error
        manager.register(plugin, name=entry_point.name)
        logger.debug("loaded plugin %s from %s", entry_point.name, entry_point.value)
