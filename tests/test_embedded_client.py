"""The embedded client: ``async with Comfy() as client`` running prompts on a real plugin manager."""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

import nodes_for_tests
from comfy import hookspecs, paths, paths_plugin
from comfy.client.embedded_comfy_client import Comfy
from comfy.configuration import default_configuration
from comfy.graph import PromptValidationError
from comfy.legacy import uninstall_legacy_modules
from comfy.nodes import registry as node_registry_module
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfy.transport import InProcessTransport, PromptExecutionError, PromptInterruptedError

TIMEOUT = 20


class NodesForTestsPlugin:
    """A small real plugin that registers the test nodes."""

    @hookspecs.hookimpl
    def comfyui_register_nodes(self, register):
        for name, node_class in nodes_for_tests.NODE_CLASS_MAPPINGS.items():
            register(name, node_class)


@pytest.fixture
def plugin_manager(calls):
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(NodesForTestsPlugin(), "test_nodes")
    return pm


@pytest.fixture
def comfy(tmp_path, plugin_manager):
    configuration = default_configuration(plugin_manager)
    configuration.base_directory = str(tmp_path)
    yield Comfy(configuration, plugin_manager=plugin_manager)
    # Starting a kernel makes it the process-wide one; leave the next test a clean process.
    uninstall_legacy_modules()
    set_plugin_manager(None)
    paths.set_state(None)
    node_registry_module.set_current(None)


def show(value) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def worker_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "comfyui-prompt-worker"]


async def test_queue_prompt_with_a_dict_and_with_json_text(comfy):
    async with comfy as client:
        assert await client.queue_prompt(show(1)) == {"3": {"value": [2]}}
        assert await client.queue_prompt(json.dumps(show(5))) == {"3": {"value": [6]}}


async def test_queue_with_progress(comfy):
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 2}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    async with comfy as client:
        task = client.queue_with_progress(prompt, prompt_id="with-progress")
        notifications = [notification async for notification in task.progress()]
        outputs = await task
    assert outputs == {"2": {"value": [2]}}
    assert {notification.prompt_id for notification in notifications} == {"with-progress"}
    assert [notification.event for notification in notifications] == [
        "execution_start", "execution_cached", "executing", "progress", "progress", "executing", "executed",
        "execution_success", "executing"]
    assert notifications[3].data == {"value": 1, "max": 2, "prompt_id": "with-progress", "node": "1"}
    assert notifications[-1].data["node"] is None


