"""Loads third-party nodes: installed ``comfyui.custom_nodes`` packages and vanilla ``custom_nodes/`` folders.

A module contributes nodes through ``NODE_CLASS_MAPPINGS`` (with ``NODE_DISPLAY_NAME_MAPPINGS``) or
through ``comfy_entrypoint`` returning a ``comfy_api.latest.ComfyExtension``, and frontend files
through ``WEB_DIRECTORY``. A package that fails is recorded in ``registry.load_errors`` and logged;
loading goes on without it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any, Coroutine, Iterator, Optional, TypeVar

import pluggy

from comfy.nodes.package_typing import ExportedNodes
from comfy.nodes.registry import CustomNodeLoadError, NodeRegistry
from comfy.plugins import PluginConflictError

ENTRY_POINT_GROUP = "comfyui.custom_nodes"

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a failing package may raise: SystemExit too, since some packs call sys.exit() when a
# dependency is missing, and that must not end start-up.
_IMPORT_FAILURES = (Exception, SystemExit)


@dataclass(frozen=True)
class CustomNodeOptions:
    """Which custom node packages to load, from ``--disable-all-custom-nodes`` and friends."""
    disable_all: bool = False
    whitelist: tuple[str, ...] = ()
    # Shell-style globs.
    blacklist: tuple[str, ...] = ()

    @classmethod
    def from_configuration(cls, configuration: Any) -> CustomNodeOptions:
        return cls(disable_all=bool(getattr(configuration, "disable_all_custom_nodes", False)),
                   whitelist=tuple(getattr(configuration, "whitelist_custom_nodes", None) or ()),
                   blacklist=tuple(getattr(configuration, "blacklist_custom_nodes", None) or ()))

    def allows(self, *names: Optional[str]) -> bool:
        """Whether a package known by any of ``names`` (folder entry, entry point, distribution) loads."""
        known = [name for name in names if name]
        if any(fnmatch.fnmatch(name, pattern) for name in known for pattern in self.blacklist):
            return False
        return not self.disable_all or any(name in self.whitelist for name in known)


def load_custom_nodes(registry: NodeRegistry, configuration: Any = None, *, folders: Optional[list[str]] = None,
                      pm: Optional[pluggy.PluginManager] = None) -> None:
    """Add the nodes of installed custom node packages, then of the ``custom_nodes`` folders.

    ``folders`` defaults to ``comfy.paths.get_folder_paths("custom_nodes")``; ``pm`` (for the
    legacy module names vanilla nodes import) to the process-wide plugin manager.
    """
    from comfy.legacy import install_legacy_modules
    from comfy.plugins import get_plugin_manager

    options = CustomNodeOptions.from_configuration(configuration)
    install_legacy_modules(pm if pm is not None else get_plugin_manager())
    load_entry_point_packages(registry, options)
    if folders is None:
        from comfy.paths import get_folder_paths
        folders = get_folder_paths("custom_nodes")
    load_custom_node_folders(registry, folders, options)


# -- installed distributions ---------------------------------------------------------------------------

def load_entry_point_packages(registry: NodeRegistry, options: CustomNodeOptions) -> None:
    """Import each ``comfyui.custom_nodes`` entry point's module and gather nodes from it and below it."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        dist_name = dist.name if dist is not None else None
        if not options.allows(entry_point.name, dist_name):
            logger.info("Skipping custom node package %s: disabled by configuration", entry_point.name)
            continue
        source = f"custom node package {dist.name} {dist.version}" if dist is not None \
            else f"custom node package {entry_point.name}"
        started = time.perf_counter()
        try:
            module = entry_point.load()
        except _IMPORT_FAILURES as exc:
            _record_failure(registry, entry_point.name, entry_point.value, exc)
            continue
        if not isinstance(module, types.ModuleType):
            logger.warning("Entry point %s = %s names no module; custom node entry points must name one",
                           entry_point.name, entry_point.value)
            continue
        for found_in, exported in _scan_package(registry, module):
            _register(registry, exported, source, python_module=f"custom_nodes.{entry_point.name}",
                      package=entry_point.name, path=getattr(found_in, "__file__", None) or found_in.__name__)
        logger.debug("%6.1f ms: custom node package %s", (time.perf_counter() - started) * 1000, entry_point.name)


def _scan_package(registry: NodeRegistry, module: types.ModuleType) -> Iterator[tuple[types.ModuleType, ExportedNodes]]:
    """The nodes a module exports; where it exports none, those of its submodules, recursively.

    Stopping at a module that exports keeps a package whose ``__init__`` gathers its submodules'
    mappings from registering every node twice.
    """
    try:
        exported = _module_exports(module)
    except _IMPORT_FAILURES as exc:
        _record_failure(registry, module.__name__, getattr(module, "__file__", None) or module.__name__, exc)
        return
    if exported is not None:
        yield module, exported
        return
    for submodule_info in pkgutil.iter_modules(getattr(module, "__path__", None) or [], module.__name__ + "."):
        try:
            submodule = importlib.import_module(submodule_info.name)
        except _IMPORT_FAILURES as exc:
            _record_failure(registry, submodule_info.name, submodule_info.name, exc)
            continue
        yield from _scan_package(registry, submodule)


# -- custom_nodes folders ------------------------------------------------------------------------------

