"""``PromptServer``: the running server as vanilla custom nodes see it (the legacy ``server`` module).

Custom nodes add routes to ``PromptServer.instance.routes`` while they are imported, and call
``send_sync(event, data, sid)`` from any thread to reach websocket clients. The server also turns
the kernel's execution events into ComfyUI's websocket messages, routed to the prompt's client.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Union

from aiohttp import web

from comfyui_server.app import new_application
from comfyui_server.messages import (BinaryEventTypes, Client, EncodedPreview, binary_frame, dumps, encode_preview,
                                     progress_text_payload)
from comfyui_server.logs import LogEntry, install_log_buffer, terminal_size
from comfyui_server.progress import ProgressTracker

if TYPE_CHECKING:
    from comfy.runtime import Runtime
    from comfyui_server.users import UserManager

logger = logging.getLogger(__name__)

# Events a prompt without a client_id sends to nobody (ComfyUI sends only interruptions and progress then).
_CLIENT_ONLY_EVENTS = frozenset({"executing", "executed", "execution_start", "execution_cached",
                                 "execution_success", "execution_error"})

OnPromptHandler = Callable[[dict[str, Any]], dict[str, Any]]
Outgoing = Union[str, bytes, EncodedPreview]


class PromptServer:
    """The server custom nodes talk to. ``PromptServer.instance`` is the newest one."""

    instance: ClassVar[Optional["PromptServer"]] = None

    def __init__(self, configuration: Any = None, loop: Optional[asyncio.AbstractEventLoop] = None):
        PromptServer.instance = self
        self.configuration = configuration if configuration is not None else {}
        # Routes custom nodes add; they are served at /<path> and /api/<path> like the built-in ones.
        self.routes: web.RouteTableDef = web.RouteTableDef()
        self.loop: Optional[asyncio.AbstractEventLoop] = loop
        self.runtime: Optional["Runtime"] = None
        self.app: web.Application = new_application(self)
        self.web_root: Optional[str] = None
        self.sockets: dict[str, Client] = {}
        self.on_prompt_handlers: list[OnPromptHandler] = []
        self.supports: list[str] = ["custom_nodes_from_web"]
        # Which client's prompt runs now and its node, as ComfyUI's executor leaves them for custom nodes.
        self.client_id: Optional[str] = None
        self.last_node_id: Optional[str] = None
        self.last_prompt_id: Optional[str] = None
        self.address = "127.0.0.1"
        self.port = 8188
        self.log_subscribers: set[str] = set()
        self._user_manager: Optional["UserManager"] = None
        self._progress = ProgressTracker()
        self._state_lock = threading.Lock()

    # -- what the rest of the server builds on ------------------------------------------------------

    def attach(self, runtime: "Runtime", loop: asyncio.AbstractEventLoop) -> None:
        """Start relaying ``runtime``'s execution events and queue changes to websocket clients."""
        self.runtime = runtime
        self.loop = loop
        runtime.transport.add_listener(self._on_execution_event)
        runtime.transport.queue.on_change.append(self.queue_updated)
        install_log_buffer().listeners.append(self._on_log_entry)

    def detach(self) -> None:
        if self.runtime is not None:
            self.runtime.transport.remove_listener(self._on_execution_event)
            on_change = self.runtime.transport.queue.on_change
            if self.queue_updated in on_change:
                on_change.remove(self.queue_updated)
        listeners = install_log_buffer().listeners
        if self._on_log_entry in listeners:
            listeners.remove(self._on_log_entry)

    @property
    def prompt_queue(self) -> Any:
        """The kernel's ``PromptQueue`` (queue, running prompts and history)."""
        return self._require_runtime().transport.queue

    @property
    def user_manager(self) -> "UserManager":
        if self._user_manager is None:
            from comfyui_server.users import UserManager
            self._user_manager = UserManager(bool(self.option("multi_user", False)))
        return self._user_manager

    def option(self, name: str, default: Any = None) -> Any:
        value = self.configuration.get(name, default)
        return default if value is None else value

    @property
    def external_address(self) -> str:
        configured = self.option("external_address")
        if configured:
            return str(configured).rstrip("/")
        host = "localhost" if self.address in ("0.0.0.0", "::") else self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def _require_runtime(self) -> "Runtime":
        if self.runtime is None:
            raise RuntimeError("the server has no running kernel yet")
        return self.runtime

    # -- ComfyUI's PromptServer API -------------------------------------------------------------------

    def get_queue_info(self) -> dict[str, Any]:
        remaining = self.prompt_queue.get_tasks_remaining() if self.runtime is not None else 0
        return {"exec_info": {"queue_remaining": remaining}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.get_queue_info()})

    def add_on_prompt_handler(self, handler: OnPromptHandler) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict[str, Any]) -> dict[str, Any]:
        """Let custom nodes rewrite a POST /prompt body; a failing handler is logged and skipped."""
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # a custom node's bug must not refuse every prompt
                logger.exception("on_prompt handler %r failed; the prompt goes on without it", handler)
        return json_data

    def send_sync(self, event: Union[str, int], data: Any, sid: Optional[str] = None) -> None:
        """Send a message from any thread: JSON for a named event, a binary frame for a numbered one."""
        message = self._encode(event, data)
        if message is None:
            return
        self._post_threadsafe(message, sid)

    async def send(self, event: Union[str, int], data: Any, sid: Optional[str] = None) -> None:
        message = self._encode(event, data)
        if message is not None:
            self._deliver(message, sid)

    async def send_json(self, event: str, data: Any, sid: Optional[str] = None) -> None:
        self._deliver(dumps({"type": event, "data": data}), sid)

    async def send_bytes(self, event: int, data: bytes, sid: Optional[str] = None) -> None:
        self._deliver(binary_frame(event, data), sid)

    def send_progress_text(self, text: Union[str, bytes], node_id: str, sid: Optional[str] = None) -> None:
        self.send_sync(BinaryEventTypes.TEXT, progress_text_payload(text, node_id, self.last_prompt_id), sid)

    def free_memory(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """POST /free: drop cached outputs and loaded models, when no prompt is running."""
        if not (unload_models or free_memory):
            return
        if self.prompt_queue.get_current_queue()[0]:
            logger.info("/free asked while a prompt runs; nothing was freed")
            return
        executor = getattr(self._require_runtime().transport, "executor", None)
        if free_memory and executor is not None:
            executor.cache.clear()
            executor.instances.clear()
        # Only a plugin that loaded models has this module; importing it here would load torch for nothing.
        model_management = sys.modules.get("comfy.model_management")
        if model_management is not None and hasattr(model_management, "unload_all_models"):
            model_management.unload_all_models()
        logger.info("freed memory (unload_models=%s, free_memory=%s)", unload_models, free_memory)

    def feature_flags(self) -> dict[str, Any]:
        """The server's flags, sent to each websocket client and served at /features."""
        return {
            "supports_preview_metadata": True,
            "supports_progress_text_metadata": True,
            "max_upload_size": int(float(self.option("max_upload_size", 100)) * 1024 * 1024),
        }

    # -- delivery -------------------------------------------------------------------------------------

    def _encode(self, event: Union[str, int], data: Any) -> Optional[Outgoing]:
        if isinstance(event, int):
            if event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
                return encode_preview(data, {"prompt_id": self.last_prompt_id, "node_id": self.last_node_id,
                                             "display_node_id": self.last_node_id,
                                             "real_node_id": self.last_node_id, "parent_node_id": None})
            if event == BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA:
                preview, metadata = data
                return encode_preview(preview, dict(metadata or {}))
            return binary_frame(event, data)
        return dumps({"type": event, "data": data})

    def _deliver(self, message: Outgoing, sid: Optional[str]) -> None:
        if sid is None:
            for client in list(self.sockets.values()):
                client.post(message)
            return
        client = self.sockets.get(sid)
        if client is not None:
            client.post(message)

    def _on_execution_event(self, event: str, data: dict[str, Any], client_id: Optional[str]) -> None:
        """The transport's listener; runs on the executor's thread."""
        if event == "execution_start":
            with self._state_lock:
                self.client_id, self.last_prompt_id = client_id, data.get("prompt_id")
        elif event == "executing":
            self.last_node_id = data.get("node")
        if event == "preview_image":
            node = data.get("node")
            preview = encode_preview(data["image"], {
                "node_id": node, "display_node_id": data.get("display_node") or node, "parent_node_id": None,
                "real_node_id": node, "prompt_id": data.get("prompt_id")})
            self._post_threadsafe(preview, client_id)
            return
        state = self._progress.update(event, data)
        if state is not None:
            self._post_threadsafe(dumps({"type": "progress_state", "data": state}), client_id)
        if client_id is None and event in _CLIENT_ONLY_EVENTS:
            return
        if event == "execution_start" and "timestamp" not in data:
            data = {**data, "timestamp": int(time.time() * 1000)}
        self._post_threadsafe(dumps({"type": event, "data": data}), client_id)

    def _on_log_entry(self, entry: LogEntry) -> None:
        """Each new log line goes to the clients whose terminal panel subscribed."""
        if self.log_subscribers:
            message = {"entries": [entry], "size": terminal_size()}
            for sid in list(self.log_subscribers):
                self.send_sync("logs", message, sid)

    def _post_threadsafe(self, message: Outgoing, sid: Optional[str]) -> None:
        loop = self.loop
        if loop is None:
            return  # no server is running (an embedded client imported this module)
        try:
            loop.call_soon_threadsafe(self._deliver, message, sid)
        except RuntimeError:
            logger.debug("the server loop is closed; a message was dropped")


# Created on import so that custom nodes imported without a running server (an embedded client)
# still find an instance to add routes to; the serving process replaces it with its own.
PromptServer()

__all__ = ["BinaryEventTypes", "PromptServer"]
