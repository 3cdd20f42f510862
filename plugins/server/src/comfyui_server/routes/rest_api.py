"""The REST API of /api/v1/prompts (run a prompt, answer with its image or outputs) and the OpenAPI document.

``POST /api/v1/prompts`` blocks until the prompt ran, unless the client prefers ``respond-async``.
``/openapi.yaml`` and ``/api/openapi.json`` describe every route this server registers.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import mimetypes
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypedDict
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from comfyui_server.files import PathOutsideRoot, atomic_write_bytes, contained_path
from comfyui_server.http import BadJSON, content_disposition, error_response, read_json

if TYPE_CHECKING:
    from comfy.execution import ExecutionOutcome
    from comfyui_server.server import PromptServer

# The paths are served exactly as written: /api/v1/prompts is already the API form.
API_PREFIX = False

JSON, PNG = "application/json", "image/png"
RESPOND_ASYNC = "respond-async"
# What an async client is told to wait before asking again, in seconds, as the fork tells it.
RETRY_AFTER = "60"
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[^;,]*)*);base64,(.*)$", re.DOTALL)
OPENAPI_PATHS = ("/openapi.yaml", "/openapi.json", "/api/openapi.yaml", "/api/openapi.json")
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# What a route registered for any method ("*") is listed as.
_ANY_METHOD = ("get", "post", "put", "patch", "delete")


class RequestError(Exception):
    """A request this API refuses; ``status`` and ``message`` are the answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ExecutionStatus(TypedDict, total=False):
    """A finished prompt's history status, with the ``execution_error`` payload when it failed."""
    status_str: str
    completed: bool
    messages: list[list[Any]]
    error_details: dict[str, Any]


@dataclass(frozen=True)
class Negotiated:
    """What the client asked for: the media type of the answer and whether to wait for it."""
    media_type: str
    respond_async: bool


@dataclass
class PromptRequest:
    """A POST body: the API-format prompt and what came with it."""
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)


def _media_ranges(header: str) -> list[tuple[str, float]]:
    """The media ranges of an Accept header, highest quality first (ties keep their order)."""
    ranges = []
    for item in header.split(","):
        media, *parameters = [part.strip() for part in item.split(";")]
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((media.lower(), quality))
    return sorted(ranges, key=lambda pair: -pair[1])


def negotiate(accept: str, content_type: str, prefer: str) -> Optional[Negotiated]:
    """The answer ``Accept`` asks for (JSON or PNG), or None when it accepts neither.

    ``respond-async`` may come in ``Prefer`` or, as the fork allows, as a ``+respond-async``
    suffix of Accept or Content-Type.
    """
    respond_async = RESPOND_ASYNC in prefer.lower() or f"+{RESPOND_ASYNC}" in (accept + content_type).lower()
    if not accept.strip():
        return Negotiated(JSON, respond_async)
    for media, quality in _media_ranges(accept):
        if quality <= 0:
            continue
        media = media.split("+")[0]
        if media in (JSON, "*/*", "application/*"):
            return Negotiated(JSON, respond_async)
        if media in (PNG, "image/*"):
            return Negotiated(PNG, respond_async)
    return None


def unwrap(body: Any) -> PromptRequest:
    """The prompt of a body that is either the prompt itself or ``{"prompt": {...}, ...}``.

    A prompt whose node is called ``prompt`` stays a prompt: its values are nodes (they have a
    ``class_type``), which a wrapper's are not.
    """
    if not isinstance(body, dict) or not body:
        raise RequestError(400, "No prompt was given: the body must be a JSON object of nodes")
    is_node_map = any(isinstance(value, dict) and "class_type" in value for value in body.values())
    if not is_node_map and isinstance(body.get("prompt"), dict):
        extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        extra_data = dict(extra_data)
        if isinstance(body.get("client_id"), str):
            extra_data["client_id"] = body["client_id"]
        if not body["prompt"]:
            raise RequestError(400, "No prompt was given: the prompt has no nodes")
        return PromptRequest(body["prompt"], extra_data)
    return PromptRequest(body)


def _save_input(data: bytes, filename: str) -> str:
    from comfy import paths

    path = contained_path(paths.get_input_directory(), filename)
    atomic_write_bytes(path, data)
    return filename


