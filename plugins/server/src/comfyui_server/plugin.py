"""The ``server`` plugin: its options, ``comfyui_serve``, and the legacy ``server`` module."""
from __future__ import annotations

from typing import Any, Callable, Optional

from comfy.hookspecs import hookimpl


@hookimpl
def comfyui_add_options(parser: Any) -> None:
    from comfyui_server.options import add_options

    add_options(parser)


@hookimpl
def comfyui_serve(configuration: Any) -> Optional[int]:
    from comfyui_server.serve import serve

    return serve(configuration)


@hookimpl
def comfyui_register_legacy_modules(register: Callable[[str, str], None]) -> None:
    register("server", "comfyui_server.server")
