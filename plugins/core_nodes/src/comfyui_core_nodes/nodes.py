"""The vanilla ``nodes`` module: every registered node class by name, ``NODE_CLASS_MAPPINGS`` and constants.

Vanilla custom nodes ``import nodes`` to reach other nodes (``nodes.KSampler``,
``nodes.NODE_CLASS_MAPPINGS["VAEDecode"]``); here those come from the running kernel's node registry.
"""
from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384


def _registry() -> Any:
    from comfy.nodes.registry import current

    return current()


def __getattr__(name: str) -> Any:
    if name == "NODE_CLASS_MAPPINGS":
        return _registry().classes
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return _registry().display_names
    node_class = _registry().get(name)
    if node_class is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r} (no node of that name is registered)")
    return node_class


def __dir__() -> list[str]:
    return ["MAX_RESOLUTION", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", *_registry().classes]


__all__ = ["MAX_RESOLUTION"]
