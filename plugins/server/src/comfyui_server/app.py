"""The aiohttp application: middleware, the route modules, custom nodes' routes and static files.

Each module in ``ROUTE_MODULES`` exposes ``add_routes(routes, server)``. Its routes are served at
``/<path>`` and ``/api/<path>`` unless the module sets ``API_PREFIX = False`` (``/ws``,
``/internal/*``, ``/templates/*``). Adding a module to the server is adding its name here.
"""
from __future__ import annotations

import importlib
import mimetypes
import os
from typing import TYPE_CHECKING

from aiohttp import web

from comfyui_server import middleware

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

ROUTE_MODULES: tuple[str, ...] = (
    "comfyui_server.routes.prompt",
    "comfyui_server.routes.jobs",
    "comfyui_server.routes.nodes",
    "comfyui_server.routes.system",
    "comfyui_server.routes.media",
    "comfyui_server.routes.userdata",
    "comfyui_server.routes.extensions",
    "comfyui_server.routes.internal",
    "comfyui_server.routes.templates",
    "comfyui_server.routes.websocket",
    "comfyui_server.routes.rest_api",
)


def _with_api_prefix(routes: web.RouteTableDef) -> list[web.RouteDef]:
    """Each route again under /api, the form the frontend calls; static routes stay as they are."""
    return [web.RouteDef(route.method, "/api" + route.path, route.handler, route.kwargs)
            for route in routes if isinstance(route, web.RouteDef)]


def _index(web_root: str):
    async def get_index(request: web.Request) -> web.FileResponse:
        # The page names its hashed bundles; a cached copy would load stale ones after an upgrade.
        return web.FileResponse(os.path.join(web_root, "index.html"), headers={
            "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})
    return get_index


def new_application(server: "PromptServer") -> web.Application:
    """The empty application with the middleware the configuration asks for.

    It exists from the moment the server does, since custom nodes may add routes or middleware
    to ``PromptServer.instance.app`` while they are imported.
    """
    mimetypes.add_type("application/javascript; charset=utf-8", ".js")
    mimetypes.add_type("image/webp", ".webp")
    middlewares = [middleware.bad_json, middleware.cache_headers]
    if server.option("enable_compress_response_body", False):
        middlewares.append(middleware.compress)
    cors_origin = server.option("enable_cors_header")
    middlewares.append(middleware.cors(cors_origin) if cors_origin else middleware.origin_check)
    max_body = int(float(server.option("max_upload_size", 100)) * 1024 * 1024)
    return web.Application(client_max_size=max_body, middlewares=middlewares, handler_args={"max_field_size": 16380})


def create_app(server: "PromptServer") -> web.Application:
    """Add every route to ``server.app``; the server's runtime and web root are set by now."""
    app = server.app
    api_routes, plain_routes = web.RouteTableDef(), web.RouteTableDef()
    for module_name in ROUTE_MODULES:
        module = importlib.import_module(module_name)
        module.add_routes(api_routes if getattr(module, "API_PREFIX", True) else plain_routes, server)
    # Routes custom nodes added through PromptServer.instance.routes follow ComfyUI's rule: both forms.
    for table in (api_routes, server.routes):
        app.add_routes(_with_api_prefix(table))
        app.add_routes(table)
    app.add_routes(plain_routes)

    registry = server.runtime.registry
    for name, directory in registry.web_directories.items():
        app.router.add_static(f"/extensions/{name}", directory, follow_symlinks=True)
    if server.web_root:
        app.router.add_get("/", _index(server.web_root))
        app.router.add_static("/", server.web_root, follow_symlinks=True)
    return app


__all__ = ["ROUTE_MODULES", "create_app", "new_application"]
