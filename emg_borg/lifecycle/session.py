"""What every command starts from: the plugin manager, and the configuration checked against the
core's tables plus every plugin's."""

from __future__ import annotations

import pluggy

from emg_borg import config as config_module
from emg_borg.config import Config, Schema
from emg_borg.plugins import get_plugin_manager


def plugin_manager() -> pluggy.PluginManager:
    return get_plugin_manager()


def schema(manager: pluggy.PluginManager) -> Schema:
    # pluggy answers newest registration first; tables read best in registration order.
    return Schema.merge(reversed(manager.hook.emg_borg_config_tables()))


def load_config(path, manager: pluggy.PluginManager) -> Config:
    return config_module.load(path, schema(manager))


def default_config(manager: pluggy.PluginManager) -> Config:
    return config_module.defaults(schema(manager))


def sample_config(manager: pluggy.PluginManager) -> str:
    return config_module.sample(schema(manager))
