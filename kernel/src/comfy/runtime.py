"""Bringing the kernel up and down: configuration, paths, plugins, nodes and the transport together."""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Optional

import pluggy

from comfy.cli_args_types import Configuration
from comfy.nodes.registry import NodeRegistry, build_node_registry
from comfy.transport import InProcessTransport, Transport

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """One running kernel, the context the embedded client, the launcher and the server share."""
    configuration: Configuration
    plugin_manager: pluggy.PluginManager
    registry: NodeRegistry
    transport: Transport

    @classmethod
    def start(cls, configuration: Optional[Configuration] = None,
              plugin_manager: Optional[pluggy.PluginManager] = None) -> "Runtime":
        from comfy import cli_args, paths
        from comfy.configuration import default_configuration
        from comfy.legacy import install_legacy_modules
        from comfy.plugins import get_plugin_manager, set_plugin_manager

        pm = plugin_manager or get_plugin_manager()
        if configuration is None:
            configuration = cli_args.args
        else:
            # A partial configuration (a few options set by hand) is completed with the defaults.
            configuration = Configuration({**default_configuration(pm), **configuration})
        # Module-level APIs (comfy.cli_args.args, folder_paths, nodes) answer for the most recently
        # started kernel, so plugins and vanilla nodes read the configuration this kernel runs with.
        set_plugin_manager(pm)
        cli_args.set_configuration(configuration)
        paths.configure_paths(configuration)
        install_legacy_modules(pm)
        registry = build_node_registry(pm, configuration)
        transport = pm.hook.comfyui_make_transport(configuration=configuration, registry=registry) or InProcessTransport(
            registry, configuration)
        try:
            pm.hook.comfyui_startup(configuration=configuration)
        except BaseException:
            # The caller gets no Runtime to close: stop the worker the transport started.
            transport.close()
            raise
        return cls(configuration, pm, registry, transport)

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self.plugin_manager.hook.comfyui_shutdown(configuration=self.configuration)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a long-running command's event loop (where the loop can take
    signals: not on Windows, nor off the main thread)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signal_number, stopping.set)
        except (NotImplementedError, RuntimeError):
            pass
    return stopping

