"""Running the server: start the kernel, listen on each address, serve until SIGINT or SIGTERM."""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import sys
import threading
from typing import Any, Optional

import pluggy
from aiohttp import web

from comfyui_server.frontend import FrontendError, resolve_web_root
from comfyui_server.logs import install_log_buffer

logger = logging.getLogger("comfyui_server")


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


def listen_addresses(value: Optional[str]) -> list[str]:
    """The addresses of ``--listen``: comma-separated, IPv6 with or without brackets."""
    addresses = []
    for part in (value or "127.0.0.1").split(","):
        part = part.strip()
        if part.startswith("[") and part.endswith("]"):
            part = part[1:-1]
        if part and part not in addresses:
            addresses.append(part)
    return addresses or ["127.0.0.1"]


def _bind(address: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address) else socket.AF_INET
    except ValueError:  # a host name
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # So that "::" and "0.0.0.0" can both be listened on, as --listen without a value asks.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def display_url(address: str, port: int) -> str:
    host = "localhost" if address in ("0.0.0.0", "::", "127.0.0.1") else address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerRunner:
    """One server: its kernel runtime, its application and its listening sockets.

    ``await start()`` then ``await stop()``; ``urls`` lists where it listens. Tests and embedding
    applications use this directly; ``comfyui`` runs it through :func:`serve`.
    """

    def __init__(self, configuration: Any, plugin_manager: Optional[pluggy.PluginManager] = None):
        self.configuration = configuration
        self.plugin_manager = plugin_manager
        self.server: Any = None
        self.runtime: Any = None
        self.urls: list[str] = []
        self.port: Optional[int] = None
        self._runner: Optional[web.AppRunner] = None

    def option(self, name: str, default: Any = None) -> Any:
        value = self.configuration.get(name, default)
        return default if value is None else value

    async def prepare(self) -> web.Application:
        """Start the kernel and build the application, without listening."""
        from comfy.runtime import Runtime
        from comfyui_server.app import create_app
        from comfyui_server.server import PromptServer

        base = self.option("cwd") or self.option("base_directory") or os.getcwd()
        try:
            web_root = resolve_web_root(self.option("front_end_root"), self.option("front_end_version"), base)
        except FrontendError as error:
            raise ServeError(str(error)) from None
        install_log_buffer()
        loop = asyncio.get_running_loop()
        # Created before the kernel loads custom nodes: they add routes to PromptServer.instance on import.
        self.server = PromptServer(self.configuration, loop)
        self.server.web_root = web_root
        self.runtime = Runtime.start(self.configuration, self.plugin_manager)
        self.server.attach(self.runtime, loop)
        return create_app(self.server)

    async def start(self) -> None:
        app = await self.prepare()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        port = int(self.option("port", 8188))
        addresses = listen_addresses(self.option("listen"))
        listening: list[str] = []
        try:
            for address in addresses:
                try:
                    sock = _bind(address, port)
                except OSError as error:
                    if address == "::" and error.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) \
                            and len(addresses) > 1:
                        # "Every address" on a machine without IPv6 is every IPv4 address.
                        logger.warning("IPv6 is not available here; not listening on ::")
                        continue
                    raise ServeError(f"cannot listen on {address} port {port}: {error.strerror or error}") from None
                # Port 0 picks a free port once; every further address uses the same one.
                port = sock.getsockname()[1]
                await web.SockSite(self._runner, sock).start()
                listening.append(address)
        except BaseException:
            await self.stop()
            raise
        self.port = port
        self.server.address, self.server.port = listening[0], port
        self.urls = [display_url(address, port) for address in listening]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.detach()
            clients = list(self.server.sockets.values())
            if clients:
                # A client that never answers the close handshake must not hold up the shutdown.
                await asyncio.wait([asyncio.ensure_future(client.socket.close()) for client in clients], timeout=2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            # Closing joins the worker thread, which may be finishing a node.
            await asyncio.to_thread(runtime.close)


def _log_to_stdout() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stderr:
            handler.setStream(sys.stdout)


def _open_browser(url: str) -> None:
    import webbrowser

    threading.Thread(target=webbrowser.open, args=(url,), name="comfyui-open-browser", daemon=True).start()


async def _quick_test(runner: ServerRunner) -> int:
    try:
        await runner.prepare()
        errors = runner.runtime.registry.load_errors
        for error in errors:
            logger.error("custom node %s (%s) failed to import: %s", error.name, error.path, error.error)
        return 1 if errors else 0
    finally:
        await runner.stop()


async def run_until_stopped(configuration: Any, plugin_manager: Optional[pluggy.PluginManager] = None) -> int:
    from comfy.runtime import stop_on_signals

    runner = ServerRunner(configuration, plugin_manager)
    if runner.option("quick_test_for_ci", False):
        return await _quick_test(runner)
    stopping = stop_on_signals()
    await runner.start()
    try:
        if not runner.option("dont_print_server", False):
            for url in runner.urls:
                logger.info("To see the GUI go to: %s", url)
        if runner.option("auto_launch", False) and not runner.option("disable_auto_launch", False):
            _open_browser(runner.urls[0])
        await stopping.wait()
        logger.info("Stopping the server")
    finally:
        await runner.stop()
    return 0


def serve(configuration: Any, plugin_manager: Optional[pluggy.PluginManager] = None) -> int:
    """Serve until SIGINT or SIGTERM; the process exit code."""
    if configuration.get("log_stdout"):
        _log_to_stdout()
    try:
        return asyncio.run(run_until_stopped(configuration, plugin_manager))
    except ServeError as error:
        logger.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 0


__all__ = ["ServeError", "ServerRunner", "display_url", "listen_addresses", "serve"]
