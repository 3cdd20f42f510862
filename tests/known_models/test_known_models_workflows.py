"""Workflows naming known models, run with the embedded client against the fake hub."""
from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from comfy import paths
from comfy.client.embedded_comfy_client import Comfy
from comfy.configuration import default_configuration
from comfy.graph import PromptValidationError
from comfy.transport import PromptExecutionError, PromptInterruptedError
from conftest import SD15_FILE, SD15_REPO, TEST_REPO
from fake_hub import CivitaiVersion, FakeHub, HubFile


def load(name: str) -> dict:
    return {"1": {"class_type": "LoadCheckpointSize", "inputs": {"ckpt_name": name}}}


def client(pm: pluggy.PluginManager, tmp_path: Path, **options) -> Comfy:
    configuration = default_configuration(pm)
    configuration.update({"base_directory": str(tmp_path), **options})
    return Comfy(configuration, plugin_manager=pm)


async def test_a_shared_workflow_downloads_its_checkpoint_once_and_runs(hub: FakeHub, pm, tmp_path: Path):
    content = b"\x00safetensors" * 5_000
    hub.add_repo(SD15_REPO, {SD15_FILE: HubFile(content)})

    async with client(pm, tmp_path) as comfy:
        outputs = await comfy.queue_prompt(load(SD15_FILE))

    checkpoint = tmp_path / "models" / "checkpoints" / SD15_FILE
    assert outputs["1"]["size"] == [len(content)]
    assert outputs["1"]["path"] == [str(checkpoint)] and checkpoint.read_bytes() == content
    assert len(hub.gets(SD15_FILE)) == 1

    # A second run, in a fresh kernel without cached outputs, finds the file on disk.
    seen = len(hub.requests)
    async with client(pm, tmp_path) as comfy:
        outputs = await comfy.queue_prompt(load(SD15_FILE))
    assert outputs["1"]["size"] == [len(content)]
    assert len(hub.requests) == seen


async def test_download_progress_reaches_the_waiting_client(hub: FakeHub, pm, tmp_path: Path):
    content = bytes(range(256)) * 2_000
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(content)})

    async with client(pm, tmp_path) as comfy:
        task = comfy.queue_with_progress(load("tiny.safetensors"))
        events = [notification async for notification in task.progress()]
        await task

    progress = [event.data for event in events if event.event == "progress"]
    assert progress and all(data["node"] == "1" and data["max"] == len(content) for data in progress)
    assert progress[-1]["value"] == len(content)


async def test_a_gated_model_fails_the_node_with_the_login_message(hub: FakeHub, pm, tmp_path: Path):
    hub.add_repo(TEST_REPO, {"tiny.safetensors": HubFile(b"weights")}, token="hf_secret")

    async with client(pm, tmp_path) as comfy:
        with pytest.raises(PromptExecutionError) as raised:
            await comfy.queue_prompt(load("tiny.safetensors"))

    payload = raised.value.payload
    assert payload["node_id"] == "1" and payload["exception_type"].endswith("GatedModelError")
    assert "huggingface-cli login" in payload["exception_message"]
    assert f"{hub.url}/{TEST_REPO}" in payload["exception_message"]


async def test_disabled_known_models_are_not_offered_and_fail_validation(hub: FakeHub, pm, tmp_path: Path):
    hub.add_repo(SD15_REPO, {SD15_FILE: HubFile(b"weights")})

    async with client(pm, tmp_path, disable_known_models=True) as comfy:
        assert SD15_FILE not in paths.get_filename_list("checkpoints")
        with pytest.raises(PromptValidationError) as raised:
            await comfy.queue_prompt(load(SD15_FILE))

    assert "1" in raised.value.body["node_errors"]
    assert hub.requests == []
    assert not (tmp_path / "models" / "checkpoints" / SD15_FILE).exists()


async def test_known_models_are_offered_beside_local_files(hub: FakeHub, pm, tmp_path: Path):
    local = tmp_path / "models" / "checkpoints" / "mine.safetensors"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"mine")

    async with client(pm, tmp_path) as comfy:
        choices = comfy.runtime.registry.get("LoadCheckpointSize").INPUT_TYPES()["required"]["ckpt_name"][0]
        outputs = await comfy.queue_prompt(load("mine.safetensors"))

    assert {"mine.safetensors", SD15_FILE, "sd_xl_base_1.0.safetensors", "tiny.safetensors"} <= set(choices)
    assert "nested-alias.safetensors" not in choices
    assert outputs["1"]["size"] == [4] and hub.requests == []


async def test_interrupting_the_prompt_stops_the_download_and_keeps_the_part(hub: FakeHub, pm, tmp_path: Path):
    content = bytes(range(256)) * 4_000
    hub.civitai[4242] = CivitaiVersion(model_id=1, file_name="civitai_lora.safetensors",
                                       file=HubFile(content, delay=0.01))
    prompt = {"1": {"class_type": "LoadModelSize",
                    "inputs": {"folder_name": "loras", "model_name": "civitai_lora.safetensors"}}}
    lora = tmp_path / "models" / "loras" / "civitai_lora.safetensors"

    async with client(pm, tmp_path) as comfy:
        task = comfy.queue_with_progress(prompt, prompt_id="slow")
        async for notification in task.progress():
            if notification.event == "progress":
                comfy.interrupt("slow")
        with pytest.raises(PromptInterruptedError):
            await task

        assert not lora.exists()
        kept = lora.with_name(lora.name + ".part").stat().st_size
        assert 0 < kept < len(content)
        # The next run resumes from what arrived.
        hub.civitai[4242].file.delay = 0
        outputs = await comfy.queue_prompt(prompt)

    assert outputs["1"]["size"] == [len(content)] and lora.read_bytes() == content
    assert hub.gets("/storage/4242/civitai_lora.safetensors")[-1].range == f"bytes={kept}-"
