"""The broker layout and the messages frontends and workers exchange, with their encoding.

Everything is namespaced by ``--distributed-queue-name`` ``N``:

- ``N``: the durable work queue of prompts (a quorum queue); each worker takes one at a time.
- ``N.dead``: dead letters, the reason in the ``x-comfyui-dead-letter-reason`` header (or ``x-death``).
- ``N.progress``: topic exchange of execution events, routed ``N.<client id>`` (``N.<frontend id>``
  for prompts without a client), so any frontend that binds a client's key follows its prompts.
- ``N.control``: fanout exchange every worker hears: interrupts, and prompts no one waits for any more.
- ``N.frontend.<id>``: one frontend's queue: the results of its prompts (their reply-to) and the
  events of the routing keys it bound.
- ``N.worker.<id>``: one worker's queue of control messages.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from comfy.progress import encode_preview_image

PROTOCOL_VERSION = 1

# Message ``type`` properties.
PROMPT = "comfyui.prompt"
RESULT = "comfyui.result"
EVENT = "comfyui.event"
PREVIEW = "comfyui.preview"
CONTROL = "comfyui.control"

REASON_HEADER = "x-comfyui-dead-letter-reason"
WORKER_HEADER = "x-comfyui-worker"
# Quorum queues count earlier deliveries of a message in this header.
DELIVERY_COUNT_HEADER = "x-delivery-count"

JSON = "application/json"
# A frontend gone this long (its queue unused) loses its queue and the results waiting in it.
FRONTEND_QUEUE_EXPIRES_MS = 60 * 60 * 1000

_ROUTE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class MalformedMessage(Exception):
    """A message that cannot be decoded, or lacks what its type requires; the text is the reason."""


class AbandonedPromptError(Exception):
    """A prompt that several workers took and none finished (each died running it): refused, not run again."""


@dataclass(frozen=True)
class Topology:
    """The names of the queues and exchanges of one ``--distributed-queue-name``."""
    name: str

    @property
    def work_queue(self) -> str:
        return self.name

    @property
    def dead_letters(self) -> str:
        return f"{self.name}.dead"

    @property
    def progress_exchange(self) -> str:
        return f"{self.name}.progress"

    @property
    def control_exchange(self) -> str:
        return f"{self.name}.control"

    @property
    def work_queue_arguments(self) -> dict[str, Any]:
        # Quorum: replicated where the broker is clustered, and it counts deliveries, so a worker
        # recognizes a prompt that earlier workers took and never finished. Messages the broker itself
        # dead-letters land in N.dead with x-death.
        return {"x-queue-type": "quorum", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dead_letters}

    def frontend_queue(self, frontend_id: str) -> str:
        return f"{self.name}.frontend.{frontend_id}"

    def worker_queue(self, worker_id: str) -> str:
        return f"{self.name}.worker.{worker_id}"

    def route(self, owner: str) -> str:
        """The progress routing key of a client (or frontend) id: ``N.<id>``.

        Ids that are not plain words (dots and ``*``/``#`` mean something in topic keys) are hashed.
        """
        if _ROUTE_TOKEN.fullmatch(owner) is None:
            owner = "h" + hashlib.sha256(owner.encode()).hexdigest()[:40]
        return f"{self.name}.{owner}"


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: its ``type`` property, body and headers (picklable, no aio-pika types)."""
    type: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = JSON


@dataclass
class PromptJob:
    """A prompt as the work queue carries it."""
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    frontend: str
    route: str
    number: float = 0
    # From the message's properties, not its body.
    reply_to: str = ""
    deliveries: int = 0

    def encode(self) -> Outgoing:
        body = {"prompt_id": self.prompt_id, "prompt": self.prompt, "extra_data": self.extra_data,
                "outputs_to_execute": self.outputs_to_execute, "frontend": self.frontend, "route": self.route,
                "number": self.number}
        return Outgoing(PROMPT, dumps(body), {"comfyui-protocol": PROTOCOL_VERSION})


@dataclass
class PromptReply:
    """A prompt's result as a worker returns it: ComfyUI's outputs, meta and status messages, or its error."""
    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: Optional[dict[str, Any]] = None
    messages: list[list[Any]] = field(default_factory=list)
    worker: str = ""

    def encode(self) -> Outgoing:
        return Outgoing(RESULT, dumps(asdict(self)))


@dataclass(frozen=True)
class ControlMessage:
    """``interrupt``: stop these prompts (all of ``frontend``'s running ones when None).
    ``drop``: nobody waits for these prompts any more; skip them, stop them if they run."""
    action: str
    prompt_ids: Optional[list[str]]
    frontend: str

    def encode(self) -> Outgoing:
        return Outgoing(CONTROL, dumps(asdict(self)))


@dataclass(frozen=True)
class Event:
    """One execution event of a prompt, as the frontend hands it to its listeners."""
    prompt_id: str
    event: str
    data: dict[str, Any]
    worker: str


def dumps(value: Any) -> bytes:
    # Node outputs may hold values JSON cannot write (numpy numbers, paths); their text will do, as
    # the server does for websocket messages.
    return json.dumps(value, default=str, separators=(",", ":")).encode()


def _loads_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MalformedMessage(f"the {what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"the {what} is not a JSON object but {type(value).__name__}")
    return value


def _field(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise MalformedMessage(f"the {what} has no valid {name!r} ({kind.__name__} expected, got {value!r:.80})")
    return value


def decode_prompt(body: bytes, reply_to: Optional[str], headers: Optional[Mapping[str, Any]]) -> PromptJob:
    """A work-queue message as a ``PromptJob``; ``MalformedMessage`` says what is wrong with it."""
    document = _loads_object(body, "prompt message")
    prompt_id = _field(document, "prompt_id", str, "prompt message")
    if not prompt_id:
        raise MalformedMessage("the prompt message has an empty prompt_id")
    outputs = document.get("outputs_to_execute")
    if not isinstance(outputs, list) or not all(isinstance(item, str) for item in outputs):
        raise MalformedMessage("the prompt message has no valid 'outputs_to_execute' (a list of node ids)")
    extra_data = document.get("extra_data")
    extra_data = {} if extra_data is None else extra_data
    if not isinstance(extra_data, dict):
        raise MalformedMessage("the prompt message's 'extra_data' is not an object")
    if not reply_to:
        raise MalformedMessage("the prompt message has no reply_to: its result could reach nobody")
    number = document.get("number", 0)
    return PromptJob(
        prompt_id=prompt_id, prompt=_field(document, "prompt", dict, "prompt message"), extra_data=extra_data,
        outputs_to_execute=outputs, frontend=str(document.get("frontend") or ""),
        route=str(document.get("route") or ""), number=number if isinstance(number, (int, float)) else 0,
        reply_to=reply_to, deliveries=delivery_count(headers))


def delivery_count(headers: Optional[Mapping[str, Any]]) -> int:
    """How many times the broker delivered this message before (0 the first time)."""
    value = (headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return value if isinstance(value, int) else 0


def decode_reply(body: bytes) -> PromptReply:
    document = _loads_object(body, "result message")
    status = _field(document, "status", str, "result message")
    if status not in ("success", "error", "interrupted"):
        raise MalformedMessage(f"the result message has an unknown status {status!r}")
    error = document.get("error")
    return PromptReply(
        prompt_id=_field(document, "prompt_id", str, "result message"), status=status,
        outputs=document.get("outputs") or {}, meta=document.get("meta") or {},
        error=error if isinstance(error, dict) else None, messages=document.get("messages") or [],
        worker=str(document.get("worker") or ""))


def decode_control(body: bytes) -> ControlMessage:
    document = _loads_object(body, "control message")
    action = _field(document, "action", str, "control message")
    ids = document.get("prompt_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(item, str) for item in ids)):
        raise MalformedMessage("the control message's prompt_ids is not a list of ids")
    return ControlMessage(action, ids, str(document.get("frontend") or ""))


def encode_event(prompt_id: str, event: str, data: dict[str, Any]) -> Optional[Outgoing]:
    """An executor event as a message; previews become an encoded image. None: nothing to send."""
    if event == "preview_image":
        return _encode_preview(prompt_id, data)
    return Outgoing(EVENT, dumps({"prompt_id": prompt_id, "event": event, "data": data}))


def decode_event(message_type: Optional[str], body: bytes, headers: Optional[Mapping[str, Any]]) -> Event:
    worker = str((headers or {}).get(WORKER_HEADER) or "")
    if message_type == PREVIEW:
        return _decode_preview(body, headers or {}, worker)
    document = _loads_object(body, "event message")
    data = _field(document, "data", dict, "event message")
    return Event(_field(document, "prompt_id", str, "event message"), _field(document, "event", str, "event message"),
                 data, worker)


def _encode_preview(prompt_id: str, data: dict[str, Any]) -> Optional[Outgoing]:
    """A ``(format, PIL image, max_size)`` preview, resized and encoded here so only the image bytes travel."""
    image_format, encoded = encode_preview_image(data["image"])
    headers = {"prompt_id": prompt_id, "node": _text(data.get("node")), "display_node": _text(data.get("display_node")),
               "format": image_format}
    return Outgoing(PREVIEW, encoded, headers, "image/png" if image_format == "PNG" else "image/jpeg")


def _decode_preview(body: bytes, headers: Mapping[str, Any], worker: str) -> Event:
    """The preview as the in-process executor reports it: ``(format, PIL image, None)``."""
    from PIL import Image, UnidentifiedImageError

    prompt_id = headers.get("prompt_id")
    if not isinstance(prompt_id, str):
        raise MalformedMessage("the preview message has no prompt_id header")
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise MalformedMessage(f"the preview message's image cannot be read: {error}") from None
    data = {"prompt_id": prompt_id, "node": headers.get("node"), "display_node": headers.get("display_node"),
            "image": (str(headers.get("format") or image.format or "JPEG"), image, None)}
    return Event(prompt_id, "preview_image", data, worker)


def error_payload(prompt_id: str, exception_type: str, exception_message: str, node_id: Optional[str] = None,
                  node_type: Optional[str] = None) -> dict[str, Any]:
    """ComfyUI's ``execution_error`` data for a failure outside any node's code (a refused or lost prompt)."""
    return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type, "executed": [],
            "exception_message": exception_message, "exception_type": exception_type, "traceback": [],
            "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


__all__ = ["AbandonedPromptError", "CONTROL", "ControlMessage", "EVENT", "Event", "MalformedMessage",
           "Outgoing", "PREVIEW", "PROMPT", "PromptJob", "PromptReply", "REASON_HEADER", "RESULT", "Topology",
           "WORKER_HEADER", "decode_control", "decode_event", "decode_prompt", "decode_reply",
           "delivery_count", "dumps", "encode_event", "error_payload"]
