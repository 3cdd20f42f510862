"""/ws: the websocket each frontend tab keeps open for queue status and execution events."""
from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from comfyui_server.messages import Client, dumps

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

logger = logging.getLogger(__name__)

API_PREFIX = False


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    @routes.get("/ws")
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        # A reconnecting tab keeps its id, so events of its running prompt still reach it.
        sid = request.query.get("clientId") or uuid.uuid4().hex
        client = Client(sid, socket)
        replaced = server.sockets.get(sid)
        server.sockets[sid] = client
        if replaced is not None:
            await replaced.socket.close()
        client.start()
        client.post(dumps({"type": "status", "data": {"status": server.get_queue_info(), "sid": sid}}))
        if server.client_id == sid and server.last_node_id is not None:
            client.post(dumps({"type": "executing", "data": {"node": server.last_node_id,
                                                            "prompt_id": server.last_prompt_id}}))
        first = True
        try:
            async for message in socket:
                if message.type == aiohttp.WSMsgType.ERROR:
                    logger.warning("websocket %s closed with an error: %s", sid, socket.exception())
                elif message.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(message.data)
                    except json.JSONDecodeError:
                        logger.warning("websocket %s sent text that is not JSON; ignored", sid)
                        continue
                    # Flags count only as the first message, as in ComfyUI.
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        flags = data.get("data")
                        client.feature_flags = flags if isinstance(flags, dict) else {}
                        client.post(dumps({"type": "feature_flags", "data": server.feature_flags()}))
                    first = False
        finally:
            if server.sockets.get(sid) is client:
                del server.sockets[sid]
            await client.stop()
        return socket


__all__ = ["API_PREFIX", "add_routes"]
