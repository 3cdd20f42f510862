"""The vanilla ComfyUI module names this plugin stands behind (``comfy.model_management``, ``nodes``...)."""
from __future__ import annotations

from typing import Callable

_PACKAGE = "comfyui_core_nodes"

# legacy name -> our module
LEGACY_MODULES: dict[str, str] = {
    "comfy.model_management": f"{_PACKAGE}.model_management",
    "comfy.model_patcher": f"{_PACKAGE}.model_patcher",
    "comfy.model_base": f"{_PACKAGE}.model_base",
    "comfy.model_sampling": f"{_PACKAGE}.model_sampling",
    "comfy.model_detection": f"{_PACKAGE}.detection",
    "comfy.latent_formats": f"{_PACKAGE}.latent_formats",
    "comfy.sd": f"{_PACKAGE}.sd",
    "comfy.ops": f"{_PACKAGE}.ops",
    "comfy.lora": f"{_PACKAGE}.lora",
    "comfy.conds": f"{_PACKAGE}.conds",
    "comfy.controlnet": f"{_PACKAGE}.controlnet",
    "comfy.utils": f"{_PACKAGE}.utils",
    "comfy.ldm.modules.attention": f"{_PACKAGE}.attention",
    "comfy.ldm.modules.diffusionmodules.openaimodel": f"{_PACKAGE}.unet",
    "comfy.ldm.modules.diffusionmodules.model": f"{_PACKAGE}.vae",
    "latent_preview": f"{_PACKAGE}.preview",
    "nodes": f"{_PACKAGE}.nodes",
}


def register_legacy_modules(register: Callable[[str, str], None]) -> None:
    for legacy_name, module_path in LEGACY_MODULES.items():
        register(legacy_name, module_path)


__all__ = ["LEGACY_MODULES", "register_legacy_modules"]
