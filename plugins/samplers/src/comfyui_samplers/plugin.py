"""The samplers plugin: registers the sampling nodes and the legacy sampling modules."""
from __future__ import annotations

from typing import Callable

from comfy.hookspecs import hookimpl

# Legacy module names vanilla custom nodes import, and the modules standing behind them.
LEGACY_MODULES: dict[str, str] = {
    "comfy.samplers": "comfyui_samplers.samplers",
    "comfy.sample": "comfyui_samplers.sample",
    "comfy.k_diffusion.sampling": "comfyui_samplers.k_sampling",
    "comfy.k_diffusion.utils": "comfyui_samplers.k_utils",
    "comfy.extra_samplers.uni_pc": "comfyui_samplers.uni_pc",
    "comfy_extras.nodes_custom_sampler": "comfyui_samplers.nodes",
}


@hookimpl
def comfyui_register_nodes(register: Callable[..., None]) -> None:
    from comfyui_samplers import nodes  # declarations only: torch loads when a sampling node runs

    for name, node_class in nodes.NODE_CLASS_MAPPINGS.items():
        register(name, node_class, nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name))


@hookimpl
def comfyui_register_legacy_modules(register: Callable[[str, str], None]) -> None:
    for legacy_name, module_path in LEGACY_MODULES.items():
        register(legacy_name, module_path)
