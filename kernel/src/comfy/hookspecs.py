"""The whole extension surface of comfyui: every hook a plugin may implement.

Plugins are found through the ``comfyui.plugins`` entry point group and implement these with
``@comfy.hookspecs.hookimpl``. Registries take a ``register`` callback so one plugin can add many
things while the kernel keeps ordering and reports conflicts naming both plugins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional

import pluggy

if TYPE_CHECKING:
    import configargparse

    from comfy.cli_args_types import Configuration
    from comfy.nodes.registry import NodeRegistry
    from comfy.transport import Transport

PROJECT_NAME = "comfyui"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def comfyui_add_options(parser: "configargparse.ArgParser") -> None:
    """Add command-line options to the parser.

    Called once each time the kernel builds its parser, before parsing. Each option is also read
    from its ``COMFYUI_*`` environment variable and from config files. Options belong to the plugin
    that implements them, so an option of an uninstalled plugin is simply absent.

    Example::

        @hookimpl
        def comfyui_add_options(parser):
            parser.add_argument("--my-feature-level", type=int, default=1, help="...")
    """


@hookspec
def comfyui_register_nodes(register: Callable[..., None]) -> None:
    """Register node classes.

    ``register(name, node_class, display_name=None)`` adds one node type under its ComfyUI
    ``class_type`` name. ``node_class`` is a classic node (``INPUT_TYPES``, ``RETURN_TYPES``,
    ``FUNCTION``...) or a ``comfy_api.latest.io.ComfyNode``. Registering a name another plugin
    already registered is an error naming both plugins.

    Example::

        @hookimpl
        def comfyui_register_nodes(register):
            register("MyNode", MyNode, display_name="My Node")
    """


@hookspec
def comfyui_register_device_backends(register: Callable[..., None]) -> None:
    """Register compute device backends (cpu, cuda, mps, xpu...).

    ``register(name, backend)`` where ``backend`` follows ``comfy.devices.DeviceBackend``: it says
    whether it is available, which devices it has, their memory and supported dtypes.
    """


@hookspec
def comfyui_register_attention(register: Callable[..., None]) -> None:
    """Register attention implementations.

    ``register(name, implementation, priority=0)``: ``implementation`` is a callable
    ``(q, k, v, heads, mask=None, **options) -> tensor``. The highest priority implementation whose
    plugin reports it usable is the default; configuration may name one explicitly.
    """


@hookspec(firstresult=True)
def comfyui_resolve_model(folder_name: str, filename: str) -> Optional[str]:
    """Turn a model name as a workflow spells it into a local file path.

    Called for loader inputs such as ``ckpt_name`` in folder ``checkpoints``. The first plugin that
    returns a path wins; return None to let the next one try. The kernel's ``local_models`` plugin
    looks in the configured model folders and runs last, so a plugin may download a known model or
    redirect a name before it, using ``tryfirst=True``.
    """


@hookspec
def comfyui_model_names(folder_name: str) -> Iterable[str]:
    """Extra model names to offer in a folder's choice lists beside the files on disk.

    Return names a resolver of the same plugin can later turn into paths (known models, say).
    """


@hookspec
def comfyui_register_legacy_modules(register: Callable[[str, str], None]) -> None:
    """Fill in the legacy top-level modules vanilla custom nodes import.

    ``register(legacy_name, module_path)``: importing ``legacy_name`` (``folder_paths``, ``nodes``,
    ``server``, ``comfy.model_management``...) gives the module at ``module_path``, imported on
    first use. Two plugins registering one name is an error naming both.
    """


@hookspec(firstresult=True)
def comfyui_make_transport(configuration: "Configuration", registry: "NodeRegistry") -> Optional["Transport"]:
    """Choose how prompts are queued and how results and progress flow back.

    ``registry`` holds the node types of this process, for a transport that executes prompts itself.
    Return a ``comfy.transport.Transport`` to replace the in-process queue (a message broker,
    say), or None. The first non-None result wins; with none the kernel runs prompts in-process.
    """


@hookspec(firstresult=True)
def comfyui_serve(configuration: "Configuration") -> Optional[int]:
    """Run the main service of ``comfyui`` until it stops; return its exit code.

    The server plugin implements this. With no implementation ``comfyui`` says what to install.
    """


@hookspec
def comfyui_startup(configuration: "Configuration") -> None:
    """Called once after configuration is parsed and plugins are loaded, before any work runs."""


@hookspec
def comfyui_shutdown(configuration: "Configuration") -> None:
    """Called once when the process, server or embedded client shuts down."""


__all__ = ["hookimpl", "hookspec", "PROJECT_NAME"]
