"""The core nodes plugin: registers the node modules, device backends, attention and legacy modules."""
from __future__ import annotations

import importlib

from comfy.hookspecs import hookimpl
from comfyui_core_nodes.image_options import comfyui_add_image_options  # noqa: F401  (a hookimpl, --disable-metadata)

# Each module exposes NODE_CLASS_MAPPINGS (and optionally NODE_DISPLAY_NAME_MAPPINGS).
NODE_MODULES: tuple[str, ...] = (
    "comfyui_core_nodes.nodes_conditioning",
    "comfyui_core_nodes.nodes_image",
    "comfyui_core_nodes.nodes_mask",
)


@hookimpl
def comfyui_register_nodes(register) -> None:
    for module_name in NODE_MODULES:
        module = importlib.import_module(module_name)
        display_names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {})
        for name, node_class in module.NODE_CLASS_MAPPINGS.items():
            register(name, node_class, display_names.get(name))
