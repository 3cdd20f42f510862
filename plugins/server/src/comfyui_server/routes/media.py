"""Files in and out: /upload/image, /upload/mask and /view over the input, output and temp folders.

Uploads are streamed to a spool file while their size is checked against ``--max-upload-size``,
then written beside their destination and renamed into place, so a failed upload never replaces
an existing file.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
import os
import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Iterator, Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from comfyui_server.files import PathOutsideRoot, atomic_write, contained_path, file_sha256
from comfyui_server.http import content_disposition, error_response

if TYPE_CHECKING:
    from comfyui_server.server import PromptServer

# Served as downloads, never rendered: a page in the output folder must not run as this site.
_DOWNLOAD_ONLY_TYPES = frozenset({"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                                  "application/javascript", "text/css"})
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CHUNK = 1 << 16


class UploadError(ValueError):
    """An upload request that cannot be stored; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class UploadedFile:
    filename: str
    spool: IO[bytes]
    sha256: str
    size: int

    def chunks(self) -> Iterator[bytes]:
        self.spool.seek(0)
        return iter(lambda: self.spool.read(_CHUNK), b"")


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def close(self) -> None:
        for uploaded in self.files.values():
            uploaded.spool.close()


async def read_upload_form(request: web.Request, limit: int) -> UploadForm:
    """The multipart form, files spooled; 413 as soon as the body passes ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if not request.content_type.startswith("multipart/"):
        raise UploadError(400, "Expected a multipart/form-data body")
    form = UploadForm()
    total = 0
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name is None:
                continue
            if part.filename is not None:
                spool = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY)
                digest = hashlib.sha256()
                size = 0
                form.files[part.name] = UploadedFile(part.filename, spool, "", 0)
                while chunk := await part.read_chunk(_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
                    digest.update(chunk)
                    spool.write(chunk)
                    size += len(chunk)
                form.files[part.name] = UploadedFile(part.filename, spool, digest.hexdigest(), size)
            else:
                value = await part.read()
                total += len(value)
                if total > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
                form.fields[part.name] = value.decode("utf-8", errors="replace")
    except (HttpProcessingError, ValueError) as error:
        # A malformed part header or boundary is the client's error, not the server's.
        form.close()
        raise UploadError(400, f"Malformed multipart body: {error}") from error
    except BaseException:
        form.close()
        raise
    return form


def upload_directory(directory_type: Optional[str]) -> tuple[str, str]:
    from comfy import paths

    directory_type = directory_type or "input"
    directory = paths.get_directory_by_type(directory_type)
    if directory is None:
        raise UploadError(400, f"Unknown upload type {directory_type!r}; use input, output or temp")
    return directory, directory_type


def _plain_filename(filename: str) -> str:
    name = os.path.basename(filename.replace("\\", "/"))
    if name != filename.replace("\\", "/") or name in ("", ".", ".."):
        raise UploadError(400, f"Invalid file name {filename!r}: it must not name folders")
    return name


def store_upload(directory_type: Optional[str], subfolder: str, filename: str, chunks: Iterator[bytes],
                 sha256: str, overwrite: bool) -> dict[str, str]:
    """Write an upload into its folder; the name ComfyUI answers with.

    Without ``overwrite`` a taken name becomes ``name (1).ext``, ``name (2).ext``..., unless the
    file already there has the same bytes, whose name is then reused without writing.
    """
    directory, directory_type = upload_directory(directory_type)
    name = _plain_filename(filename)
    try:
        folder = contained_path(directory, subfolder)
        path = contained_path(folder, name)
    except PathOutsideRoot as error:
        raise UploadError(400, f"Invalid subfolder: {error}") from None
    if not overwrite:
        stem, extension = os.path.splitext(name)
        counter = 1
        while os.path.exists(path):
            if os.path.isfile(path) and file_sha256(path) == sha256:
                return {"name": name, "subfolder": subfolder, "type": directory_type}
            name = f"{stem} ({counter}){extension}"
            path = os.path.join(folder, name)
            counter += 1
    atomic_write(path, chunks)
    return {"name": name, "subfolder": subfolder, "type": directory_type}


def composite_mask(original_ref: dict, mask: IO[bytes]) -> bytes:
    """The original image (as ``original_ref`` names it) with the mask's alpha, as PNG bytes."""
    from comfy import paths
    from PIL import Image, PngImagePlugin, UnidentifiedImageError

    name, annotated_directory = paths.annotated_filepath(str(original_ref.get("filename") or ""))
    if not name:
        raise UploadError(400, "original_ref has no filename")
    directory = annotated_directory or paths.get_directory_by_type(str(original_ref.get("type") or "output"))
    if directory is None:
        raise UploadError(400, f"Unknown type {original_ref.get('type')!r} in original_ref")
    try:
        original_path = contained_path(directory, str(original_ref.get("subfolder") or ""), name)
    except PathOutsideRoot as error:
        raise UploadError(403, f"original_ref leaves its folder: {error}") from None
    if not os.path.isfile(original_path):
        raise UploadError(404, f"The original image {name!r} does not exist")
    try:
        with Image.open(original_path) as original, Image.open(mask) as mask_image:
            info = PngImagePlugin.PngInfo()
            for key, value in getattr(original, "text", {}).items():
                info.add_text(key, value)
            combined = original.convert("RGBA")
            alpha = mask_image.convert("RGBA").getchannel("A")
            if alpha.size != combined.size:
                alpha = alpha.resize(combined.size)
            combined.putalpha(alpha)
            buffer = io.BytesIO()
            combined.save(buffer, format="PNG", compress_level=4, pnginfo=info)
    except UnidentifiedImageError as error:
        raise UploadError(400, f"Not an image: {error}") from None
    return buffer.getvalue()


