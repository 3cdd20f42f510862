"""The top-level modules vanilla custom nodes import (``folder_paths``, ``nodes``, ``comfy.sd``...).

Plugins say which of their modules stands behind each name (``comfyui_register_legacy_modules``);
one ``sys.meta_path`` finder hands out those modules, so ``import folder_paths`` in a vanilla node
gets the very module object the plugin uses.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Optional, Sequence

import pluggy

from comfy.plugins import Registry, collect

# Which distribution provides a legacy name, for the error when none is installed. The longest
# matching dotted prefix wins.
PROVIDERS: dict[str, str] = {
    "folder_paths": "comfyui-kernel (its local_models plugin)",
    "nodes": "comfyui-core-nodes",
    "node_helpers": "comfyui-core-nodes",
    "comfy.model_management": "comfyui-core-nodes",
    "comfy.model_patcher": "comfyui-core-nodes",
    "comfy.sd": "comfyui-core-nodes",
    "comfy.utils": "comfyui-core-nodes",
    "comfy.ldm": "comfyui-core-nodes",
    "comfy_extras": "comfyui-core-nodes",
    "comfy.samplers": "comfyui-samplers",
    "comfy.sample": "comfyui-samplers",
    "comfy.k_diffusion": "comfyui-samplers",
    "latent_preview": "comfyui-samplers",
    "server": "comfyui-server",
}
_PROVIDER_ROOTS = frozenset(name.split(".", 1)[0] for name in PROVIDERS)


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already importable module under its legacy name."""

    def __init__(self, target: str):
        self.target = target
        self._real_spec: Optional[importlib.machinery.ModuleSpec] = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped our alias spec onto the real module; give it its own back.
        module.__spec__ = self._real_spec


class _EmptyPackageLoader(importlib.abc.Loader):
    """An empty package standing for the parent of registered dotted names (``comfy_extras``)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


class LegacyModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves legacy module names to the modules plugins registered for them."""

    def __init__(self, table: dict[str, str]):
        self.set_table(table)

    def set_table(self, table: dict[str, str]) -> None:
        self.table = dict(table)
        # Every proper prefix of a dotted name: "comfy_extras" for "comfy_extras.nodes_mask".
        self.parents = frozenset(name.rsplit(".", depth)[0]
                                 for name in table for depth in range(1, name.count(".") + 1))

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        module_path = self.table.get(fullname)
        if module_path is not None:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module_path))
        is_parent = fullname in self.parents
        provider = None
        if not is_parent:
            if fullname.split(".", 1)[0] not in _PROVIDER_ROOTS:
                return None
            provider = _provider(fullname)
            if provider is None:
                return None
        # A real module of this name wins over a stand-in package or a "not installed" error.
        if self._others_find(fullname, path, target):
            return None
        if is_parent:
            return importlib.machinery.ModuleSpec(fullname, _EmptyPackageLoader(), is_package=True)
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: vanilla custom nodes get it from a plugin, and no installed "
            f"plugin registers it. Install {provider}.", name=fullname)

    def _others_find(self, fullname: str, path: Optional[Sequence[str]],
                     target: Optional[types.ModuleType]) -> bool:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            # A bare folder of that name on sys.path (a namespace package, no origin) does not count.
            if spec is not None and spec.origin is not None:
                return True
        return False


def _provider(fullname: str) -> Optional[str]:
    name = fullname
    while True:
        if name in PROVIDERS:
            return PROVIDERS[name]
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]


_finder: Optional[LegacyModuleFinder] = None


def legacy_module_table(pm: pluggy.PluginManager) -> dict[str, str]:
    """Legacy name -> module path from every plugin; a name registered twice is an error naming both."""
    registry = Registry("legacy module")
    collect(pm, "comfyui_register_legacy_modules", registry.add)
    return dict(registry.entries)


def install_legacy_modules(pm: pluggy.PluginManager) -> LegacyModuleFinder:
    """Install the finder with the plugins' table, or give the installed one the new table."""
    global _finder
    table = legacy_module_table(pm)
    if _finder is None:
        _finder = LegacyModuleFinder(table)
    else:
        _finder.set_table(table)
    if _finder not in sys.meta_path:
        # First, so that a registered name wins over a same-named file on sys.path (a custom node
        # folder holding "nodes.py", say).
        sys.meta_path.insert(0, _finder)
    return _finder


def uninstall_legacy_modules() -> None:
    """Remove the finder; modules already imported under legacy names stay in ``sys.modules``."""
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None


__all__ = ["PROVIDERS", "LegacyModuleFinder", "install_legacy_modules", "legacy_module_table",
           "uninstall_legacy_modules"]
