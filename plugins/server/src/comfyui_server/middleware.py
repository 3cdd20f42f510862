"""Request middleware: the loopback origin check (or CORS), compression and cache headers."""
from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

from aiohttp import web

from comfyui_server.http import BadJSON, error_response

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NO_CACHE_SUFFIXES = (".js", ".css", ".html")


@functools.lru_cache(maxsize=256)
def is_loopback(host: Optional[str]) -> bool:
    """Whether ``host`` (a name or an address) means this machine only."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return True
    found = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            addresses = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        for *_rest, sockaddr in addresses:
            if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                return False
            found = True
    return found


def _host_and_port(netloc: str) -> tuple[Optional[str], Optional[int]]:
    try:
        parts = urlsplit("//" + netloc)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def _foreign_origin(host_header: str, origin_header: str) -> bool:
    """A browser page from another site calling a server on this machine (a CSRF attempt)."""
    host, host_port = _host_and_port(host_header.lower())
    origin = urlsplit(origin_header.lower()) if "://" in origin_header else None
    if origin is None or not host or not origin.hostname or not is_loopback(host):
        return False
    try:
        origin_port = origin.port
    except ValueError:
        return True
    # A side without a port is compared by host name only, as some browsers leave it out.
    if host_port is None or origin_port is None:
        return host != origin.hostname
    return (host, host_port) != (origin.hostname, origin_port)


@web.middleware
async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin and _foreign_origin(host, origin):
        logger.warning("refused a request to %s from origin %s: the Host is this machine and the Origin "
                       "is another site", host, origin)
        return web.Response(status=403, text="Forbidden: cross-origin request to a local server")
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def cors(allowed_origin: str):
    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response()
        else:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                response = error
        response.headers["Access-Control-Allow-Origin"] = allowed_origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, Comfy-User"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return cors_middleware


@web.middleware
async def bad_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route that could not read its JSON body answers 400 with the reason."""
    try:
        return await handler(request)
    except BadJSON as error:
        return error_response(400, str(error))


@web.middleware
async def compress(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if isinstance(response, web.Response) and response.body and response.content_type in (
            "application/json", "text/plain") and "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()
    return response


@web.middleware
async def cache_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    # Extension scripts change when custom nodes update; the browser must ask each time.
    if request.path.endswith(_NO_CACHE_SUFFIXES) or request.path == "/":
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


__all__ = ["bad_json", "cache_headers", "compress", "cors", "is_loopback", "origin_check"]
