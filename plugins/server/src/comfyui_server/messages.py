"""Websocket messages: ComfyUI's JSON envelope, its binary frames, and one sender per connected client.

Binary frames start with a big-endian u32 event type. Previews are ``1`` (``[u32 format][image]``,
format 1 = JPEG, 2 = PNG) or, for clients that announced ``supports_preview_metadata``, ``4``
(``[u32 json length][json][image]``). Progress text is ``3``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Optional, TypedDict, Union

import aiohttp
from aiohttp import web

from comfy.progress import encode_preview_image

logger = logging.getLogger(__name__)


class BinaryEventTypes:
    """The event numbers of binary websocket frames (``from server import BinaryEventTypes``)."""
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


# Preview image format codes of frame type 1.
_FORMAT_CODES = {"JPEG": 1, "PNG": 2}
# A client that stops reading gets disconnected rather than holding its messages forever.
CLIENT_QUEUE_LIMIT = 10000


class PreviewMetadata(TypedDict, total=False):
    node_id: Optional[str]
    display_node_id: Optional[str]
    parent_node_id: Optional[str]
    real_node_id: Optional[str]
    prompt_id: Optional[str]
    image_type: str


@dataclass(frozen=True)
class EncodedPreview:
    """A preview image encoded once, framed per client as type 1 or type 4."""
    image_format: str  # "JPEG" or "PNG"
    data: bytes
    metadata: PreviewMetadata

    def frame(self, with_metadata: bool) -> bytes:
        if with_metadata:
            header = json.dumps({**self.metadata, "image_type": self.mime_type}).encode()
            return struct.pack(">II", BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, len(header)) + header + self.data
        return struct.pack(">II", BinaryEventTypes.PREVIEW_IMAGE, _FORMAT_CODES[self.image_format]) + self.data

    @property
    def mime_type(self) -> str:
        return "image/png" if self.image_format == "PNG" else "image/jpeg"


def encode_preview(preview: Any, metadata: Optional[PreviewMetadata] = None) -> EncodedPreview:
    """Encode ``(format, PIL image, max_size)`` as latent previewers make it."""
    image_format, data = encode_preview_image(preview)
    return EncodedPreview(image_format, data, metadata or {})


def binary_frame(event: int, payload: Union[bytes, bytearray]) -> bytes:
    return struct.pack(">I", int(event)) + bytes(payload)


def progress_text_payload(text: Union[str, bytes], node_id: str, prompt_id: Optional[str]) -> bytes:
    """Frame-3 payload in the layout of the advertised ``supports_progress_text_metadata`` flag."""
    body = text.encode() if isinstance(text, str) else bytes(text)
    node = str(node_id).encode()
    prompt = (prompt_id or "").encode()
    return struct.pack(">I", len(prompt)) + prompt + struct.pack(">I", len(node)) + node + body


def dumps(message: Any) -> str:
    # Node outputs may hold values json cannot write (numpy numbers, paths); their text will do.
    return json.dumps(message, default=str)


@dataclass
class Client:
    """One websocket connection: its id, the flags it announced, and its own outgoing queue.

    Each client has a sender task, so a slow or vanished client never delays the others.
    """
    sid: str
    socket: web.WebSocketResponse
    feature_flags: dict[str, Any] = field(default_factory=dict)
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE_LIMIT))
    sender: Optional[asyncio.Task] = None

    @property
    def wants_preview_metadata(self) -> bool:
        return self.feature_flags.get("supports_preview_metadata") is True

    def post(self, message: Union[str, bytes, EncodedPreview]) -> None:
        """Queue a text message, a binary frame or a preview; a client too far behind is dropped."""
        if self.socket.closed:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning("websocket client %s is not reading its messages; closing it", self.sid)
            self.outbox = asyncio.Queue(1)
            asyncio.ensure_future(self.socket.close(code=aiohttp.WSCloseCode.TRY_AGAIN_LATER,
                                                    message=b"too many unread messages"))

    def start(self) -> None:
        self.sender = asyncio.ensure_future(self._send_forever())

    async def stop(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
            try:
                await self.sender
            except asyncio.CancelledError:
                pass

    async def _send_forever(self) -> None:
        while True:
            message = await self.outbox.get()
            if self.socket.closed:
                continue
            try:
                if isinstance(message, str):
                    await self.socket.send_str(message)
                elif isinstance(message, EncodedPreview):
                    await self.socket.send_bytes(message.frame(self.wants_preview_metadata))
                else:
                    await self.socket.send_bytes(message)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as error:
                # The peer went away mid-send; its handler notices the close and removes it.
                logger.debug("could not send to websocket client %s: %s", self.sid, error)


__all__ = ["BinaryEventTypes", "Client", "EncodedPreview", "PreviewMetadata", "binary_frame", "dumps",
           "encode_preview", "progress_text_payload"]