def save_data_urls(prompt: dict[str, Any]) -> dict[str, Any]:
    """``prompt`` with each ``data:<type>;base64,...`` input saved to the input folder and replaced by its name.

    Files are named by their content's SHA-256, so the same image sent twice is one file.
    """
    rewritten: dict[str, Any] = {}
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            rewritten[node_id] = node
            continue
        new_inputs = {}
        for name, value in inputs.items():
            match = _DATA_URL.match(value) if isinstance(value, str) and value.startswith("data:") else None
            if match is None:
                new_inputs[name] = value
                continue
            try:
                data = base64.b64decode(match.group(3), validate=True)
            except binascii.Error as error:
                raise RequestError(400, f"Input {name!r} of node {node_id} is not valid base64: {error}") from None
            extension = mimetypes.guess_extension(match.group(1)) or ".bin"
            new_inputs[name] = _save_input(data, hashlib.sha256(data).hexdigest()[:32] + extension)
        rewritten[node_id] = {**node, "inputs": new_inputs}
    return rewritten


async def read_prompt_request(request: web.Request, upload_limit: int) -> PromptRequest:
    """The prompt of a JSON or multipart body; a multipart body's files are saved to the input folder first.

    In a multipart body the prompt is the part named ``prompt`` (a field or a file), else the first
    field holding a JSON object; every other part with a file name is written into the input
    folder, replacing a file of that name, as the fork does.
    """
    from comfyui_server.routes.media import UploadError, read_upload_form, store_upload

    if not request.content_type.startswith("multipart/"):
        try:
            return unwrap(await read_json(request))
        except BadJSON as error:
            raise RequestError(400, str(error)) from None
    try:
        form = await read_upload_form(request, upload_limit)
    except UploadError as error:
        raise RequestError(error.status, str(error)) from None
    except (HttpProcessingError, ValueError) as error:
        raise RequestError(400, f"The multipart body is malformed: {error}") from None
    try:
        text = form.fields.get("prompt")
        files = dict(form.files)
        if text is None and "prompt" in files:
            text = b"".join(files.pop("prompt").chunks()).decode("utf-8", errors="replace")
        if text is None:
            text = next((value for value in form.fields.values() if value.lstrip().startswith("{")), None)
        if text is None:
            raise RequestError(400, "No prompt was given: the form has no 'prompt' part")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as error:
            raise RequestError(400, f"The prompt part is not valid JSON: {error}") from None
        prompt_request = unwrap(body)
        for uploaded in files.values():
            try:
                await asyncio.to_thread(store_upload, "input", "", uploaded.filename, uploaded.chunks(),
                                        uploaded.sha256, True)
            except UploadError as error:
                raise RequestError(error.status, str(error)) from None
            except OSError as error:
                raise RequestError(507, f"Could not store {uploaded.filename!r}: {error}") from None
        return prompt_request
    finally:
        form.close()


