"""Attention implementations contributed by plugins, chosen by name or by priority."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import pluggy

from comfy.plugins import Registry, collect


@dataclass(frozen=True)
class AttentionImplementation:
    name: str
    function: Callable[..., Any]
    priority: int
    source: str


def attention_implementations(pm: pluggy.PluginManager) -> dict[str, AttentionImplementation]:
    """Every registered implementation by name."""
    registry = Registry("attention implementation")

    def add(source: str, name: str, function: Callable[..., Any], priority: int = 0) -> None:
        registry.add(source, name, AttentionImplementation(name, function, priority, source))

    collect(pm, "comfyui_register_attention", add)
    return registry.entries


def choose_attention(pm: pluggy.PluginManager, name: Optional[str] = None) -> AttentionImplementation:
    """The implementation named by configuration, else the one with the highest priority."""
    implementations = attention_implementations(pm)
    if not implementations:
        raise LookupError("No attention implementation is registered; install the core nodes plugin")
    if name is not None:
        if name not in implementations:
            raise LookupError(f"No attention implementation named {name!r}; "
                              f"registered: {', '.join(sorted(implementations))}")
        return implementations[name]
    return max(implementations.values(), key=lambda implementation: implementation.priority)
