"""/internal/*: routes only the frontend uses (logs, folder paths, file lists); not under /api."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from aiohttp import web

from comfyui_server.http import error_response, read_json_object
from comfyui_server.logs import install_log_buffer, terminal_size

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

API_PREFIX = False


def newest_files(directory: str) -> list[str]:
    """Visible files of a folder, newest first."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.is_file() and not entry.name.startswith(".")]
    except FileNotFoundError:
        return []
    return [entry.name for entry in sorted(entries, key=lambda entry: entry.stat().st_mtime, reverse=True)]


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    from comfy import paths

    @routes.get("/internal/logs")
    async def get_logs(request: web.Request) -> web.Response:
        return web.json_response(install_log_buffer().text())

    @routes.get("/internal/logs/raw")
    async def get_raw_logs(request: web.Request) -> web.Response:
        return web.json_response({"entries": list(install_log_buffer().entries), "size": terminal_size()})

    @routes.patch("/internal/logs/subscribe")
    async def subscribe_logs(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        client_id = body.get("clientId")
        if not isinstance(client_id, str):
            return error_response(400, "clientId is required")
        if body.get("enabled"):
            server.log_subscribers.add(client_id)
        else:
            server.log_subscribers.discard(client_id)
        return web.Response()

    @routes.get("/internal/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.Response:
        return web.json_response({name: list(entry[0]) for name, entry in paths.folder_names_and_paths.items()})

    @routes.get("/internal/files/{directory_type}")
    async def get_files(request: web.Request) -> web.Response:
        directory_type = request.match_info["directory_type"]
        if directory_type not in ("input", "output", "temp"):
            return error_response(400, "Invalid directory type")
        return web.json_response(newest_files(paths.get_directory_by_type(directory_type)))


__all__ = ["API_PREFIX", "add_routes", "newest_files"]