def encode_view(path: str, preview: Optional[str], channel: Optional[str]) -> Optional[tuple[bytes, str]]:
    """The re-encoded image /view sends for ``preview`` or ``channel``; None to send the file itself."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if preview is not None:
                fields = preview.split(";")
                image_format = fields[0] if fields[0] in ("webp", "jpeg") else "webp"
                if "a" in (channel or ""):
                    image_format = "webp"
                quality = int(fields[-1]) if fields[-1].isdigit() else 90
                if image_format == "jpeg" or channel == "rgb":
                    image = image.convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format=image_format, quality=quality)
                return buffer.getvalue(), f"image/{image_format}"
            if channel == "rgb":
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                return buffer.getvalue(), "image/png"
            if channel == "a":
                alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
                only_alpha = Image.new("RGBA", image.size)
                only_alpha.putalpha(alpha)
                buffer = io.BytesIO()
                only_alpha.save(buffer, format="PNG")
                return buffer.getvalue(), "image/png"
    except UnidentifiedImageError:
        return None  # not an image (a video, say): the file itself is the best preview
    return None


def add_routes(routes: web.RouteTableDef, server: "PromptServer") -> None:
    from comfy import paths

    # One writer at a time, so two uploads of one name never pick the same free name.
    write_lock = asyncio.Lock()

    def upload_limit() -> int:
        return int(float(server.option("max_upload_size", 100)) * 1024 * 1024)

    async def handle_upload(request: web.Request, mask: bool) -> web.Response:
        try:
            form = await read_upload_form(request, upload_limit())
        except UploadError as error:
            return error_response(error.status, str(error))
        try:
            image = form.files.get("image")
            if image is None or not image.filename:
                return error_response(400, "No file in the 'image' field")
            overwrite = form.fields.get("overwrite", "").lower() in ("true", "1")
            subfolder = form.fields.get("subfolder", "")
            chunks, sha256 = image.chunks(), image.sha256
            if mask:
                try:
                    original_ref = json.loads(form.fields.get("original_ref", ""))
                except json.JSONDecodeError:
                    return error_response(400, "original_ref must be JSON naming the original image")
                if not isinstance(original_ref, dict):
                    return error_response(400, "original_ref must be a JSON object")
                image.spool.seek(0)
                data = await asyncio.to_thread(composite_mask, original_ref, image.spool)
                chunks, sha256 = iter((data,)), hashlib.sha256(data).hexdigest()
            async with write_lock:
                stored = await asyncio.to_thread(store_upload, form.fields.get("type"), subfolder, image.filename,
                                                 chunks, sha256, overwrite)
            return web.json_response(stored)
        except UploadError as error:
            return error_response(error.status, str(error))
        finally:
            form.close()

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return await handle_upload(request, mask=False)

    @routes.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.Response:
        return await handle_upload(request, mask=True)

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        query = request.query
        filename, annotated_directory = paths.annotated_filepath(query.get("filename", ""))
        if not filename:
            return error_response(400, "filename is required")
        directory_type = query.get("type", "output") or "output"
        directory = annotated_directory or paths.get_directory_by_type(directory_type)
        if directory is None:
            return error_response(400, f"Unknown type {directory_type!r}; use input, output or temp")
        try:
            path = contained_path(directory, query.get("subfolder", ""), filename)
        except PathOutsideRoot:
            return error_response(403, "The file is outside the folder it names")
        if not os.path.isfile(path):
            return web.Response(status=404)
        display_name = os.path.basename(filename)
        channel = query.get("channel")
        if "preview" in query or channel in ("rgb", "a"):
            encoded = await asyncio.to_thread(encode_view, path, query.get("preview"), channel)
            if encoded is not None:
                body, content_type = encoded
                return web.Response(body=body, content_type=content_type,
                                    headers={"Content-Disposition": content_disposition(display_name)})
        content_type = mimetypes.guess_type(display_name)[0] or "application/octet-stream"
        if content_type in _DOWNLOAD_ONLY_TYPES:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Disposition": content_disposition(display_name),
                                               "Content-Type": content_type})


__all__ = ["UploadError", "add_routes", "composite_mask", "encode_view", "read_upload_form", "store_upload"]
