"""The message formats, names and settings on their own, and a frontend whose broker is not there."""
from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from PIL import Image

from comfy.cli_args_types import Configuration
from comfy.graph import ValidatedPrompt
from comfy.nodes.registry import NodeRegistry
from comfy.transport import Transport, TransportClosedError
from comfyui_distributed.connection import BackoffConnection, MAX_RETRY_S, redact
from comfyui_distributed.frontend import DistributedFrontendTransport, FrontendQueue
from comfyui_distributed.plugin import Settings
from comfyui_distributed.protocol import (PREVIEW, ControlMessage, MalformedMessage, PromptJob, PromptReply, Topology,
                                          decode_control, decode_event, decode_prompt, decode_reply, encode_event)


def test_names_and_routes():
    topology = Topology("render")
    assert (topology.work_queue, topology.dead_letters, topology.progress_exchange, topology.control_exchange) == (
        "render", "render.dead", "render.progress", "render.control")
    assert topology.route("0f6e-client_1") == "render.0f6e-client_1"
    # Dots, wildcards and very long ids would change what a topic binding matches: they are hashed.
    for awkward in ("a.b", "#", "user*1", "x" * 300):
        route = topology.route(awkward)
        assert route.startswith("render.h") and route.count(".") == 1 and len(route) < 60
        assert route == topology.route(awkward)
    assert topology.work_queue_arguments["x-queue-type"] == "quorum"
    assert topology.work_queue_arguments["x-dead-letter-routing-key"] == "render.dead"


