"""A websocket test client that records every message, shared by the server and distributed tests."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Optional

import aiohttp


class Events:
    """A websocket client that records every message, JSON or binary, in arrival order."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, timeout: float = 20):
        self.socket = socket
        self.timeout = timeout  # the default wait, in seconds
        self.messages: list[Any] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.socket:
            value = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else message.data
            async with self._arrived:
                self.messages.append(value)
                self._arrived.notify_all()

    async def wait_until(self, predicate: Callable[[list[Any]], bool], timeout: Optional[float] = None) -> None:
        """Until ``predicate`` holds for all messages received so far."""
        async def check() -> None:
            async with self._arrived:
                while not predicate(self.messages):
                    await self._arrived.wait()
        await asyncio.wait_for(check(), timeout or self.timeout)

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: Optional[float] = None) -> Any:
        """The first message (seen already or arriving) for which ``predicate`` is true."""
        found: list[Any] = []

        def matches(messages: list[Any]) -> bool:
            found[:] = [message for message in messages if predicate(message)][:1]
            return bool(found)

        await self.wait_until(matches, timeout)
        return found[0]

    def json(self, message_type: Optional[str] = None) -> list[dict]:
        return [m for m in self.messages if isinstance(m, dict) and (message_type is None or m["type"] == message_type)]

    def binary(self) -> list[bytes]:
        return [m for m in self.messages if isinstance(m, bytes)]

    def finished(self) -> list[str]:
        """Prompt ids whose "executing" with no node (the end of a prompt) arrived."""
        return [m["data"]["prompt_id"] for m in self.json("executing") if m["data"].get("node") is None]

    async def close(self) -> None:
        await self.socket.close()
        await self._reader
