"""The hook this plugin adds to comfyui's surface: other plugins contribute known models through it."""
from __future__ import annotations

from typing import Callable

from comfy.hookspecs import hookspec


@hookspec
def comfyui_register_known_models(register: Callable[..., None]) -> None:
    """Add entries to the catalogue of known models.

    Called once per plugin manager, the first time a known model is looked up or listed.
    ``register(folder_name, filename, *, repo_id=None, path_in_repo=None, revision="main",
    repo_type="model", civitai_version_id=None, aliases=())`` adds one model:
    ``filename`` is the name workflows use in ``folder_name`` (``checkpoints``, ``loras``...); it is
    fetched from the Hugging Face repository ``repo_id`` (``path_in_repo`` defaults to ``filename``)
    or from CivitAI by ``civitai_version_id``. In folder ``huggingface`` the filename is a repository
    id, resolved to a snapshot folder. Registering a name another plugin registered in the same
    folder is an error naming both plugins.

    Example::

        @hookimpl
        def comfyui_register_known_models(register):
            register("loras", "my_style.safetensors", repo_id="me/my-loras")
    """
