"""ComfyUI clients installed from PyPI, run unchanged against our server on loopback.

- comfy-api-simplified (requests and websockets): queues an API-format prompt, waits on /ws, reads /history and
  fetches the image from /view.
- comfyui-autograph (standard library only, its own websocket client): converts a UI-format workflow
  (``widgets_values``) to API format from /object_info, submits it, follows /ws and /history, saves the images
  from /view; as a library and as its command line.
- comfy-cli, Comfy-Org's command line: ``comfy run`` converts the UI workflow from /object_info, checks it against
  /object_info, queues it and follows /ws; ``comfy download`` reads /history and saves the images from /view.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from conftest import wait_for_history

# Nodes whose inputs a client must map in ComfyUI's order: a linked input first, a seed with its
# control_after_generate widget value, a combo, a multiline string, an optional widget; and a schema node.
PACK = textwrap.dedent('''
    import math

    from PIL import Image, PngImagePlugin

    import folder_paths
    from comfy_api.latest import io


    class PyPIClientsPaint:
        """A width x height PNG: the chosen colour channel at brightness, the others at seed % 256."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"height": ("INT", {"forceInput": True}),
                                 "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                                  "control_after_generate": True}),
                                 "width": ("INT", {"default": 8, "min": 1, "max": 64}),
                                 "colour": (["red", "green", "blue"],),
                                 "brightness": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05}),
                                 "label": ("STRING", {"multiline": True, "default": ""})},
                    "optional": {"alpha": ("INT", {"default": 255, "min": 0, "max": 255})}}

        RETURN_TYPES = ()
        FUNCTION = "paint"
        OUTPUT_NODE = True
        CATEGORY = "pypi clients"

        def paint(self, height, seed, width, colour, brightness, label, alpha=255):
            pixel = [seed % 256] * 3 + [alpha]
            pixel[["red", "green", "blue"].index(colour)] = round(255 * brightness)
            folder, filename, counter, subfolder, _prefix = folder_paths.get_save_image_path(
                "PyPIClients", folder_paths.get_output_directory(), width, height)
            name = f"{filename}_{counter:05}_.png"
            text = PngImagePlugin.PngInfo()
            text.add_text("label", label)
            Image.new("RGBA", (width, height), tuple(pixel)).save(f"{folder}/{name}", pnginfo=text)
            return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


    class PyPIClientsScale(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(node_id="PyPIClientsScale", category="pypi clients",
                             inputs=[io.Int.Input("value", force_input=True),
                                     io.Float.Input("factor", default=1.0, min=0.0, max=10.0, step=0.5),
                                     io.Combo.Input("rounding", options=["floor", "ceil"])],
                             outputs=[io.Int.Output()])

        @classmethod
        def execute(cls, value, factor, rounding) -> io.NodeOutput:
            return io.NodeOutput(getattr(math, rounding)(value * factor))


    NODE_CLASS_MAPPINGS = {"PyPIClientsPaint": PyPIClientsPaint, "PyPIClientsScale": PyPIClientsScale}
''')

# The frontend's saved format: widget values by position, the seed followed by its "fixed" control value.
UI_WORKFLOW = {
    "id": "3f2c0a52-6f44-4c1e-9d7e-8a51f1c2b0aa", "revision": 0, "last_node_id": 4, "last_link_id": 3,
    "nodes": [
        {"id": 1, "type": "ServerTestNumber", "pos": [0, 0], "size": [270, 60], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
         "properties": {"Node name for S&R": "ServerTestNumber"}, "widgets_values": [5]},
        {"id": 2, "type": "PyPIClientsScale", "pos": [300, 0], "size": [270, 80], "flags": {}, "order": 1, "mode": 0,
         "inputs": [{"name": "value", "type": "INT", "link": 1}],
         "outputs": [{"name": "INT", "type": "INT", "links": [2]}],
         "properties": {"Node name for S&R": "PyPIClientsScale"}, "widgets_values": [2.5, "ceil"]},
        # A node that reports progress with previews for a moment, so that a client that connects to /ws after
        # queueing still sees the prompt run.
        {"id": 4, "type": "ServerTestSlow", "pos": [300, 200], "size": [270, 80], "flags": {}, "order": 2,
         "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 2}],
         "outputs": [{"name": "INT", "type": "INT", "links": [3]}],
         "properties": {"Node name for S&R": "ServerTestSlow"}, "widgets_values": [0, 0.6]},
        {"id": 3, "type": "PyPIClientsPaint", "pos": [600, 0], "size": [300, 260], "flags": {}, "order": 3,
         "mode": 0, "title": "Paint", "inputs": [{"name": "height", "type": "INT", "link": 3}], "outputs": [],
         "properties": {"Node name for S&R": "PyPIClientsPaint"},
         "widgets_values": [70, "fixed", 12, "green", 0.4, "two\nlines", 200]},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 4, 0, "INT"], [3, 4, 0, 3, 0, "INT"]],
    "groups": [], "config": {}, "extra": {"frontendVersion": "1.58.1"}, "version": 0.4,
}
EXPECTED_API = {
    "1": {"class_type": "ServerTestNumber", "inputs": {"value": 5}},
    "2": {"class_type": "PyPIClientsScale", "inputs": {"value": ["1", 0], "factor": 2.5, "rounding": "ceil"}},
    "4": {"class_type": "ServerTestSlow", "inputs": {"value": ["2", 0], "seconds": 0.6}},
    "3": {"class_type": "PyPIClientsPaint",
          "inputs": {"height": ["4", 0], "seed": 70, "width": 12, "colour": "green", "brightness": 0.4,
                     "label": "two\nlines", "alpha": 200}},
}
# ceil(5 * 2.5) = 13 rows of (70, round(0.4 * 255), 70, 200).
EXPECTED_IMAGE = ((12, 13), (70, 102, 70, 200), "two\nlines")


def api_prompt(value: int = 3, seed: int = 9) -> dict:
    """An API-format prompt as ComfyUI's "Export (API)" writes it, titles in _meta."""
    return {
        "1": {"class_type": "ServerTestNumber", "inputs": {"value": value}, "_meta": {"title": "Number"}},
        "2": {"class_type": "PyPIClientsScale", "inputs": {"value": ["1", 0], "factor": 2.0, "rounding": "floor"},
              "_meta": {"title": "Scale"}},
        "3": {"class_type": "PyPIClientsPaint",
              "inputs": {"height": ["2", 0], "seed": seed, "width": 5, "colour": "blue", "brightness": 1.0,
                         "label": "simplified"},
              "_meta": {"title": "Paint"}},
    }


@pytest.fixture
def base_dir(base_dir: Path) -> Path:
    pack = base_dir / "custom_nodes" / "pypi_clients_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(PACK)
    return base_dir


def image_facts(data: bytes) -> tuple[tuple[int, int], tuple[int, ...], str]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.getpixel((0, 0)), image.text.get("label", "")


async def test_autograph_converts_a_ui_workflow_from_object_info(server):
    from autograph import ApiFlow

    api = await asyncio.to_thread(ApiFlow, UI_WORKFLOW, server_url=server.url)
    assert json.loads(api.to_json()) == EXPECTED_API


async def test_autograph_command_line_converts_submits_and_saves_the_image(server, http, tmp_path):
    workflow, saved = tmp_path / "workflow.json", tmp_path / "saved"
    workflow.write_text(json.dumps(UI_WORKFLOW))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autograph", "--submit", "--input-path", str(workflow), "--server-url", server.url,
        "--save-images", str(saved), "--filepattern", "frame.###.png", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    # Its progress printer writes one JSON event a line, then it prints the prompt id and the saved file.
    lines = stdout.decode().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    prompt_id, path = [line for line in lines if not line.startswith("{")]
    assert path == str(saved / "frame.000.png")
    assert image_facts(Path(path).read_bytes()) == EXPECTED_IMAGE
    # It followed the run over our websocket, not only by polling /history.
    assert {"executing", "progress", "executed", "execution_success"} <= {event["type"] for event in events}
    assert {event["prompt_id"] for event in events} == {prompt_id}
    assert events[-1]["type"] == "completed" and sorted(events[-1]["nodes_done"]) == ["1", "2", "3", "4"]

    history = await wait_for_history(http, prompt_id)
    saved_name = history["outputs"]["3"]["images"][0]["filename"]
    assert (server.base / "output" / saved_name).read_bytes() == Path(path).read_bytes()
    assert history["prompt"][2] == EXPECTED_API


async def test_comfy_api_simplified_queues_waits_and_fetches_the_image(server):
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    client = ComfyApiWrapper(server.url)
    workflow = ComfyWorkflowWrapper(api_prompt())
    workflow.set_node_param("Paint", "seed", 33)
    images = await asyncio.to_thread(client.queue_and_wait_images, workflow, "Paint")
    (name, data), = images.items()
    # floor(3 * 2.0) = 6 rows, blue at full brightness, the others at seed 33.
    assert image_facts(data) == ((5, 6), (33, 33, 255, 255), "simplified")
    assert (server.base / "output" / name).read_bytes() == data

    assert await asyncio.to_thread(client.get_queue) == {"queue_running": [], "queue_pending": []}
    info = await asyncio.to_thread(client.get_object_info, "PyPIClientsPaint")
    assert info["PyPIClientsPaint"]["input_order"] == {
        "required": ["height", "seed", "width", "colour", "brightness", "label"], "optional": ["alpha"]}


async def test_comfy_api_simplified_sees_refusals_and_execution_errors(server):
    from comfy_api_simplified import ComfyApiWrapper
    from comfy_api_simplified.exceptions import ComfyApiError

    client = ComfyApiWrapper(server.url)
    with pytest.raises(ComfyApiError, match="400"):
        await asyncio.to_thread(client.queue_prompt, {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    # It connects after queueing, so the failing node waits behind a slow one to be seen over /ws.
    failing = {"1": {"class_type": "ServerTestSlow", "inputs": {"value": 1, "seconds": 1.0}},
               "2": {"class_type": "ServerTestFail", "inputs": {"value": ["1", 0]}},
               "3": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["2", 0], "filename_prefix": "Never"}}}
    with pytest.raises(ComfyApiError, match="Execution error"):
        await asyncio.to_thread(lambda: asyncio.run(client.queue_prompt_and_wait(failing)))


async def run_comfy_cli(home: Path, *args: str, environment: dict[str, str] | None = None) -> list[dict]:
    """``comfy --skip-prompt ARGS`` with its NDJSON output, in a home folder of its own and without telemetry."""
    folders = {name: str(home / name.lower()) for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
                                                         "XDG_STATE_HOME")}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("comfy")), "--skip-prompt", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(home), **folders, "DO_NOT_TRACK": "1",
                                             "COMFY_NO_WATCH": "1", **(environment or {})})
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, (stdout + stderr).decode()
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


async def test_comfy_cli_runs_a_ui_workflow_and_downloads_its_image(server, tmp_path):
    workflow, home = tmp_path / "workflow.json", tmp_path / "home"
    workflow.write_text(json.dumps(UI_WORKFLOW))
    host, port = server.url.removeprefix("http://").split(":")
    events = await run_comfy_cli(home, "run", "--workflow", str(workflow), "--host", host, "--port", port, "--wait",
                                 "--json")
    by_type = {event["type"]: event for event in events}
    # What it converted from our /object_info and sent, titled from the UI workflow and the display names.
    sent = by_type["prompt_preview"]["prompt"]
    assert {node: {"class_type": entry["class_type"], "inputs": entry["inputs"]} for node, entry in sent.items()} \
        == EXPECTED_API
    assert sent["3"]["_meta"]["title"] == "Paint" and sent["1"]["_meta"]["title"] == "Number (server tests)"
    assert [event["node"] for event in events if event["type"] == "executing"] == ["1", "2", "4", "3"]
    envelope = events[-1]
    assert envelope["type"] == "envelope" and envelope["ok"] is True and envelope["data"]["status"] == "completed"
    prompt_id = envelope["data"]["prompt_id"]

    saved = tmp_path / "saved"
    download = await run_comfy_cli(home, "--json", "download", prompt_id, "--out-dir", str(saved),
                                   environment={"COMFY_LOCAL_URL": server.url})
    (file,) = download[-1]["data"]["files"]
    assert image_facts(Path(file["path"]).read_bytes()) == EXPECTED_IMAGE
