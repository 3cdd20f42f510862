"""``from comfy_api.latest import ComfyExtension, io, ui``: the schema node API of ComfyUI.

A package exports ``async def comfy_entrypoint() -> ComfyExtension``; the loader awaits it, then
``on_load()``, then ``get_node_list()`` and registers each node under its schema's ``node_id``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from comfy_api.latest import io, ui


class ComfyExtension(ABC):
    """A package's set of schema nodes."""

    async def on_load(self) -> None:
        """Called once before ``get_node_list``; set up what the nodes share here."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The node classes this package provides."""


# ComfyUI offers both spellings.
IO = io
UI = ui

__all__ = ["ComfyExtension", "io", "IO", "ui", "UI"]
