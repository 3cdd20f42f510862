"""``Comfy()`` configured as a distributed frontend: prompts run on a ``comfyui-worker`` process."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

import comfyui_distributed.plugin
from comfy import cli_args, paths, paths_plugin
from comfy.client.embedded_comfy_client import Comfy
from comfy.configuration import default_configuration
from comfy.legacy import uninstall_legacy_modules
from comfy.nodes import registry as node_registry_module
from comfy.plugins import create_plugin_manager, set_plugin_manager
from comfy.transport import PromptExecutionError, PromptInterruptedError
from comfyui_distributed.frontend import DistributedFrontendTransport
from distributed_helpers import Cluster, wait_for_run, work_prompt


@pytest.fixture
async def client(cluster: Cluster, base_dir: Path) -> AsyncIterator[Comfy]:
    """An embedded client whose transport is the distributed queue, with one worker behind it."""
    cluster.worker(base_dir)
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(paths_plugin, "local_models")
    pm.register(comfyui_distributed.plugin, "distributed")
    configuration = default_configuration(pm)
    configuration.update(cwd=str(base_dir), distributed_queue_frontend=True,
                         distributed_queue_connection_uri=cluster.uri, distributed_queue_name=cluster.queue_name)
    modules_before = set(sys.modules)
    async with Comfy(configuration, plugin_manager=pm) as comfy:
        yield comfy
    # The test pack loaded into this process; leave the next test a clean one.
    for name in set(sys.modules) - modules_before:
        if name == "folder_paths" or name.startswith(str(base_dir).replace(".", "_x_")):
            sys.modules.pop(name, None)
    uninstall_legacy_modules()
    set_plugin_manager(None)
    cli_args.set_configuration(None)
    paths.set_state(None)
    node_registry_module.set_current(None)


async def test_progress_of_a_remote_prompt(client: Comfy, base_dir: Path):
    assert isinstance(client.runtime.transport, DistributedFrontendTransport)
    task = client.queue_with_progress(work_prompt(value=3, seconds=0.2, steps=4, preview=True))
    notifications = [notification async for notification in task.progress()]
    result = await task.get()

    events = [notification.event for notification in notifications]
    assert events[0] == "execution_start" and events[-1] == "executing"
    assert [n.data["value"] for n in notifications if n.event == "progress"] == [1, 2, 3, 4]
    previews = [n.data["image"] for n in notifications if n.event == "preview_image"]
    assert len(previews) == 4
    image_format, image, _ = previews[0]
    assert image_format == "JPEG" and max(image.size) == 32  # resized on the worker, as asked
    assert "execution_success" in events
    assert result.status == "success"
    saved = result.outputs["2"]["images"][0]
    assert Path(saved["abs_path"]).is_file() and Path(saved["abs_path"]).parent == base_dir / "output"
    # The history of the frontend holds it, as in-process.
    assert result.prompt_id in client.history.get_history()


async def test_errors_and_interrupts_of_remote_prompts(client: Comfy, base_dir: Path):
    failing = {"1": {"class_type": "DistFail", "inputs": {"value": 1, "kind": "ValueError"}},
               "2": {"class_type": "DistOutput", "inputs": {"value": ["1", 0], "filename_prefix": "Fail"}}}
    with pytest.raises(PromptExecutionError) as failure:
        await client.queue_prompt(failing)
    assert failure.value.payload["exception_type"] == "ValueError"
    assert failure.value.payload["node_id"] == "1"

    task = client.queue_with_progress(work_prompt(value=1, seconds=30, steps=300))
    await asyncio.to_thread(wait_for_run, base_dir, task.prompt_id, "start")
    client.interrupt(task.prompt_id)
    with pytest.raises(PromptInterruptedError):
        await asyncio.wait_for(task.get(), 20)


async def test_client_routes_are_bound_while_used_and_unbound_when_idle(client: Comfy, cluster: Cluster,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import aio_pika
    from aio_pika.exceptions import PublishError

    import comfyui_distributed.frontend

    monkeypatch.setattr(comfyui_distributed.frontend, "IDLE_ROUTE_S", 1.0)
    transport = client.runtime.transport
    route = transport.topology.route("client-1")

    async def routable() -> bool:
        connection = await aio_pika.connect(cluster.uri)
        try:
            channel = await connection.channel(on_return_raises=True)
            exchange = await channel.get_exchange(transport.topology.progress_exchange)
            try:
                await exchange.publish(aio_pika.Message(b"{}", type="probe"), routing_key=route, mandatory=True)
            except PublishError:
                return False
            return True
        finally:
            await connection.close()

    assert not await routable()
    task = client.queue_with_progress(work_prompt(value=1, seconds=0.1, steps=2), client_id="client-1")
    assert [n.data["value"] async for n in task.progress() if n.event == "progress"] == [1, 2]
    await task.get()
    assert await routable()  # kept a while for the client's next prompt
    deadline = asyncio.get_running_loop().time() + 10
    while await routable():
        assert asyncio.get_running_loop().time() < deadline, "the idle route was never unbound"
        await asyncio.sleep(0.5)
    # The client's next prompt binds it again, and its events arrive.
    task = client.queue_with_progress(work_prompt(value=2, seconds=0.1, steps=2), client_id="client-1")
    assert [n.data["value"] async for n in task.progress() if n.event == "progress"] == [1, 2]
