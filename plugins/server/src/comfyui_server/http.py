"""Small request and response helpers the route modules share."""
from __future__ import annotations

import json
from typing import Any, Optional

from aiohttp import web

_MISSING = object()


class BadJSON(ValueError):
    """The request body is not the JSON the route needs; the message says why."""


async def read_json(request: web.Request, default: Any = _MISSING) -> Any:
    """The decoded JSON body. An empty body gives ``default`` when one is given; anything else
    unreadable raises ``BadJSON``. Bodies over the upload limit raise aiohttp's 413."""
    raw = await request.read()
    if not raw.strip():
        if default is not _MISSING:
            return default
        raise BadJSON("The request body is empty; JSON was expected")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadJSON(f"The request body is not valid JSON: {error}") from None


async def read_json_object(request: web.Request, default: Any = _MISSING) -> dict[str, Any]:
    value = await read_json(request, default)
    if not isinstance(value, dict):
        raise BadJSON(f"The request body must be a JSON object, not {type(value).__name__}")
    return value


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``, the error shape most routes use."""
    return web.json_response({"error": message}, status=status)


def query_flag(request: web.Request, name: str, default: bool = False) -> bool:
    value: Optional[str] = request.query.get(name)
    if value is None:
        return default
    return value.lower() in ("true", "1", "yes")


def content_disposition(filename: str) -> str:
    # Quotes and line breaks in a name would end the header value early.
    safe = filename.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
    return f'filename="{safe}"'


__all__ = ["BadJSON", "content_disposition", "error_response", "query_flag", "read_json", "read_json_object"]
