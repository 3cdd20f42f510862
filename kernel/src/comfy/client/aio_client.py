"""A client of a running comfyui (or ComfyUI) server over HTTP and its websocket.

``async with AsyncRemoteComfyClient("http://127.0.0.1:8188") as client: png = await client.queue_prompt(prompt)``.
Needs aiohttp, imported on first use: ``pip install comfyui-kernel[client]``.
"""
from __future__ import annotations

import asyncio
import json
import struct
import uuid
from typing import TYPE_CHECKING, Any, Generator, Mapping, NoReturn, Optional

from comfy.client.embedded_comfy_client import ProgressNotification, ProgressStream
from comfy.graph import PromptValidationError
from comfy.transport import PromptExecutionError, PromptInterruptedError

if TYPE_CHECKING:
    import aiohttp

# Events that end a prompt, as the server sends them to the prompt's client.
_ENDINGS = ("execution_success", "execution_error", "execution_interrupted")
# Binary websocket frames: 1 = preview [u32 format][image], 4 = preview [u32 length][json][image].
_PREVIEW, _PREVIEW_WITH_METADATA = 1, 4
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError as error:
        raise ImportError("AsyncRemoteComfyClient needs aiohttp: pip install comfyui-kernel[client]") from error
    return aiohttp


class RemoteComfyError(Exception):
    """The server refused a request; ``status`` and ``body`` are its answer."""

    def __init__(self, status: int, body: Any, what: str):
        self.status = status
        self.body = body
        reason = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else body
        super().__init__(f"{what} failed with HTTP {status}: {reason}")


def _preview(frame: bytes) -> Optional[dict[str, Any]]:
    """A binary preview frame as ``{"image", "image_type", ...metadata}``; None for other frames."""
    if len(frame) < 8:
        return None
    event, value = struct.unpack(">II", frame[:8])
    if event == _PREVIEW:
        return {"image": frame[8:], "image_type": _PREVIEW_FORMATS.get(value, "image/jpeg")}
    if event == _PREVIEW_WITH_METADATA:
        metadata = json.loads(frame[8:8 + value])
        return {**metadata, "image": frame[8 + value:]}
    return None


class RemoteTaskWithProgress(ProgressStream):
    """A prompt queued through /prompt: iterate ``progress()`` for its websocket events, await it for its outputs.

    Binary previews come as ``preview_image`` events whose data holds the image bytes and type.
    """

    def __init__(self, client: "AsyncRemoteComfyClient", prompt: Mapping[str, Any], prompt_id: str):
        super().__init__(prompt_id)
        self._task = asyncio.ensure_future(self._run(client, prompt))

    async def _run(self, client: "AsyncRemoteComfyClient", prompt: Mapping[str, Any]) -> dict[str, Any]:
        try:
            async with client.session.ws_connect(client.websocket_url) as socket:
                await socket.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
                # The first message is the status: from then on the server routes this client's events here.
                await socket.receive()
                await client._post_prompt_ui(prompt, self.prompt_id)
                event, data = await self._follow(socket)
                if event == "execution_error":
                    raise PromptExecutionError(data)
                if event == "execution_interrupted":
                    raise PromptInterruptedError(data)
                history = await client.get_history(self.prompt_id)
                return history[self.prompt_id]["outputs"]
        finally:
            self._events.put_nowait(None)

    async def _follow(self, socket: "aiohttp.ClientWebSocketResponse") -> tuple[str, dict[str, Any]]:
        """Queue this prompt's events until ``executing`` with no node (its history is written by then);
        return the ending event (success, error or interrupted)."""
        aiohttp = _aiohttp()
        ending: Optional[tuple[str, dict[str, Any]]] = None
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                data = event.get("data")
                if not isinstance(data, dict) or data.get("prompt_id") != self.prompt_id:
                    continue
                self._events.put_nowait(ProgressNotification(event["type"], data, self.prompt_id))
                if event["type"] in _ENDINGS:
                    ending = event["type"], data
                elif event["type"] == "executing" and data.get("node") is None and ending is not None:
                    return ending
            elif message.type == aiohttp.WSMsgType.BINARY:
                preview = _preview(message.data)
                # A preview without metadata belongs to this client's running prompt, which is this one.
                if preview is not None and preview.get("prompt_id", self.prompt_id) == self.prompt_id:
                    self._events.put_nowait(ProgressNotification("preview_image", preview, self.prompt_id))
            else:
                break
        raise ConnectionError(f"the websocket closed before prompt {self.prompt_id} finished")

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self._task.__await__()