def saved_images(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image the outputs name, in node order: ``images`` of a node, or of its ``ui``."""
    found = []
    for node_outputs in outputs.values():
        if not isinstance(node_outputs, dict):
            continue
        images = node_outputs.get("images")
        if images is None and isinstance(node_outputs.get("ui"), dict):
            images = node_outputs["ui"].get("images")
        found.extend(image for image in images or [] if isinstance(image, dict) and "filename" in image)
    return found


def view_url(base: str, image: dict[str, Any]) -> str:
    query = {"filename": image["filename"], "type": image.get("type") or "output"}
    if image.get("subfolder"):
        query["subfolder"] = image["subfolder"]
    return f"{base}/view?{urlencode(query)}"


def image_path(image: dict[str, Any]) -> str:
    from comfy import paths

    directory = paths.get_directory_by_type(image.get("type") or "output")
    if directory is None:
        raise RequestError(500, f"The image {image['filename']!r} names an unknown folder type {image.get('type')!r}")
    try:
        return contained_path(directory, image.get("subfolder") or "", image["filename"])
    except PathOutsideRoot as error:
        raise RequestError(500, f"The image {image['filename']!r} is outside its folder: {error}") from None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def digest_header(body: bytes) -> str:
    """An RFC 3230 ``Digest`` value: the body's SHA-256, base64."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def execution_status(entry: Optional[dict[str, Any]]) -> ExecutionStatus:
    """The history status of a prompt that failed, with its ``execution_error`` payload."""
    status: ExecutionStatus = {"status_str": "error", "completed": False, "messages": []}
    if entry is not None:
        status.update(entry.get("status") or {})
    for message in status.get("messages") or []:
        if isinstance(message, (list, tuple)) and len(message) >= 2 and message[0] in (
                "execution_error", "execution_interrupted") and isinstance(message[1], dict):
            status["error_details"] = message[1]
    return status


def validation_error_body(body: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's ``{"error", "node_errors"}`` body, with the error's own keys beside them too.

    The fork answers with the bare error object, ComfyUI's /prompt with the wrapped one; clients of
    either read what they expect from this one.
    """
    return {**body.get("error", {}), **body}


def _json(value: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    # Outputs may hold values json cannot write (paths, numpy numbers); their text will do.
    return web.json_response(value, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


class PromptsAPI:
    """The handlers of /api/v1/prompts over one server."""

    def __init__(self, server: "PromptServer"):
        self.server = server

    def base_url(self, request: web.Request) -> str:
        external = self.server.option("external_address")
        return str(external).rstrip("/") if external else f"{request.scheme}://{request.host}"

    async def post(self, request: web.Request) -> web.StreamResponse:
        negotiated = negotiate(request.headers.get("Accept", ""), request.headers.get("Content-Type", ""),
                               request.headers.get("Prefer", "") + " " + request.query.get("prefer", ""))
        if negotiated is None:
            return error_response(400, f"Accept must allow {JSON} or {PNG}, not {request.headers.get('Accept')!r}")
        try:
            return await self._run(request, negotiated)
        except RequestError as error:
            return error_response(error.status, str(error))

    async def _run(self, request: web.Request, negotiated: Negotiated) -> web.StreamResponse:
        from comfy.graph import PromptValidationError
        from comfy.queue import QueueFullError
        from comfy.transport import TransportClosedError, validate

        runtime = self.server.runtime
        limit = int(float(self.server.option("max_upload_size", 100)) * 1024 * 1024)
        prompt_request = await read_prompt_request(request, limit)
        try:
            prompt = await asyncio.to_thread(save_data_urls, prompt_request.prompt)
        except (OSError, PathOutsideRoot) as error:
            raise RequestError(507, f"Could not store an image of the prompt: {error}") from None
        try:
            validated = await asyncio.to_thread(validate, runtime.registry, prompt)
        except PromptValidationError as error:
            return _json(validation_error_body(error.body), status=400)
        prompt_id = str(uuid.uuid4())
        try:
            future = runtime.transport.submit(prompt_id, validated, prompt_request.extra_data)
        except QueueFullError as error:
            return error_response(429, str(error))
        except TransportClosedError as error:
            return error_response(503, str(error))
        location = f"/api/v1/prompts/{prompt_id}"
        if negotiated.respond_async:
            return _json({"prompt_id": prompt_id}, status=202, headers={"Location": location,
                                                                       "Retry-After": RETRY_AFTER})
        try:
            # shield: the worker thread completes the future; this request going away must not cancel it.
            outcome: "ExecutionOutcome" = await asyncio.shield(asyncio.wrap_future(future))
        except TransportClosedError as error:
            return error_response(503, str(error))
        if outcome.status != "success":
            entry = self.server.prompt_queue.get_history(prompt_id).get(prompt_id)
            status = execution_status(entry)
            if outcome.error is not None:
                status["error_details"] = outcome.error
            return _json(status, status=500)
        return await self._answer(request, negotiated, prompt_id, outcome.outputs, location)

    async def _answer(self, request: web.Request, negotiated: Negotiated, prompt_id: str,
                      outputs: dict[str, Any], location: str) -> web.StreamResponse:
        images = saved_images(outputs)
        base = self.base_url(request)
        if negotiated.media_type == JSON:
            body = _dumps({"outputs": outputs, "urls": [view_url(base, image) for image in images],
                           "prompt_id": prompt_id}).encode()
            return web.Response(body=body, content_type=JSON,
                                headers={"Digest": digest_header(body), "Location": location})
        if not images:
            return web.Response(status=204, headers={"Location": location})
        # The last image saved to the output folder is the result; previews only when nothing was saved.
        saved = [image for image in images if (image.get("type") or "output") == "output"]
        image = (saved or images)[-1]
        try:
            data = await asyncio.to_thread(_read_file, image_path(image))
        except OSError as error:
            raise RequestError(500, f"The image {image['filename']!r} could not be read: {error}") from None
        content_type = mimetypes.guess_type(image["filename"])[0] or "application/octet-stream"
        return web.Response(body=data, content_type=content_type, headers={
            "Content-Disposition": content_disposition(os.path.basename(image["filename"])),
            "Digest": digest_header(data), "Location": view_url(base, image)})

    async def get_last(self, request: web.Request) -> web.Response:
        history = self.server.prompt_queue.get_history(max_items=1)
        if not history:
            return error_response(404, "No prompt has run yet")
        entry = next(iter(history.values()))
        return _json(entry["prompt"][2])

    async def get_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        queue = self.server.prompt_queue
        # The queue before the history: a prompt moves from one to the other, never back.
        running, pending = queue.get_current_queue()
        if any(item[1] == prompt_id for item in (*running, *pending)):
            return web.Response(status=204)
        entry = queue.get_history(prompt_id).get(prompt_id)
        if entry is None:
            return error_response(404, f"No prompt {prompt_id!r} is queued, running or in the history")
        if (entry.get("status") or {}).get("status_str") == "error":
            return _json(execution_status(entry), status=500)
        return _json(entry.get("outputs") or {})


# -- the OpenAPI document -----------------------------------------------------------------------------

def load_document() -> dict[str, Any]:
    """The packaged OpenAPI document, each path marked ``x-api-prefix`` also listed under /api."""
    import yaml
    from importlib.resources import files

    document = yaml.safe_load(files("comfyui_server").joinpath("openapi.yaml").read_text(encoding="utf-8"))
    expanded: dict[str, Any] = {}
    for path, item in document["paths"].items():
        prefixed = bool(item.pop("x-api-prefix", False))
        expanded[path] = item
        if prefixed:
            expanded["/api" + path] = _renamed_operations(item, "_api")
    document["paths"] = expanded
    return document


def _renamed_operations(item: dict[str, Any], suffix: str) -> dict[str, Any]:
    # operationIds must be unique in a document; the /api form gets its own.
    copy = dict(item)
    for method in _METHODS:
        if isinstance(copy.get(method), dict) and "operationId" in copy[method]:
            copy[method] = {**copy[method], "operationId": copy[method]["operationId"] + suffix}
    return copy


def registered_operations(app: web.Application) -> dict[str, set[str]]:
    """OpenAPI path -> lower-case methods, for every route ``app`` serves.

    A static folder at ``/prefix`` is ``/prefix/{filename}``; HEAD beside GET is left out, since
    aiohttp answers HEAD for every GET route.
    """
    operations: dict[str, set[str]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        if isinstance(resource, web.StaticResource):
            path = resource.canonical.rstrip("/") + "/{filename}"
        else:
            path = resource.canonical
        methods = list(_ANY_METHOD) if route.method == "*" else [route.method.lower()]
        operations.setdefault(path, set()).update(methods)
    for methods in operations.values():
        if "get" in methods:
            methods.discard("head")
    return operations


def _stub_operation(path: str, method: str) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{([^}/]+)}", path)]
    operation: dict[str, Any] = {
        "summary": "A route a custom node or an extension folder added",
        "tags": ["custom nodes"],
        "responses": {"default": {"description": "Whatever the custom node answers"}},
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def served_document(app: web.Application) -> dict[str, Any]:
    """The packaged document plus a generic entry for each route it does not describe (custom nodes')."""
    document = load_document()
    paths = document["paths"]
    for path, methods in sorted(registered_operations(app).items()):
        for method in sorted(methods):
            if method not in paths.get(path, {}):
                paths.setdefault(path, {})[method] = _stub_operation(path, method)
    return document


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    api = PromptsAPI(server)
    routes.post("/api/v1/prompts")(api.post)
    routes.get("/api/v1/prompts")(api.get_last)
    routes.get("/api/v1/prompts/{prompt_id}")(api.get_one)

    rendered: dict[str, bytes] = {}

    async def get_openapi(request: web.Request) -> web.Response:
        if not rendered:
            # The routes are fixed once the application runs; render both forms once.
            import yaml

            document = await asyncio.to_thread(served_document, request.app)
            rendered["json"] = json.dumps(document).encode()
            # Dumped from the JSON's copy: the /api twins share objects, which YAML would write as aliases.
            rendered["yaml"] = yaml.safe_dump(json.loads(rendered["json"]), sort_keys=False,
                                              allow_unicode=True).encode()
        if request.path.endswith(".json"):
            return web.Response(body=rendered["json"], content_type=JSON)
        return web.Response(body=rendered["yaml"], content_type="application/yaml", charset="utf-8")

    for path in OPENAPI_PATHS:
        routes.get(path)(get_openapi)


__all__ = ["API_PREFIX", "ExecutionStatus", "Negotiated", "PromptRequest", "PromptsAPI", "RequestError",
           "add_routes", "digest_header", "execution_status", "load_document", "negotiate",
           "read_prompt_request", "registered_operations", "save_data_urls", "saved_images",
           "served_document", "unwrap", "validation_error_body", "view_url"]
