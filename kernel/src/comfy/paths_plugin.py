"""The kernel's ``local_models`` plugin: finds models in the configured folders and provides ``folder_paths``."""
from __future__ import annotations

from typing import Callable, Optional

from comfy import paths
from comfy.hookspecs import hookimpl


@hookimpl(trylast=True)
def comfyui_resolve_model(folder_name: str, filename: str) -> Optional[str]:
    # Last, so that a plugin that downloads or redirects a name gets to answer first.
    return paths.get_state().local_full_path(folder_name, filename)


@hookimpl
def comfyui_register_legacy_modules(register: Callable[[str, str], None]) -> None:
    register("folder_paths", "comfy.paths")
