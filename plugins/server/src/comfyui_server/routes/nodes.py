"""Node definitions and model files: /object_info, /embeddings, /models, /experiment/models, /view_metadata."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import threading
from typing import TYPE_CHECKING, Any, Optional

from aiohttp import web

from comfyui_server.files import PathOutsideRoot, contained_path

if TYPE_CHECKING:
    from comfy.nodes.object_info import Declaration
    from comfy.nodes.registry import NodeRegistry
    from comfyui_server.server import PromptServer

logger = logging.getLogger(__name__)

# Folders the model library does not list: they hold no models.
_NOT_MODEL_FOLDERS = ("configs", "custom_nodes")
_SAFETENSORS_HEADER_LIMIT = 8 * 1024 * 1024
_PREVIEW_EXTENSIONS = (".webp", ".png", ".jpg", ".jpeg", ".gif")


def safetensors_header(path: str, limit: int = _SAFETENSORS_HEADER_LIMIT) -> Optional[dict[str, Any]]:
    """The JSON header of a .safetensors file, or None if it has none or it is too large."""
    try:
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) != 8:
                return None
            (length,) = struct.unpack("<Q", prefix)
            if length > limit:
                return None
            header = json.loads(stream.read(length))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def model_files(folder_name: str) -> list[dict[str, Any]]:
    """Every model file of a folder with its path index, times and size, for the model library."""
    from comfy import paths

    folders = paths.get_folder_paths(folder_name)
    # Every model-like file, as ComfyUI's model library lists them whatever the folder's own filter.
    extensions = paths.supported_pt_extensions
    listing = []
    for index, folder in enumerate(folders):
        for directory, subdirectories, names in os.walk(folder, followlinks=True):
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                    continue
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except OSError as error:
                    logger.warning("skipping model file %s: %s", path, error)
                    continue
                listing.append({"name": os.path.relpath(path, folder).replace(os.sep, "/"), "pathIndex": index,
                                "modified": stat.st_mtime, "created": stat.st_ctime, "size": stat.st_size})
    return listing


def model_preview(model_path: str) -> Optional[bytes]:
    """A WEBP of the image beside a model (``x.png`` or ``x.preview.png`` for ``x.safetensors``)."""
    from PIL import Image

    stem = os.path.splitext(model_path)[0]
    for candidate in [stem + suffix + extension for suffix in ("", ".preview") for extension in _PREVIEW_EXTENSIONS]:
        if os.path.isfile(candidate):
            try:
                with Image.open(candidate) as image:
                    buffer = io.BytesIO()
                    image.save(buffer, format="WEBP")
                    return buffer.getvalue()
            except OSError as error:
                logger.warning("model preview %s is unreadable: %s", candidate, error)
    return None


class ObjectInfoEncoder:
    """``/object_info`` as JSON bytes, the same as ``json.dumps`` of the whole mapping. Every request still reads
    every node afresh (INPUT_TYPES lists model folders, and a custom node may read anything), but a node's encoded
    entry is reused while what it is made from marshals to the same bytes, so only changed entries are encoded."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[bytes, bytes]] = {}
        # Concurrent requests (the frontend and a client at start-up) run in threads; one builds at a time.
        self._lock = threading.Lock()

    def encode(self, registry: "NodeRegistry") -> bytes:
        from comfy.nodes.object_info import declaration_key, each_node, info_from

        entries: dict[str, tuple[bytes, bytes]] = {}

        def entry(name: str, declaration: "Declaration") -> bytes:
            key = declaration_key(declaration)
            cached = self._entries.get(name)
            if key is not None and cached is not None and cached[0] == key:
                encoded = cached[1]
            else:
                encoded = f"{json.dumps(name)}: {json.dumps(info_from(name, declaration))}".encode()
            if key is not None:
                entries[name] = (key, encoded)
            return encoded

        with self._lock:
            body = b"{" + b", ".join(encoded for _name, encoded in each_node(registry, entry)) + b"}"
            # Only the nodes of this request: a removed node's entry goes with it.
            self._entries = entries
        return body


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    from comfy import paths
    from comfy.nodes.object_info import node_info

    object_info_encoder = ObjectInfoEncoder()

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        # Combo lists read model folders; a big install takes a while, so off the event loop.
        body = await asyncio.to_thread(object_info_encoder.encode, server.runtime.registry)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        registry = server.runtime.registry
        name = request.match_info["node_class"]
        node_class = registry.classes.get(name)
        if node_class is None:
            return web.json_response({})
        return web.json_response({name: await asyncio.to_thread(node_info, name, node_class, registry)})

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        names = await asyncio.to_thread(paths.get_filename_list, "embeddings")
        return web.json_response([os.path.splitext(name)[0] for name in names])

    @routes.get("/models")
    async def list_model_types(request: web.Request) -> web.Response:
        return web.json_response(list(paths.folder_names_and_paths))

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in paths.folder_names_and_paths:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(paths.get_filename_list, folder))

    @routes.get("/experiment/models")
    async def get_model_folders(request: web.Request) -> web.Response:
        return web.json_response([{"name": name, "folders": paths.get_folder_paths(name)}
                                  for name in paths.folder_names_and_paths if name not in _NOT_MODEL_FOLDERS])

    @routes.get("/experiment/models/{folder}")
    async def get_model_folder(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in paths.folder_names_and_paths or folder in _NOT_MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(model_files, folder))

    @routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
    async def get_model_preview(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in paths.folder_names_and_paths:
            return web.Response(status=404)
        folders = paths.get_folder_paths(folder)
        try:
            root = folders[int(request.match_info["path_index"])]
            model_path = contained_path(root, request.match_info["filename"])
        except (ValueError, IndexError):
            return web.Response(status=404)
        except PathOutsideRoot:
            return web.Response(status=403)
        preview = await asyncio.to_thread(model_preview, model_path)
        if preview is None:
            return web.Response(status=404)
        return web.Response(body=preview, content_type="image/webp")

    @routes.get("/view_metadata/{folder_name}")
    async def view_metadata(request: web.Request) -> web.Response:
        filename = request.query.get("filename", "")
        if not filename.endswith(".safetensors") \
                or request.match_info["folder_name"] not in paths.folder_names_and_paths:
            return web.Response(status=404)
        path = paths.get_full_path(request.match_info["folder_name"], filename)
        header = await asyncio.to_thread(safetensors_header, path) if path else None
        if header is None or "__metadata__" not in header:
            return web.Response(status=404)
        return web.json_response(header["__metadata__"])


__all__ = ["ObjectInfoEncoder", "add_routes", "model_files", "model_preview", "safetensors_header"]
