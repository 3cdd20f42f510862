"""POST /api/v1/prompts runs a prompt on a real server and answers with its image or outputs; GET tells outcomes."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from PIL import Image

from conftest import save_prompt, slow_prompt

# A custom node that reads an input image the way LoadImage does: a choice among the input folder's files.
IMAGE_INFO_PACK = '''
import os

import folder_paths


class RestImageInfo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (sorted(os.listdir(folder_paths.get_input_directory())),)}}

    RETURN_TYPES = ()
    FUNCTION = "describe"
    OUTPUT_NODE = True
    CATEGORY = "rest api tests"

    def describe(self, image):
        from PIL import Image

        with Image.open(folder_paths.get_annotated_filepath(image)) as opened:
            width, height = opened.size
            pixel = opened.convert("L").getpixel((0, 0))
        return {"ui": {"text": [f"{image} {width}x{height} {pixel}"]}}


NODE_CLASS_MAPPINGS = {"RestImageInfo": RestImageInfo}
'''


@pytest.fixture
def base_dir(base_dir: Path) -> Path:
    pack = base_dir / "custom_nodes" / "rest_api_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(IMAGE_INFO_PACK)
    return base_dir


def png(grey: int, size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, grey).save(buffer, format="PNG")
    return buffer.getvalue()


def grey_of(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("L").getpixel((0, 0))


def sha256_digest(data: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_png_answer_is_the_saved_image_with_its_name_digest_and_view_location(server, http):
    async with http.post("/api/v1/prompts", json=save_prompt(value=77, prefix="Rest"),
                         headers={"Accept": "image/png"}) as response:
        assert response.status == 200 and response.content_type == "image/png"
        data = await response.read()
        headers = response.headers
    assert grey_of(data) == 77
    assert headers["Content-Disposition"] == 'filename="Rest_00001_.png"'
    assert headers["Digest"] == sha256_digest(data)
    location = urlsplit(headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == server.url and location.path == "/view"
    assert parse_qs(location.query) == {"filename": ["Rest_00001_.png"], "type": ["output"]}
    assert (server.base / "output" / "Rest_00001_.png").read_bytes() == data
    async with http.get(headers["Location"]) as response:
        assert response.status == 200 and await response.read() == data


async def test_json_answer_has_outputs_urls_and_the_prompt_id_and_the_wrapper_is_accepted(server, http):
    prompt = save_prompt(value=5, prefix="Wrapped")
    async with http.post("/api/v1/prompts", json={"prompt": prompt},
                         headers={"Accept": "application/json"}) as response:
        assert response.status == 200 and response.content_type == "application/json"
        body = await response.json()
        assert response.headers["Digest"] == sha256_digest(await response.read())
        assert response.headers["Location"] == f"/api/v1/prompts/{body['prompt_id']}"
    image = {"filename": "Wrapped_00001_.png", "subfolder": "", "type": "output"}
    assert body["outputs"] == {"2": {"images": [image]}}
    assert body["urls"] == [f"{server.url}/view?filename=Wrapped_00001_.png&type=output"]
    async with http.get(body["urls"][0]) as response:
        assert grey_of(await response.read()) == 5

    async with http.get(f"/api/v1/prompts/{body['prompt_id']}") as response:
        assert response.status == 200 and await response.json() == body["outputs"]
    async with http.get("/api/v1/prompts") as response:
        assert response.status == 200 and await response.json() == prompt
    # A node called "prompt" keeps a bare prompt bare.
    node_named_prompt = {"prompt": prompt["1"], "2": {**prompt["2"], "inputs": {**prompt["2"]["inputs"],
                                                                                 "value": ["prompt", 0]}}}
    async with http.post("/api/v1/prompts", json=node_named_prompt) as response:
        assert response.status == 200 and len((await response.json())["urls"]) == 1


@pytest.mark.parametrize("server_args", [["--external-address", "https://comfy.example.org/"]])
async def test_urls_use_the_external_address(server, http):
    async with http.post("/api/v1/prompts", json=save_prompt(value=1, prefix="External")) as response:
        body = await response.json()
    assert body["urls"] == ["https://comfy.example.org/view?filename=External_00001_.png&type=output"]
    async with http.post("/api/v1/prompts", json=save_prompt(value=2, prefix="External"),
                         headers={"Accept": "image/png"}) as response:
        assert response.headers["Location"] == \
            "https://comfy.example.org/view?filename=External_00002_.png&type=output"


async def test_png_answer_is_the_last_image_saved(server, http):
    prompt = {"1": {"class_type": "ServerTestSaveImage", "inputs": {"value": 10, "filename_prefix": "First"}},
              "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": 200, "filename_prefix": "Second"}}}
    async with http.post("/api/v1/prompts", json=prompt, headers={"Accept": "image/png"}) as response:
        assert response.status == 200
        data, disposition = await response.read(), response.headers["Content-Disposition"]
    entry = next(iter((await (await http.get("/api/history", params={"max_items": 1})).json()).values()))
    last = [image for node in entry["outputs"].values() for image in node["images"]][-1]
    assert disposition == f'filename="{last["filename"]}"'
    assert (server.base / "output" / last["filename"]).read_bytes() == data


async def test_no_image_gives_204_for_png_and_the_outputs_for_json(server, http):
    prompt = {"1": {"class_type": "ServerTestNumber", "inputs": {"value": 3}},
              "2": {"class_type": "RestImageInfo", "inputs": {"image": "grey.png"}}}
    (server.base / "input" / "grey.png").write_bytes(png(9))
    async with http.post("/api/v1/prompts", json=prompt, headers={"Accept": "image/png"}) as response:
        assert response.status == 204 and await response.read() == b""
    async with http.post("/api/v1/prompts", json=prompt, headers={"Accept": "*/*"}) as response:
        body = await response.json()
    assert body["outputs"] == {"2": {"text": ["grey.png 4x3 9"]}} and body["urls"] == []


async def test_invalid_prompt_is_400_with_comfyuis_error_body(server, http):
    prompt = {"1": {"class_type": "ServerTestNumber", "inputs": {"value": "many"}},
              "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "x"}}}
    async with http.post("/api/v1/prompts", json=prompt) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"
    assert body["node_errors"]["1"]["class_type"] == "ServerTestNumber"
    # The fork's clients read the error's own fields at the top.
    assert {key: body[key] for key in ("type", "message", "details", "extra_info")} == body["error"]

    async with http.post("/api/v1/prompts", json={"1": {"class_type": "NoSuchNode", "inputs": {}}}) as response:
        assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_prompt"
    for empty in (b"", b"{}", b'{"prompt": {}}', b"[1, 2]", b"{not json"):
        async with http.post("/api/v1/prompts", data=empty, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, empty
            assert isinstance((await response.json())["error"], str)
    async with http.post("/api/v1/prompts", json=save_prompt(), headers={"Accept": "text/html"}) as response:
        assert response.status == 400 and "Accept" in (await response.json())["error"]


async def test_node_failure_is_500_with_the_execution_status(server, http):
    prompt = {"1": {"class_type": "ServerTestFail", "inputs": {"value": 3}},
              "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "x"}}}
    async with http.post("/api/v1/prompts", json=prompt, headers={"Accept": "image/png"}) as response:
        assert response.status == 500 and response.content_type == "application/json"
        status = await response.json()
    assert status["status_str"] == "error" and status["completed"] is False
    events = [event for event, _data in status["messages"]]
    assert events[0] == "execution_start" and events[-1] == "execution_error"
    details = status["error_details"]
    assert details["node_id"] == "1" and details["exception_message"] == "failing on purpose with 3"

    prompt_id = details["prompt_id"]
    async with http.get(f"/api/v1/prompts/{prompt_id}") as response:
        assert response.status == 500 and await response.json() == status


async def test_respond_async_answers_202_and_the_outcome_url_tells_204_then_200(server, http):
    async with http.post("/api/v1/prompts", json=slow_prompt(seconds=1.0, value=40),
                         headers={"Prefer": "respond-async"}) as response:
        assert response.status == 202
        prompt_id = (await response.json())["prompt_id"]
        location = response.headers["Location"]
        assert location == f"/api/v1/prompts/{prompt_id}" and response.headers["Retry-After"] == "60"
    async with http.get(location) as response:
        assert response.status == 204
    for _attempt in range(200):
        async with http.get(location) as response:
            status, body = response.status, await response.read()
        if status != 204:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    outputs = json.loads(body)
    assert outputs["2"]["images"][0]["filename"] == "Slow_00001_.png"

    # The +respond-async suffix of Accept asks for the same.
    async with http.post("/api/v1/prompts", json=save_prompt(value=8),
                         headers={"Accept": "application/json+respond-async"}) as response:
        assert response.status == 202


async def test_unknown_ids_are_404_and_an_empty_history_has_no_last_prompt(server, http):
    async with http.get("/api/v1/prompts") as response:
        assert response.status == 404
    async with http.get("/api/v1/prompts/no-such-prompt") as response:
        assert response.status == 404 and "no-such-prompt" in (await response.json())["error"]


async def test_data_url_inputs_are_saved_as_input_files(server, http):
    data = png(123, (5, 2))
    name = hashlib.sha256(data).hexdigest()[:32] + ".png"
    prompt = {"1": {"class_type": "RestImageInfo",
                    "inputs": {"image": "data:image/png;base64," + base64.b64encode(data).decode()}}}
    async with http.post("/api/v1/prompts", json=prompt) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["outputs"] == {"1": {"text": [f"{name} 5x2 123"]}}
    assert (server.base / "input" / name).read_bytes() == data
    # The history keeps the prompt as it ran, naming the file.
    async with http.get("/api/v1/prompts") as response:
        assert (await response.json())["1"]["inputs"]["image"] == name

    prompt["1"]["inputs"]["image"] = "data:image/png;base64,not base64!"
    async with http.post("/api/v1/prompts", json=prompt) as response:
        assert response.status == 400 and "base64" in (await response.json())["error"]


async def test_multipart_files_are_saved_before_the_prompt_runs(server, http):
    (server.base / "input" / "photo.png").write_bytes(png(1))
    prompt = {"1": {"class_type": "RestImageInfo", "inputs": {"image": "photo.png"}}}
    form = aiohttp.FormData()
    form.add_field("prompt", json.dumps({"prompt": prompt}), content_type="application/json")
    form.add_field("files", png(250, (7, 7)), filename="photo.png", content_type="image/png")
    async with http.post("/api/v1/prompts", data=form) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    # The upload replaced the file of that name, as the fork does.
    assert body["outputs"] == {"1": {"text": ["photo.png 7x7 250"]}}

    # A file name with a folder in it (aiohttp's client would escape the slash; a hand-made body does not).
    body = (b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + json.dumps(prompt).encode()
            + b'\r\n--b\r\nContent-Disposition: form-data; name="files"; filename="../escape.png"\r\n\r\nx'
            + b"\r\n--b--\r\n")
    async with http.post("/api/v1/prompts", data=body,
                         headers={"Content-Type": "multipart/form-data; boundary=b"}) as response:
        assert response.status == 400 and "escape.png" in (await response.json())["error"]
    assert not (server.base / "escape.png").exists()
    form = aiohttp.FormData()
    form.add_field("files", png(1), filename="only.png", content_type="image/png")
    async with http.post("/api/v1/prompts", data=form) as response:
        assert response.status == 400 and "prompt" in (await response.json())["error"]


async def test_a_client_that_goes_away_does_not_cancel_its_prompt(server, http):
    with pytest.raises(asyncio.TimeoutError):
        async with http.post("/api/v1/prompts", json=slow_prompt(seconds=0.6, value=2),
                             timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    for _attempt in range(200):
        history = await (await http.get("/api/history")).json()
        if history:
            break
        await asyncio.sleep(0.05)
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