async def test_invalid_prompt_raises_with_comfyuis_body(comfy):
    async with comfy as client:
        with pytest.raises(PromptValidationError) as info:
            await client.queue_prompt({"1": {"class_type": "Number", "inputs": {}},
                                       "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})
        body = info.value.body
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        assert body["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"
        with pytest.raises(PromptValidationError) as info:
            await client.queue_prompt("{not json")
        assert info.value.body["error"]["type"] == "invalid_prompt"
        # The same error reaches a task's awaiter; its progress simply ends.
        task = client.queue_with_progress({"1": {"class_type": "Nope", "inputs": {}}})
        assert [notification async for notification in task.progress()] == []
        with pytest.raises(PromptValidationError):
            await task


async def test_invalid_outputs_are_left_out_while_valid_ones_run(comfy, calls):
    prompt = {**show(1),
              "7": {"class_type": "Number", "inputs": {"value": 3}},
              "8": {"class_type": "Choice", "inputs": {"color": "purple", "shape": "circle"}},
              "9": {"class_type": "Show", "inputs": {"value": ["8", 0]}}}
    async with comfy as client:
        assert await client.queue_prompt(prompt) == {"3": {"value": [2]}}
    assert calls["Choice"] == 0 and calls["Show"] == 1


async def test_failing_node_raises_with_the_execution_error_payload(comfy):
    prompt = {"1": {"class_type": "Fail", "inputs": {"value": 1, "message": "broken node"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    async with comfy as client:
        with pytest.raises(PromptExecutionError) as info:
            await client.queue_prompt(prompt, prompt_id="failing")
        payload = info.value.payload
        assert payload["prompt_id"] == "failing"
        assert payload["node_id"] == "1" and payload["node_type"] == "Fail"
        assert payload["exception_message"] == "broken node" and payload["exception_type"] == "ValueError"
        assert isinstance(payload["traceback"], list)
        # The client keeps working.
        assert await client.queue_prompt(show(2)) == {"3": {"value": [3]}}


async def test_leaving_the_context_stops_the_worker(comfy):
    before = len(worker_threads())
    async with comfy as client:
        await client.queue_prompt(show(1))
        assert len(worker_threads()) == before + 1
    assert len(worker_threads()) == before
    with pytest.raises(RuntimeError):
        await comfy.queue_prompt(show(1))


async def test_work_runs_off_the_event_loop(comfy):
    prompt = {"1": {"class_type": "Sleep", "inputs": {"seconds": 0.5}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with comfy as client:
        ticker = asyncio.create_task(tick())
        started = time.perf_counter()
        outputs = await client.queue_prompt(prompt)
        elapsed = time.perf_counter() - started
        ticker.cancel()
    assert outputs == {"2": {"value": [0.5]}}
    assert elapsed >= 0.5
    assert ticks >= 10  # the loop kept ticking while the node slept


async def test_saved_files_get_an_absolute_path(comfy, tmp_path):
    prompt = {"1": {"class_type": "SaveText", "inputs": {"text": "hello", "filename": "note.txt"}}}
    async with comfy as client:
        outputs = await client.queue_prompt(prompt, prompt_id="save")
        again = await client.queue_prompt(prompt, prompt_id="save-again")
        history = client.history.get_history("save")
    entry = outputs["1"]["texts"][0]
    assert entry["abs_path"] == os.path.join(str(tmp_path), "output", "texts", "note.txt")
    with open(entry["abs_path"], encoding="utf-8") as file:
        assert file.read() == "hello"
    assert again["1"]["texts"][0]["abs_path"] == entry["abs_path"]
    # abs_path is for the embedding program: history keeps ComfyUI's shape.
    assert history["save"]["outputs"] == {"1": {"texts": [{"filename": "note.txt", "subfolder": "texts",
                                                            "type": "output"}]}}


async def test_concurrent_prompts(comfy):
    async with comfy as client:
        results = await asyncio.gather(*(client.queue_prompt(show(value)) for value in range(5)))
    assert results == [{"3": {"value": [value + 1]}} for value in range(5)]


async def test_partial_execution_targets(comfy, calls):
    prompt = {**show(1), "9": {"class_type": "ShowInt", "inputs": {"value": 100}}}
    async with comfy as client:
        assert await client.queue_prompt(prompt, partial_execution_targets=["9"]) == {"9": {"value": [100]}}
    assert calls["Show"] == 0


async def test_interrupt(comfy):
    prompt = {"1": {"class_type": "Spin", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    async with comfy as client:
        running = asyncio.create_task(client.queue_prompt(prompt, prompt_id="spin"))
        assert await asyncio.to_thread(nodes_for_tests.SPINNING.wait, TIMEOUT)
        client.interrupt("spin")
        with pytest.raises(PromptInterruptedError) as info:
            await running
        assert info.value.payload["node_id"] == "1"
        assert await client.queue_prompt(show(1)) == {"3": {"value": [2]}}


async def test_cancelling_a_waiting_call_removes_or_interrupts_its_prompt(comfy, calls):
    spinning = {"1": {"class_type": "Spin", "inputs": {"value": 1}},
                "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    async with comfy as client:
        running = asyncio.create_task(client.queue_prompt(spinning, prompt_id="spin"))
        assert await asyncio.to_thread(nodes_for_tests.SPINNING.wait, TIMEOUT)
        waiting = asyncio.create_task(client.queue_prompt(show(7), prompt_id="waiting"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # The spinning prompt was interrupted and the waiting one never ran: the next one runs at once.
        assert await asyncio.wait_for(client.queue_prompt(show(1)), TIMEOUT) == {"3": {"value": [2]}}
        assert "waiting" not in client.history.get_history()
        assert client.history.get_history("spin")["spin"]["status"]["messages"][-1][0] == "execution_interrupted"
    assert calls["Show"] == 1


class LifecyclePlugin:
    """Records the kernel's start-up and shutdown hooks, and supplies its own transport."""

    def __init__(self):
        self.calls = []
        self.submitted = []

    @hookspecs.hookimpl
    def comfyui_startup(self, configuration):
        self.calls.append("startup")

    @hookspecs.hookimpl
    def comfyui_shutdown(self, configuration):
        self.calls.append("shutdown")

    @hookspecs.hookimpl
    def comfyui_make_transport(self, configuration):
        plugin = self

        class RecordingTransport(InProcessTransport):
            def submit(self, prompt_id, validated, *args, **kwargs):
                plugin.submitted.append(prompt_id)
                return super().submit(prompt_id, validated, *args, **kwargs)

        # The registry of the kernel being started is current by the time transports are made.
        return RecordingTransport(node_registry_module.current(), configuration)


async def test_startup_shutdown_and_transport_hooks(plugin_manager, comfy):
    plugin = LifecyclePlugin()
    plugin_manager.register(plugin, "lifecycle")
    async with comfy as client:
        assert plugin.calls == ["startup"]
        assert await client.queue_prompt(show(1), prompt_id="through-plugin") == {"3": {"value": [2]}}
    assert plugin.calls == ["startup", "shutdown"]
    assert plugin.submitted == ["through-plugin"]


class FailingStartupPlugin:
    @hookspecs.hookimpl
    def comfyui_startup(self, configuration):
        raise RuntimeError("start-up failed")


async def test_failed_start_leaves_no_worker_behind(plugin_manager, comfy):
    plugin_manager.register(FailingStartupPlugin(), "failing")
    before = len(worker_threads())
    with pytest.raises(RuntimeError, match="start-up failed"):
        async with comfy:
            pass
    assert len(worker_threads()) == before


async def test_twenty_thousand_node_chain(comfy):
    prompt = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    for index in range(1, 20_000):
        prompt[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": ["19999", 0]}}
    async with comfy as client:
        started = time.perf_counter()
        assert await client.queue_prompt(json.dumps(prompt)) == {"out": {"value": [19_999]}}
        assert time.perf_counter() - started < 20