class AsyncRemoteComfyClient:
    """Runs prompts on a server: through the REST API (``queue_prompt``, ``queue_prompt_api``) or as the
    frontend does, over /prompt and the websocket (``queue_prompt_ui``, ``queue_with_progress``).

    Failures raise what the embedded client raises: ``PromptValidationError`` (ComfyUI's error body in
    ``.body``) and ``PromptExecutionError`` (the ``execution_error`` payload in ``.payload``); other
    refusals raise ``RemoteComfyError``.
    """

    def __init__(self, server_address: str = "http://127.0.0.1:8188", client_id: Optional[str] = None,
                 websocket_address: Optional[str] = None, timeout: float = 600.0):
        self.server_address = server_address.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        if websocket_address is None:
            scheme, rest = self.server_address.split("://", 1)
            websocket_address = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self.client_id}"
        self.websocket_url = websocket_address
        self.timeout = timeout
        self._session: Optional["aiohttp.ClientSession"] = None

    @property
    def session(self) -> "aiohttp.ClientSession":
        if self._session is None or self._session.closed:
            aiohttp = _aiohttp()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout, connect=60))
        return self._session

    async def __aenter__(self) -> "AsyncRemoteComfyClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def url(self, path: str) -> str:
        return self.server_address + path

    # -- the REST API -------------------------------------------------------------------------------------

    async def _post_api(self, prompt: Mapping[str, Any], accept: str, prefer: Optional[str] = None) -> tuple[int, Any]:
        headers = {"Accept": accept, "Content-Type": "application/json"}
        if prefer:
            headers["Prefer"] = prefer
        async with self.session.post(self.url("/api/v1/prompts"), data=json.dumps(prompt),
                                     headers=headers) as response:
            status, body = response.status, await response.read()
        if status not in (200, 202, 204):
            _raise_for(status, body, "POST /api/v1/prompts")
        return status, body

    async def queue_prompt(self, prompt: Mapping[str, Any]) -> bytes:
        """Run a prompt and return the bytes of the last image it saved (empty when it saved none)."""
        _status, body = await self._post_api(prompt, "image/png")
        return body

    async def queue_prompt_api(self, prompt: Mapping[str, Any], prefer_header: Optional[str] = None,
                               accept_header: str = "application/json") -> dict[str, Any]:
        """Run a prompt: ``{"outputs", "urls", "prompt_id"}``, or ``{"prompt_id"}`` when queued async."""
        _status, body = await self._post_api(prompt, accept_header, prefer_header)
        return json.loads(body)

    async def queue_prompt_uris(self, prompt: Mapping[str, Any]) -> list[str]:
        """Run a prompt; the /view URLs of the images it produced."""
        return (await self.queue_prompt_api(prompt))["urls"]

    async def queue_and_forget_prompt_api(self, prompt: Mapping[str, Any]) -> str:
        """Queue a prompt without waiting for it; its id, for ``get_prompt_status``."""
        return (await self.queue_prompt_api(prompt, prefer_header="respond-async"))["prompt_id"]

    async def get_prompt_status(self, prompt_id: str) -> tuple[int, Any]:
        """(204, None) while queued or running, (200, outputs), (500, execution status) or (404, error)."""
        async with self.session.get(self.url(f"/api/v1/prompts/{prompt_id}")) as response:
            body = await response.read()
            return response.status, json.loads(body) if body else None

    async def poll_prompt_until_done(self, prompt_id: str, max_attempts: int = 600,
                                     poll_interval: float = 0.5) -> tuple[int, Any]:
        """``get_prompt_status`` until it is not 204; (408, None) when it never finished."""
        for _attempt in range(max_attempts):
            status, body = await self.get_prompt_status(prompt_id)
            if status != 204:
                return status, body
            await asyncio.sleep(poll_interval)
        return 408, None

    # -- as the frontend does: /prompt, the websocket and /history ----------------------------------------

    async def _post_prompt_ui(self, prompt: Mapping[str, Any], prompt_id: str) -> None:
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        async with self.session.post(self.url("/prompt"), json=body) as response:
            status, raw = response.status, await response.read()
        if status != 200:
            _raise_for(status, raw, "POST /prompt")

    def queue_with_progress(self, prompt: Mapping[str, Any], prompt_id: Optional[str] = None) -> RemoteTaskWithProgress:
        """Queue a prompt and follow its events: ``async for n in task.progress()``, then ``await task``."""
        return RemoteTaskWithProgress(self, prompt, prompt_id or str(uuid.uuid4()))

    async def queue_prompt_ui(self, prompt: Mapping[str, Any]) -> dict[str, Any]:
        """Run a prompt as the frontend does; its outputs from the history."""
        return await self.queue_with_progress(prompt)

    async def get_history(self, prompt_id: Optional[str] = None, max_items: Optional[int] = None) -> dict[str, Any]:
        path = f"/history/{prompt_id}" if prompt_id is not None else "/history"
        params = {"max_items": str(max_items)} if max_items is not None else {}
        return await self._get_json(path, params)

    async def len_queue(self) -> int:
        return (await self._get_json("/prompt"))["exec_info"]["queue_remaining"]

    async def get_jobs(self, **query: Any) -> dict[str, Any]:
        """/api/jobs with its filters (``status``, ``limit``, ``offset``, ``sort_by``...)."""
        return await self._get_json("/api/jobs", {key: str(value) for key, value in query.items() if value is not None})

    async def get_job(self, job_id: str) -> Optional[dict[str, Any]]:
        async with self.session.get(self.url(f"/api/jobs/{job_id}")) as response:
            status, body = response.status, await response.read()
        if status == 404:
            return None
        if status != 200:
            _raise_for(status, body, f"GET /api/jobs/{job_id}")
        return json.loads(body)

    async def interrupt(self, prompt_id: Optional[str] = None) -> None:
        async with self.session.post(self.url("/interrupt"), json={"prompt_id": prompt_id} if prompt_id else {}):
            pass

    async def _get_json(self, path: str, params: Optional[dict[str, str]] = None) -> Any:
        async with self.session.get(self.url(path), params=params or {}) as response:
            status, body = response.status, await response.read()
        if status != 200:
            _raise_for(status, body, f"GET {path}")
        return json.loads(body)


def _raise_for(status: int, raw: bytes, what: str) -> NoReturn:
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", errors="replace")
    if status == 400 and isinstance(body, dict) and isinstance(body.get("error"), dict) and "node_errors" in body:
        raise PromptValidationError({"error": body["error"], "node_errors": body["node_errors"]})
    if status == 500 and isinstance(body, dict) and body.get("status_str") == "error":
        details = body.get("error_details") or {}
        if any(event == "execution_interrupted" for event, *_ in body.get("messages") or []):
            raise PromptInterruptedError(details)
        raise PromptExecutionError(details)
    raise RemoteComfyError(status, body, what)


__all__ = ["AsyncRemoteComfyClient", "RemoteComfyError", "RemoteTaskWithProgress"]
