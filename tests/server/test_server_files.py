"""Uploading into input/output/temp and reading files back through /view."""
from __future__ import annotations

import io
import json
import os

import aiohttp
import pytest
from PIL import Image

SMALL_LIMIT_MB = 0.05  # 52,428 bytes


def png(colour=(10, 20, 30, 255), size=(4, 4), text: dict | None = None) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGBA", size, colour).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def raw_form(data: bytes, filename: str, **fields: str) -> tuple[bytes, dict]:
    """A multipart body written by hand, so that a file name reaches the server exactly as given."""
    parts = [b'--x\r\nContent-Disposition: form-data; name="image"; filename="' + filename.encode()
             + b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n"]
    for name, value in fields.items():
        parts.append(f'--x\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + b"--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}


async def upload(http, data: bytes, path: str = "/api/upload/image", **kwargs) -> tuple[int, dict]:
    body, headers = raw_form(data, kwargs.pop("filename", "pic.png"), **kwargs)
    async with http.post(path, data=body, headers=headers) as response:
        return response.status, (await response.json() if response.content_type == "application/json" else {})


async def test_upload_names_overwrite_and_duplicates(server, http):
    first, second = png((1, 2, 3, 255)), png((9, 9, 9, 255))
    assert await upload(http, first) == (200, {"name": "pic.png", "subfolder": "", "type": "input"})
    # The same bytes again: the existing file is reused, not copied.
    assert await upload(http, first) == (200, {"name": "pic.png", "subfolder": "", "type": "input"})
    assert await upload(http, second) == (200, {"name": "pic (1).png", "subfolder": "", "type": "input"})
    assert await upload(http, second, overwrite="true") == (200, {"name": "pic.png", "subfolder": "", "type": "input"})
    assert (server.base / "input" / "pic.png").read_bytes() == second
    assert (server.base / "input" / "pic (1).png").read_bytes() == second

    status, body = await upload(http, first, subfolder="pasted", type="temp")
    assert (status, body) == (200, {"name": "pic.png", "subfolder": "pasted", "type": "temp"})
    assert (server.base / "temp" / "pasted" / "pic.png").read_bytes() == first
    # No temporary files are left behind.
    assert sorted(os.listdir(server.base / "input")) == ["pic (1).png", "pic.png"]


@pytest.mark.parametrize("fields", [
    {"subfolder": "../escape"}, {"subfolder": "/etc"}, {"subfolder": "a/../../b"},
    {"filename": "../evil.png"}, {"filename": "sub/evil.png"}, {"type": "models"},
])
async def test_upload_refuses_paths_outside_its_folder(server, http, fields):
    status, body = await upload(http, png(), **fields)
    assert status == 400 and body["error"]
    written = [os.path.join(root, name) for root, _dirs, names in os.walk(server.base.parent) for name in names
               if name.endswith(".png")]
    assert written == []


async def test_upload_refuses_a_symlink_leading_outside(server, http, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, server.base / "input" / "link")
    status, _body = await upload(http, png(), subfolder="link")
    assert status == 400 and os.listdir(outside) == []


async def test_upload_without_file_is_400(server, http):
    body = aiohttp.FormData()
    body.add_field("subfolder", "x")
    async with http.post("/upload/image", data=body) as response:
        assert response.status == 400
    async with http.post("/upload/image", json={"image": "no"}) as response:
        assert response.status == 400


@pytest.fixture
def server_args() -> list[str]:
    return ["--max-upload-size", str(SMALL_LIMIT_MB)]


async def test_too_large_upload_is_413_and_keeps_the_existing_file(server, http):
    original = png()
    assert (await upload(http, original))[0] == 200
    big = os.urandom(200_000)
    status, _body = await upload(http, big, overwrite="true")
    assert status == 413
    assert (server.base / "input" / "pic.png").read_bytes() == original
    assert os.listdir(server.base / "input") == ["pic.png"]

    # Streamed with no Content-Length, the limit still holds.
    async def chunks():
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"pic.png\"\r\n\r\n"
        yield boundary
        for _ in range(20):
            yield os.urandom(10_000)
        yield b"\r\n--x--\r\n"
    async with http.post("/upload/image", data=chunks(),
                         headers={"Content-Type": "multipart/form-data; boundary=x"}) as response:
        assert response.status == 413
    assert (server.base / "input" / "pic.png").read_bytes() == original
    async with http.post("/api/prompt", data=b"{" + b" " * 100_000 + b"}",
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413
    # Still serving.
    async with http.get("/api/prompt") as response:
        assert response.status == 200


async def test_mask_upload_puts_the_mask_alpha_on_the_original(server, http):
    original = png((200, 100, 50, 255), text={"prompt": "{}"})
    assert (await upload(http, original, filename="photo.png"))[0] == 200
    mask = png((0, 0, 0, 30))
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    status, body = await upload(http, mask, path="/api/upload/mask", filename="photo_mask.png",
                                original_ref=ref, subfolder="clipspace")
    assert (status, body) == (200, {"name": "photo_mask.png", "subfolder": "clipspace", "type": "input"})
    with Image.open(server.base / "input" / "clipspace" / "photo_mask.png") as result:
        assert result.mode == "RGBA" and result.getpixel((0, 0)) == (200, 100, 50, 30)
        assert result.text.get("prompt") == "{}"

    for bad_ref, expected in ((json.dumps({"filename": "../../x.png", "type": "input"}), 403),
                              (json.dumps({"filename": "missing.png", "type": "input"}), 404),
                              ("not json", 400)):
        status, _ = await upload(http, mask, path="/upload/mask", original_ref=bad_ref)
        assert status == expected, bad_ref


async def test_view_previews_channels_and_refusals(server, http, tmp_path):
    image = png((10, 20, 30, 40), size=(16, 8))
    (server.base / "output" / "sub").mkdir()
    (server.base / "output" / "sub" / "a.png").write_bytes(image)
    (server.base / "output" / "page.html").write_text("<script>alert(1)</script>")

    async def get(**params):
        async with http.get("/api/view", params=params) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    status, content_type, body = await get(filename="a.png", subfolder="sub")
    assert (status, content_type, body) == (200, "image/png", image)
    status, content_type, body = await get(filename="a.png", subfolder="sub", preview="jpeg;50")
    assert status == 200 and content_type == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, content_type, body = await get(filename="a.png", subfolder="sub", preview="webp;80")
    assert content_type == "image/webp" and body[8:12] == b"WEBP"
    status, _, body = await get(filename="a.png", subfolder="sub", channel="rgb")
    with Image.open(io.BytesIO(body)) as rgb:
        assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (10, 20, 30)
    status, _, body = await get(filename="a.png", subfolder="sub", channel="a")
    with Image.open(io.BytesIO(body)) as alpha:
        assert alpha.getpixel((0, 0))[3] == 40 and alpha.size == (16, 8)
    status, content_type, _ = await get(filename="page.html")
    assert status == 200 and content_type == "application/octet-stream"
    assert (await get(filename="a.png [output]", subfolder="sub"))[0] == 200

    assert (await get(filename="missing.png"))[0] == 404
    assert (await get(filename=""))[0] == 400
    assert (await get(filename="a.png", type="models"))[0] == 400
    for params in ({"filename": "../../etc/passwd"}, {"filename": "passwd", "subfolder": "../../../../etc"},
                   {"filename": "/etc/passwd"}, {"filename": "x", "subfolder": "/etc"}):
        assert (await get(**params))[0] == 403, params
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", server.base / "output" / "leak")
    assert (await get(filename="leak"))[0] == 403


async def test_malformed_multipart_upload_is_a_client_error(server, http):
    body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nbroken header line\r\n\r\nxx\r\n--b--\r\n"
    for route in ("/upload/image", "/api/upload/mask"):
        async with http.post(route, data=body,
                             headers={"Content-Type": "multipart/form-data; boundary=b"}) as response:
            assert response.status == 400, route
    async with http.get("/api/queue") as response:
        assert response.status == 200