def load_custom_node_folders(registry: NodeRegistry, folders: list[str], options: CustomNodeOptions) -> None:
    """Import each module and package in ``folders`` on its own, as ComfyUI does."""
    for folder in folders:
        folder = os.path.abspath(folder)
        if not os.path.isdir(folder):
            continue
        # Packs import each other by folder name ("from comfyui_controlnet_aux import ...").
        if folder not in sys.path:
            sys.path.append(folder)
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if not _is_custom_node_module(entry, path):
                continue
            module_name = entry[:-3] if entry.endswith(".py") else entry
            if not options.allows(entry, module_name):
                logger.info("Skipping custom node %s: disabled by configuration", entry)
                continue
            _load_folder_module(registry, entry, module_name, path)


def _is_custom_node_module(entry: str, path: str) -> bool:
    if entry == "__pycache__" or entry.startswith(".") or entry.endswith((".disabled", ".example")):
        return False
    if os.path.isfile(path):
        return entry.endswith(".py")
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        logger.warning("Skipping %s: a custom node folder needs an __init__.py", path)
        return False
    return True


def _load_folder_module(registry: NodeRegistry, entry: str, module_name: str, path: str) -> None:
    started = time.perf_counter()
    is_package = os.path.isdir(path)
    # The path itself is the module name, as in ComfyUI: unique per folder, and never the name of
    # an installed module that a same-named pack would otherwise replace in sys.modules.
    sys_name = (path if is_package else path[:-3]).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(sys_name, os.path.join(path, "__init__.py") if is_package else path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_name] = module
    try:
        spec.loader.exec_module(module)
        exported = _module_exports(module, web_name=module_name)
    except _IMPORT_FAILURES as exc:
        sys.modules.pop(sys_name, None)
        _record_failure(registry, entry, path, exc)
        return
    if exported is None:
        logger.warning("Skipping %s: it has no NODE_CLASS_MAPPINGS, comfy_entrypoint or WEB_DIRECTORY", path)
        return
    _register(registry, exported, f"custom node {path}",
              python_module=f"custom_nodes.{module_name}", package=module_name, path=path)
    logger.debug("%6.1f ms: custom node %s", (time.perf_counter() - started) * 1000, path)


# -- what a module exports ----------------------------------------------------------------------------

def _module_exports(module: types.ModuleType, web_name: Optional[str] = None) -> Optional[ExportedNodes]:
    """A module's nodes and its web directory (under ``web_name``, by default the module's name).

    None when the module declares none of ``NODE_CLASS_MAPPINGS``, ``comfy_entrypoint`` and
    ``WEB_DIRECTORY``. As in ComfyUI, ``NODE_CLASS_MAPPINGS`` wins over ``comfy_entrypoint``.
    """
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    web_directory = getattr(module, "WEB_DIRECTORY", None)
    if mappings is None and entrypoint is None and web_directory is None:
        return None
    exported = ExportedNodes()
    if mappings is not None:
        exported.NODE_CLASS_MAPPINGS.update(mappings)
        exported.NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    elif entrypoint is not None:
        for node_class in _extension_nodes(entrypoint):
            schema = node_class.GET_SCHEMA()
            exported.NODE_CLASS_MAPPINGS[schema.node_id] = node_class
            if schema.display_name is not None:
                exported.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
    if web_directory is not None:
        web_path = os.path.abspath(os.path.join(os.path.dirname(module.__file__), web_directory))
        if os.path.isdir(web_path):
            exported.EXTENSION_WEB_DIRS[web_name or module.__name__] = web_path
        else:
            logger.warning("%s: WEB_DIRECTORY %s is not a folder", module.__name__, web_path)
    return exported


def _extension_nodes(entrypoint: Any) -> list[type]:
    """Await ``comfy_entrypoint()``, the extension's ``on_load()`` and its ``get_node_list()``."""
    from comfy_api.latest import ComfyExtension

    async def gather() -> list[type]:
        extension = entrypoint()
        if inspect.isawaitable(extension):
            extension = await extension
        if not isinstance(extension, ComfyExtension):
            raise TypeError(f"comfy_entrypoint returned {type(extension).__name__}, not a ComfyExtension")
        await extension.on_load()
        return list(await extension.get_node_list())

    return _run_coroutine(gather())


def _run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # This thread's loop is busy running our caller; a loop of our own needs a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="comfy_entrypoint") as pool:
        return pool.submit(asyncio.run, coroutine).result()


# -- registration --------------------------------------------------------------------------------------

def _register(registry: NodeRegistry, exported: ExportedNodes, source: str, python_module: str, package: str,
              path: str) -> None:
    for name, node_class in exported.NODE_CLASS_MAPPINGS.items():
        try:
            registry.register(source, name, node_class, exported.NODE_DISPLAY_NAME_MAPPINGS.get(name),
                              python_module)
        except PluginConflictError as exc:
            # The first registration stands; the package's other nodes still load.
            logger.error("%s", exc)
            registry.load_errors.append(CustomNodeLoadError(package, path, str(exc)))
    for web_name, web_path in exported.EXTENSION_WEB_DIRS.items():
        registry.web_directories.setdefault(web_name, web_path)


def _record_failure(registry: NodeRegistry, name: str, path: str, exc: BaseException) -> None:
    logger.error("Cannot import custom node %s (%s):\n%s", name, path,
                 "".join(traceback.format_exception(exc)))
    registry.load_errors.append(CustomNodeLoadError(name, path, f"{type(exc).__name__}: {exc}"))


__all__ = ["ENTRY_POINT_GROUP", "CustomNodeOptions", "load_custom_nodes", "load_entry_point_packages",
           "load_custom_node_folders"]
