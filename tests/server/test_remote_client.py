"""The remote client against a real server: the REST API, /prompt with websocket progress, errors, and no aiohttp."""
from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest
from PIL import Image

from comfy.client.aio_client import AsyncRemoteComfyClient, RemoteComfyError
from comfy.graph import PromptValidationError
from comfy.transport import PromptExecutionError, PromptInterruptedError
from conftest import save_prompt, slow_prompt

FAILING = {"1": {"class_type": "ServerTestFail", "inputs": {"value": 4}},
           "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "x"}}}
INVALID = {"1": {"class_type": "ServerTestNumber", "inputs": {"value": "lots"}},
           "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "x"}}}


@pytest.fixture
async def client(server):
    async with AsyncRemoteComfyClient(server.url) as remote:
        yield remote


def grey_of(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("L").getpixel((0, 0))


async def test_rest_api_calls(server, client):
    data = await client.queue_prompt(save_prompt(value=60, prefix="Remote"))
    assert grey_of(data) == 60 and data == (server.base / "output" / "Remote_00001_.png").read_bytes()

    result = await client.queue_prompt_api(save_prompt(value=61, prefix="Remote"))
    assert result["outputs"] == {"2": {"images": [{"filename": "Remote_00002_.png", "subfolder": "",
                                                   "type": "output"}]}}
    assert result["urls"] == [f"{server.url}/view?filename=Remote_00002_.png&type=output"]
    assert await client.queue_prompt_uris(save_prompt(value=62, prefix="Remote")) == [
        f"{server.url}/view?filename=Remote_00003_.png&type=output"]
    history = await client.get_history(result["prompt_id"])
    assert history[result["prompt_id"]]["outputs"] == result["outputs"]
    assert len(await client.get_history(max_items=2)) == 2


async def test_queue_and_poll(client):
    prompt_id = await client.queue_and_forget_prompt_api(slow_prompt(seconds=0.5, value=3))
    assert (await client.get_prompt_status(prompt_id)) == (204, None)
    assert await client.len_queue() == 1
    status, outputs = await client.poll_prompt_until_done(prompt_id, poll_interval=0.05)
    assert status == 200 and outputs["2"]["images"][0]["filename"] == "Slow_00001_.png"
    job = await client.get_job(prompt_id)
    assert job["status"] == "completed" and job["outputs"] == outputs
    assert [job["id"] for job in (await client.get_jobs(status="completed"))["jobs"]] == [prompt_id]
    assert await client.get_job("no-such-job") is None
    assert (await client.get_prompt_status("no-such-prompt"))[0] == 404


async def test_progress_over_the_websocket(client):
    task = client.queue_with_progress(slow_prompt(seconds=0.4, value=9))
    events = [notification async for notification in task.progress()]
    outputs = await task
    assert outputs == (await client.get_history(task.prompt_id))[task.prompt_id]["outputs"]
    assert outputs["2"]["images"][0]["filename"] == "Slow_00001_.png"
    names = [event.event for event in events]
    assert names[0] == "execution_start" and names[-2:] == ["execution_success", "executing"]
    assert {"executing", "progress", "executed", "preview_image"} <= set(names)
    assert all(event.prompt_id == task.prompt_id and event.data["prompt_id"] == task.prompt_id for event in events)
    progress = [event.data["value"] for event in events if event.event == "progress"]
    assert progress == sorted(progress) and progress[-1] == 4
    preview = next(event.data for event in events if event.event == "preview_image")
    assert preview["image_type"] == "image/jpeg" and preview["node_id"] == "1"
    with Image.open(io.BytesIO(preview["image"])) as image:
        assert max(image.size) == 64
    assert await client.queue_prompt_ui(save_prompt(value=1, prefix="Ui")) == {
        "2": {"images": [{"filename": "Ui_00001_.png", "subfolder": "", "type": "output"}]}}


async def test_two_clients_see_only_their_own_events(server):
    async with AsyncRemoteComfyClient(server.url) as first, AsyncRemoteComfyClient(server.url) as second:
        tasks = [first.queue_with_progress(slow_prompt(seconds=0.2, value=1)),
                 second.queue_with_progress(slow_prompt(seconds=0.2, value=2))]
        seen = await asyncio.gather(*[collect(task) for task in tasks])
        for task, events in zip(tasks, seen):
            assert events and {event.data["prompt_id"] for event in events} == {task.prompt_id}
            await task


async def collect(task):
    return [notification async for notification in task.progress()]


async def test_errors_raise_what_the_embedded_client_raises(client):
    for call in (client.queue_prompt, client.queue_prompt_api, client.queue_prompt_ui):
        with pytest.raises(PromptValidationError) as invalid:
            await call(INVALID)
        assert invalid.value.body["error"]["type"] == "prompt_outputs_failed_validation"
        assert invalid.value.body["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"
        with pytest.raises(PromptExecutionError) as failed:
            await call(FAILING)
        assert failed.value.payload["exception_message"] == "failing on purpose with 4"
        assert failed.value.payload["node_id"] == "1"
    with pytest.raises(RemoteComfyError) as refused:
        await client.queue_prompt_api({})
    assert refused.value.status == 400 and "No prompt" in str(refused.value)


async def test_interrupting_a_prompt_followed_over_the_websocket(client):
    task = client.queue_with_progress(slow_prompt(seconds=30, value=5))
    async for notification in task.progress():
        if notification.event == "progress":
            await client.interrupt(task.prompt_id)
    with pytest.raises(PromptInterruptedError):
        await task


def test_the_module_imports_without_aiohttp_and_names_the_extra_when_used():
    script = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "from comfy.client.aio_client import AsyncRemoteComfyClient\n"
        "client = AsyncRemoteComfyClient('http://127.0.0.1:1')\n"
        "try:\n"
        "    client.session\n"
        "except ImportError as error:\n"
        "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AsyncRemoteComfyClient needs aiohttp: pip install comfyui-kernel[client]"
    lazy = subprocess.run([sys.executable, "-c", "import sys, comfy.client.aio_client; print('aiohttp' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert lazy.stdout.strip() == "False", lazy.stderr
