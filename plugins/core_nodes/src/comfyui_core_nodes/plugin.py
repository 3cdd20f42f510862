"""The core nodes plugin: registers the node modules, options, device backends, attention and legacy modules."""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Callable

from comfy.hookspecs import hookimpl
from comfyui_core_nodes.image_options import comfyui_add_image_options  # noqa: F401  (a hookimpl, --disable-metadata)

if TYPE_CHECKING:
    import configargparse

    from comfy.cli_args_types import Configuration

# Each module exposes NODE_CLASS_MAPPINGS (and optionally NODE_DISPLAY_NAME_MAPPINGS). They import no
# torch, numpy or PIL at module level (their nodes do when they run), so registering nodes stays light.
NODE_MODULES: tuple[str, ...] = (
    "comfyui_core_nodes.nodes_conditioning",
    "comfyui_core_nodes.nodes_loaders",
    "comfyui_core_nodes.nodes_latent",
    "comfyui_core_nodes.nodes_model",
    "comfyui_core_nodes.nodes_controlnet",
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


@hookimpl
def comfyui_add_options(parser: "configargparse.ArgParser") -> None:
    from comfyui_core_nodes.options import add_options

    add_options(parser)


@hookimpl
def comfyui_register_device_backends(register: Callable[..., None]) -> None:
    from comfyui_core_nodes import devices
    from comfyui_core_nodes.options import option

    for backend in devices.backends(option("cuda_device"), option("default_device")):
        register(backend.name, backend)


@hookimpl
def comfyui_register_attention(register: Callable[..., None]) -> None:
    from comfyui_core_nodes.attention import register_implementations

    register_implementations(register)


@hookimpl
def comfyui_register_legacy_modules(register: Callable[[str, str], None]) -> None:
    from comfyui_core_nodes.legacy import register_legacy_modules

    register_legacy_modules(register)


def _reset_choices() -> None:
    # Only modules already imported hold a choice; importing them here would import torch for nothing.
    management = sys.modules.get("comfyui_core_nodes.model_management")
    if management is not None:
        management.reset_device_state()
    attention = sys.modules.get("comfyui_core_nodes.attention")
    if attention is not None:
        attention.reset_choice()


@hookimpl
def comfyui_startup(configuration: "Configuration") -> None:
    from comfyui_core_nodes.options import set_started_configuration

    set_started_configuration(configuration)
    _reset_choices()


@hookimpl
def comfyui_shutdown(configuration: "Configuration") -> None:
    from comfyui_core_nodes.options import set_started_configuration

    management = sys.modules.get("comfyui_core_nodes.model_management")
    if management is not None:
        management.unload_all_models()
    set_started_configuration(None)
    _reset_choices()
