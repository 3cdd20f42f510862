"""The node registry: every node type known to this process, with where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pluggy

from comfy.plugins import PluginConflictError, collect


@dataclass
class CustomNodeLoadError:
    """A custom node module or package that failed to import; start-up continued without it."""
    name: str
    path: str
    error: str


@dataclass
class NodeRegistry:
    """``NODE_CLASS_MAPPINGS`` and friends for the whole process, built from plugins and custom nodes."""
    classes: dict[str, type] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # Python module each node type came from, for /object_info's python_module field.
    modules: dict[str, str] = field(default_factory=dict)
    # Custom node package name -> its WEB_DIRECTORY, for the server to serve frontend extensions.
    web_directories: dict[str, str] = field(default_factory=dict)
    load_errors: list[CustomNodeLoadError] = field(default_factory=list)

    def register(self, source: str, name: str, node_class: type, display_name: Optional[str] = None,
                 module: Optional[str] = None) -> None:
        if name in self.classes:
            raise PluginConflictError(
                f"node {name!r} is registered twice: by {self.sources[name]} and by {source}")
        self.classes[name] = node_class
        self.sources[name] = source
        self.modules[name] = module or getattr(node_class, "RELATIVE_PYTHON_MODULE", None) or "nodes"
        if display_name is not None:
            self.display_names[name] = display_name

    def register_mappings(self, source: str, class_mappings: dict[str, type],
                          display_names: Optional[dict[str, str]] = None, module: Optional[str] = None) -> None:
        """Add a vanilla package's ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``."""
        display_names = display_names or {}
        for name, node_class in class_mappings.items():
            self.register(source, name, node_class, display_names.get(name), module)

    def get(self, name: str) -> Optional[type]:
        return self.classes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def __len__(self) -> int:
        return len(self.classes)


_current: Optional[NodeRegistry] = None


def build_node_registry(pm: pluggy.PluginManager, configuration: Any = None) -> NodeRegistry:
    """Gather node types from plugins, then from third-party packages and folders as configured."""
    from comfy.nodes import custom_nodes

    registry = NodeRegistry()
    collect(pm, "comfyui_register_nodes",
            lambda source, name, node_class, display_name=None: registry.register(source, name, node_class,
                                                                                  display_name))
    custom_nodes.load_custom_nodes(registry, configuration, pm=pm)
    set_current(registry)
    return registry


def current() -> NodeRegistry:
    """The registry the running executor and the legacy ``nodes`` module see."""
    if _current is None:
        from comfy.plugins import get_plugin_manager
        return build_node_registry(get_plugin_manager())
    return _current


def set_current(registry: Optional[NodeRegistry]) -> None:
    global _current
    _current = registry