def test_prompt_messages_round_trip_and_say_what_is_wrong():
    job = PromptJob("p1", {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c"}, ["1"], "f", "render.c", 3)
    decoded = decode_prompt(job.encode().body, "render.frontend.f", {"x-delivery-count": 2})
    assert (decoded.prompt_id, decoded.prompt, decoded.extra_data, decoded.outputs_to_execute, decoded.frontend,
            decoded.route, decoded.number) == ("p1", job.prompt, {"client_id": "c"}, ["1"], "f", "render.c", 3)
    assert decoded.reply_to == "render.frontend.f" and decoded.deliveries == 2

    body = json.loads(job.encode().body)
    cases = [(b"\xff\xfe", "not JSON"), (b"[1, 2]", "not a JSON object"),
             (json.dumps({**body, "prompt_id": ""}).encode(), "empty prompt_id"),
             (json.dumps({**body, "prompt": "text"}).encode(), "'prompt'"),
             (json.dumps({**body, "outputs_to_execute": [1]}).encode(), "outputs_to_execute"),
             (json.dumps({**body, "extra_data": []}).encode(), "extra_data")]
    for raw, reason in cases:
        with pytest.raises(MalformedMessage, match=reason):
            decode_prompt(raw, "somewhere", None)
    with pytest.raises(MalformedMessage, match="no reply_to"):
        decode_prompt(job.encode().body, None, None)


def test_results_and_control_messages():
    reply = PromptReply("p1", "interrupted", {"2": {"value": [1]}}, {}, {"node_id": "1"},
                        [["execution_interrupted", {"prompt_id": "p1"}]], "w1")
    assert decode_reply(reply.encode().body) == reply
    with pytest.raises(MalformedMessage, match="unknown status"):
        decode_reply(json.dumps({"prompt_id": "p1", "status": "done"}).encode())
    control = ControlMessage("drop", ["p1", "p2"], "f")
    assert decode_control(control.encode().body) == control
    with pytest.raises(MalformedMessage, match="prompt_ids"):
        decode_control(json.dumps({"action": "drop", "prompt_ids": "p1"}).encode())


def test_previews_travel_as_images_resized_on_the_worker():
    outgoing = encode_event("p1", "preview_image", {"prompt_id": "p1", "node": "3", "display_node": "3",
                                                     "image": ("PNG", Image.new("RGBA", (600, 300)), 64)})
    assert outgoing.type == PREVIEW and outgoing.content_type == "image/png"
    assert Image.open(io.BytesIO(outgoing.body)).size == (64, 32)
    event = decode_event(outgoing.type, outgoing.body, {**outgoing.headers, "x-comfyui-worker": "w1"})
    assert (event.prompt_id, event.event, event.worker) == ("p1", "preview_image", "w1")
    image_format, image, max_size = event.data["image"]
    assert (image_format, image.size, max_size, event.data["node"]) == ("PNG", (64, 32), None, "3")
    with pytest.raises(MalformedMessage, match="cannot be read"):
        decode_event(PREVIEW, b"not an image", {"prompt_id": "p1"})
    progress = encode_event("p1", "progress", {"value": 1, "max": 2, "prompt_id": "p1", "node": "3"})
    assert decode_event(progress.type, progress.body, {}).data == {"value": 1, "max": 2, "prompt_id": "p1", "node": "3"}


def test_settings_and_panic_names():
    settings = Settings.from_configuration({"panic_when": ["torch.cuda.OutOfMemoryError", "MemoryError"],
                                            "distributed_queue_name": None})
    assert settings.queue_name == "comfyui" and settings.connection_uri == "amqp://guest:guest@127.0.0.1"
    assert settings.panics_on("torch.cuda.OutOfMemoryError")
    assert settings.panics_on("MemoryError")
    assert not settings.panics_on("my.pack.OutOfMemoryError")  # a qualified name matches only itself
    assert not settings.panics_on("ValueError") and not settings.panics_on(None)
    assert redact("amqps://user:secret@broker:5671/vhost") == "amqps://user:***@broker:5671/vhost"
    assert redact("amqp://broker") == "amqp://broker"


async def test_reconnection_waits_grow_with_the_outage():
    connection = BackoffConnection("amqp://guest:guest@127.0.0.1:1/", reconnect_interval=0.5)
    connection._lost_at = None
    assert connection.reconnect_interval == 0.5
    connection._lost_at = time.monotonic() - 10
    assert 4.9 < connection.reconnect_interval < 5.2
    connection._lost_at = time.monotonic() - 1000
    assert connection.reconnect_interval == MAX_RETRY_S


def test_frontend_queue_reports_removed_prompts():
    removed: list[list[str]] = []
    queue = FrontendQueue(0, removed.append)
    for prompt_id in ("a", "b", "c"):
        queue.put(prompt_id, {}, {}, ["1"])
    assert queue.start("b") and not queue.start("b")
    assert [item[1] for item in queue.get_current_queue()[0]] == ["b"]
    assert queue.delete_queue_item("a") and not queue.delete_queue_item("b")
    queue.wipe_queue()
    assert removed == [["a"], ["c"]]
    assert queue.get_tasks_remaining() == 1


def test_frontend_without_a_broker_keeps_prompts_until_closed():
    configuration = Configuration({"distributed_queue_frontend": True, "distributed_queue_name": "nowhere",
                                   "distributed_queue_connection_uri": "amqp://guest:guest@127.0.0.1:1"})
    transport = DistributedFrontendTransport(NodeRegistry(), configuration)
    assert isinstance(transport, Transport)
    validated = ValidatedPrompt({"1": {"class_type": "X", "inputs": {}}}, ["1"])
    kept = transport.submit("kept", validated, {"client_id": "c"})
    removed = transport.submit("removed", validated)
    with pytest.raises(ValueError, match="already queued"):
        transport.submit("kept", validated)
    assert [item[1] for item in transport.queue.get_current_queue()[1]] == ["kept", "removed"]
    assert transport.delete("removed") and removed.cancelled()
    transport.interrupt("kept")  # nothing runs it: no effect, no error
    transport.close()
    with pytest.raises(TransportClosedError):
        kept.result(timeout=1)
    with pytest.raises(TransportClosedError):
        transport.submit("later", validated)


async def test_frontend_is_usable_from_a_running_event_loop():
    # The server and Comfy() call the transport from their own loops: it must not need theirs.
    configuration = Configuration({"distributed_queue_connection_uri": "amqp://guest:guest@127.0.0.1:1"})
    transport = await asyncio.to_thread(DistributedFrontendTransport, NodeRegistry(), configuration)
    future = transport.submit("p", ValidatedPrompt({}, ["1"]))
    await asyncio.to_thread(transport.close)
    with pytest.raises(TransportClosedError):
        await asyncio.wrap_future(future)
