"""The plugin manager: loads ``comfyui.plugins`` entry points and gathers what plugins register."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import pluggy

from comfy import hookspecs

ENTRY_POINT_GROUP = "comfyui.plugins"

_plugin_manager: Optional[pluggy.PluginManager] = None


class PluginConflictError(Exception):
    """Two plugins registered the same name in one registry."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: Optional[str]
    version: Optional[str]


def create_plugin_manager(disabled: Iterable[str] = (), load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the hook specs, entry point plugins loaded except ``disabled``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _plugin_manager
    if _plugin_manager is None:
        from comfy.configuration import disabled_plugins

        # The host's command line is not ours; the environment and config files still apply.
        _plugin_manager = create_plugin_manager(disabled_plugins([]))
    return _plugin_manager


def set_plugin_manager(pm: Optional[pluggy.PluginManager]) -> None:
    """Replace the process-wide plugin manager (after configuration disables plugins, or in tests)."""
    global _plugin_manager
    _plugin_manager = pm


def list_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Active plugins with the distribution and version they came from, sorted by name."""
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # a blocked name
            continue
        dist = distributions.get(id(plugin))
        infos.append(PluginInfo(name, dist.project_name if dist else None, dist.version if dist else None))
    return sorted(infos, key=lambda info: info.name)


def plugin_source(pm: pluggy.PluginManager, plugin_name: str) -> str:
    """A plugin's name with its distribution, as errors show it."""
    plugin = pm.get_plugin(plugin_name)
    for candidate, dist in pm.list_plugin_distinfo():
        if candidate is plugin:
            return f"plugin {plugin_name!r} from {dist.project_name} {dist.version}"
    return f"plugin {plugin_name!r}"


def collect(pm: pluggy.PluginManager, hook_name: str, add: Callable[..., None]) -> None:
    """Call every implementation of a ``register``-style hook with a callback that knows its plugin.

    ``add(source, *args, **kwargs)`` receives the registering plugin's description first, so the
    registry can name both plugins when a name is registered twice.
    """
    hook = getattr(pm.hook, hook_name)
    # get_hookimpls lists in registration order (pluggy calls them last-first); registries keep load order.
    for impl in hook.get_hookimpls():
        source = plugin_source(pm, impl.plugin_name)

        def register(*args: Any, _source: str = source, **kwargs: Any) -> None:
            add(_source, *args, **kwargs)

        impl.function(register=register)


class Registry:
    """Named entries with the plugin each came from; a second registration of a name is an error."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def add(self, source: str, name: str, value: Any) -> None:
        if name in self.entries:
            raise PluginConflictError(
                f"{self.kind} {name!r} is registered twice: by {self.sources[name]} and by {source}")
        self.entries[name] = value
        self.sources[name] = source
