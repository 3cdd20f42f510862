"""/templates/* from comfyui-workflow-templates and /docs/* from comfyui-embedded-docs, when installed."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional

from aiohttp import web

from comfyui_server.files import PathOutsideRoot, contained_path
from comfyui_server.frontend import TemplateFiles, embedded_docs_root, template_files

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

API_PREFIX = False


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    templates: Optional[TemplateFiles] = None
    looked = False
    loading = asyncio.Lock()

    @routes.get("/templates/{path:.+}")
    async def get_template(request: web.Request) -> web.StreamResponse:
        nonlocal templates, looked
        async with loading:
            if not looked:
                # Reading the manifest of ~700 templates: once, and off the event loop.
                templates, looked = await asyncio.to_thread(template_files), True
        path = templates.path(request.match_info["path"]) if templates is not None else None
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    @routes.get("/docs/{path:.+}")
    async def get_doc(request: web.Request) -> web.StreamResponse:
        root = embedded_docs_root()
        if root is None:
            raise web.HTTPNotFound()
        try:
            path = contained_path(root, request.match_info["path"])
        except PathOutsideRoot:
            raise web.HTTPForbidden() from None
        return web.FileResponse(path)


__all__ = ["API_PREFIX", "add_routes"]
