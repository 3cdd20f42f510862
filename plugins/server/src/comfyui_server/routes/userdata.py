"""Users, settings and user data files: /users, /settings, /userdata, /v2/userdata.

Every path stays inside the requesting user's folder; writes go to a temporary file renamed into
place. An unknown user gets 401 from the settings routes and 403 from the file routes.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any, Callable, Union
from urllib.parse import unquote

from aiohttp import web

from comfyui_server.files import PathOutsideRoot, atomic_write_bytes
from comfyui_server.http import error_response, query_flag, read_json, read_json_object
from comfyui_server.users import UnknownUser, file_info

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer
    from comfyui_server.users import UserManager

logger = logging.getLogger(__name__)


def _list_directory(path: str, recurse: bool, full_info: bool, split: bool) -> list[Any]:
    pattern = os.path.join(glob.escape(path), "**", "*") if recurse else os.path.join(glob.escape(path), "*")
    results: list[Any] = []
    for full_path in sorted(glob.glob(pattern, recursive=recurse)):
        if not os.path.isfile(full_path):
            continue
        if full_info:
            results.append(file_info(full_path, path))
            continue
        relative = os.path.relpath(full_path, path).replace(os.sep, "/")
        results.append([relative, *relative.split("/")] if split else relative)
    return results


def _walk_v2(base: str, target: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for root, directories, files in os.walk(target):
        for name in directories:
            results.append({"name": name, "path": os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/"),
                            "type": "directory"})
        for name in files:
            path = os.path.join(root, name)
            entry: dict[str, Any] = {"name": name, "path": os.path.relpath(path, base).replace(os.sep, "/"),
                                     "type": "file"}
            try:
                stat = os.stat(path)
                entry["size"], entry["modified"] = stat.st_size, stat.st_mtime
            except OSError as error:
                logger.warning("could not stat %s: %s", path, error)
            results.append(entry)
    results.sort(key=lambda entry: (entry["type"] != "directory", entry["name"].lower()))
    return results


def _written(users: "UserManager", request: web.Request, path: str, full_info: bool) -> web.Response:
    root = users.user_root(request)
    return web.json_response(file_info(path, root) if full_info else os.path.relpath(path, root).replace(os.sep, "/"))


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    def users() -> "UserManager":
        return server.user_manager

    def user_file(request: web.Request, param: str = "file") -> Union[str, web.Response]:
        """The requested user file's path, or the error response to give instead."""
        name = request.match_info.get(param, "")
        # Some clients encode the path twice (workflows%252Fa.json).
        if "%" in name:
            name = unquote(name)
        if not name:
            return error_response(400, "No file name given")
        try:
            return users().user_path(request, name)
        except UnknownUser as error:
            return error_response(403, str(error))
        except PathOutsideRoot:
            return error_response(403, "The path leaves the user's folder")

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        if users().multi_user:
            return web.json_response({"storage": "server", "users": users().users})
        try:
            migrated = os.path.exists(users().user_root(request))
        except (UnknownUser, PathOutsideRoot):
            migrated = False
        return web.json_response({"storage": "server", "migrated": migrated})

    @routes.post("/users")
    async def post_users(request: web.Request) -> web.Response:
        body = await read_json_object(request)
        username = body.get("username")
        if not isinstance(username, str):
            return error_response(400, "username not provided")
        try:
            return web.json_response(users().add_user(username))
        except ValueError as error:
            return error_response(400, str(error))

    def settings_route(handler: Callable) -> Callable:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except UnknownUser as error:
                return error_response(401, str(error))
        return wrapped

    @routes.get("/settings")
    @settings_route
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response(users().read_settings(request))

    @routes.post("/settings")
    @settings_route
    async def post_settings(request: web.Request) -> web.Response:
        changes = await read_json_object(request)
        users().write_settings(request, {**users().read_settings(request), **changes})
        return web.Response()

    @routes.get("/settings/{id}")
    @settings_route
    async def get_setting(request: web.Request) -> web.Response:
        return web.json_response(users().read_settings(request).get(request.match_info["id"]))

    @routes.post("/settings/{id}")
    @settings_route
    async def post_setting(request: web.Request) -> web.Response:
        value = await read_json(request)
        settings = users().read_settings(request)
        settings[request.match_info["id"]] = value
        users().write_settings(request, settings)
        return web.Response()

    @routes.get("/userdata")
    async def list_userdata(request: web.Request) -> web.Response:
        directory = request.query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        try:
            path = users().user_path(request, directory)
        except (UnknownUser, PathOutsideRoot):
            return web.Response(status=403, text="Invalid directory")
        if not os.path.isdir(path):
            return web.Response(status=404, text="Directory not found")
        listing = await asyncio.to_thread(_list_directory, path, query_flag(request, "recurse"),
                                          query_flag(request, "full_info"), query_flag(request, "split"))
        return web.json_response(listing)

    @routes.get("/v2/userdata")
    async def list_userdata_v2(request: web.Request) -> web.Response:
        requested = unquote(request.query.get("path", ""))
        try:
            base = users().user_root(request)
            target = users().user_path(request, requested) if requested else base
        except UnknownUser:
            return web.Response(status=403, text="Invalid user specified in request")
        except PathOutsideRoot:
            return web.Response(status=400, text="Invalid path requested")
        if not os.path.exists(target):
            if target == base:
                return web.json_response([])  # a new user has no folder yet
            return web.Response(status=404, text="Requested path not found")
        if not os.path.isdir(target):
            return web.Response(status=400, text="Requested path is not a directory")
        try:
            return web.json_response(await asyncio.to_thread(_walk_v2, base, target))
        except OSError as error:
            logger.error("could not list %s: %s", target, error)
            return web.Response(status=500, text="Error reading directory contents")

    @routes.get("/userdata/{file}")
    async def get_userdata(request: web.Request) -> web.StreamResponse:
        path = user_file(request)
        if isinstance(path, web.Response):
            return path
        if not os.path.isfile(path):
            return web.Response(status=404)
        return web.FileResponse(path)

    @routes.post("/userdata/{file}")
    async def post_userdata(request: web.Request) -> web.Response:
        path = user_file(request)
        if isinstance(path, web.Response):
            return path
        overwrite = request.query.get("overwrite", "true") != "false"
        if not overwrite and os.path.exists(path):
            return web.Response(status=409, text="File already exists")
        if os.path.isdir(path):
            return web.Response(status=400, text="A folder of that name exists")
        body = await request.read()
        try:
            await asyncio.to_thread(atomic_write_bytes, path, body)
        except OSError as error:
            logger.warning("could not save user file %s: %s", path, error)
            return web.Response(status=400, reason="Invalid filename. Please avoid special characters like :\\/*?\"<>|")
        return _written(users(), request, path, query_flag(request, "full_info"))

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request: web.Request) -> web.Response:
        path = user_file(request)
        if isinstance(path, web.Response):
            return path
        if not os.path.isfile(path):
            return web.Response(status=404)
        os.remove(path)
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def move_userdata(request: web.Request) -> web.Response:
        source = user_file(request)
        if isinstance(source, web.Response):
            return source
        destination = user_file(request, "dest")
        if isinstance(destination, web.Response):
            return destination
        if not os.path.isfile(source):
            return web.Response(status=404)
        overwrite = request.query.get("overwrite", "true") != "false"
        if not overwrite and os.path.exists(destination):
            return web.Response(status=409, text="File already exists")
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        logger.info("moving user file %s -> %s", source, destination)
        await asyncio.to_thread(shutil.move, source, destination)
        return _written(users(), request, destination, query_flag(request, "full_info"))


__all__ = ["add_routes"]
