"""Queueing prompts and reading the queue and history: /prompt, /queue, /history, /interrupt, /free."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web

from comfyui_server.http import BadJSON, error_response, read_json, read_json_object

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

logger = logging.getLogger(__name__)


def prompt_error(status: int, error_type: str, message: str, details: str = "") -> web.Response:
    """ComfyUI's /prompt error body, which the frontend shows as message and details."""
    return web.json_response({"error": {"type": error_type, "message": message, "details": details or message,
                                        "extra_info": {}}, "node_errors": {}}, status=status)


def _id_list(body: dict[str, Any]) -> list[str]:
    """The ``delete`` list of a /queue or /history body; ``BadJSON`` when it is not a list."""
    ids = body.get("delete") or []
    if not isinstance(ids, list):
        raise BadJSON("delete must be a list of prompt ids")
    return [str(prompt_id) for prompt_id in ids]


def _delete_pending(server: "PromptServer", prompt_id: str) -> bool:
    transport = server.runtime.transport
    delete = getattr(transport, "delete", None)
    return delete(prompt_id) if delete is not None else transport.queue.delete_queue_item(prompt_id)


async def queue_prompt(server: "PromptServer", body: dict[str, Any]) -> web.Response:
    """Validate and queue one POST /prompt body; the response ComfyUI gives."""
    from comfy.graph import PromptValidationError
    from comfy.queue import QueueFullError
    from comfy.transport import validate

    if "prompt" not in body:
        return prompt_error(400, "no_prompt", "No prompt provided")
    queue = server.prompt_queue
    if "number" in body:
        try:
            number: float = float(body["number"])
        except (TypeError, ValueError):
            return prompt_error(400, "invalid_request", "number must be a number", repr(body["number"]))
    else:
        number = queue.next_number(bool(body.get("front")))
    prompt_id = str(body.get("prompt_id") or uuid.uuid4())
    targets: Optional[list[str]] = body.get("partial_execution_targets")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, (str, int)) for t in targets)):
        return prompt_error(400, "invalid_request", "partial_execution_targets must be a list of node ids")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        return prompt_error(400, "invalid_request", "extra_data must be a JSON object")
    extra_data = dict(extra_data)
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    extra_data.setdefault("create_time", int(time.time() * 1000))

    registry = server.runtime.registry
    try:
        # Nodes' VALIDATE_INPUTS may read files; keep the event loop free meanwhile.
        validated = await asyncio.to_thread(validate, registry, body["prompt"],
                                            [str(t) for t in targets] if targets is not None else None)
    except PromptValidationError as error:
        logger.warning("invalid prompt: %s", error)
        return web.json_response(error.body, status=400)
    try:
        server.runtime.transport.submit(prompt_id, validated, extra_data, number=number)
    except QueueFullError as error:
        return prompt_error(429, "queue_full", "The queue is full; try again when some prompts have run", str(error))
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": validated.node_errors})


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(server.get_queue_info())

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        try:
            body = await read_json_object(request)
        except BadJSON as error:
            return prompt_error(400, "invalid_request", "The request body is not a JSON object", str(error))
        return await queue_prompt(server, server.trigger_on_prompt(body))

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = server.prompt_queue.get_current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        ids = _id_list(body)
        if body.get("clear"):
            server.prompt_queue.wipe_queue()
        for prompt_id in ids:
            _delete_pending(server, prompt_id)
        return web.Response()

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query["offset"]) if "offset" in request.query else -1
        except ValueError:
            return error_response(400, "max_items and offset must be integers")
        return web.json_response(server.prompt_queue.get_history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request: web.Request) -> web.Response:
        return web.json_response(server.prompt_queue.get_history(request.match_info["prompt_id"]))

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        ids = _id_list(body)
        if body.get("clear"):
            server.prompt_queue.wipe_history()
        for prompt_id in ids:
            server.prompt_queue.delete_history_item(prompt_id)
        return web.Response()

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            body = await read_json(request, {})
        except BadJSON:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        # With an id only that prompt stops, and only if it is the one running.
        server.runtime.transport.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response()

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        body = await read_json_object(request, {})
        server.free_memory(unload_models=bool(body.get("unload_models")), free_memory=bool(body.get("free_memory")))
        return web.Response()


__all__ = ["add_routes", "prompt_error", "queue_prompt"]
