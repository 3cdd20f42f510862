"""A frontend and workers as separate processes on a real RabbitMQ: prompts, progress, failures, restarts."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from comfyui_distributed.protocol import PROMPT, REASON_HEADER, RESULT, PromptJob
from distributed_helpers import (Cluster, connect_ws, make_base, post_prompt, runs, wait_for_history, wait_for_run,
                      work_prompt)


def progress_of(events, prompt_id: str) -> list[int]:
    return [m["data"]["value"] for m in events.json("progress") if m["data"]["prompt_id"] == prompt_id]


async def test_twenty_prompts_from_two_clients(cluster: Cluster, base_dir: Path, tmp_path: Path):
    frontend = cluster.frontend(base_dir)
    first = cluster.worker(base_dir)
    # The second worker has a working directory of its own; only inputs and outputs are shared.
    second = cluster.worker(make_base(tmp_path / "elsewhere"), "--output-directory", str(base_dir / "output"),
                            "--input-directory", str(base_dir / "input"))
    async with aiohttp.ClientSession(frontend.url) as session:
        clients = {name: await connect_ws(session, frontend, name) for name in ("alice", "bob")}
        submitted: dict[str, list[str]] = {name: [] for name in clients}
        for index in range(10):
            for name in clients:
                prompt = work_prompt(value=index, seconds=0.05, steps=2, preview=index == 0, prefix=name)
                submitted[name].append(await post_prompt(session, prompt, client_id=name))
        every = [prompt_id for ids in submitted.values() for prompt_id in ids]
        entries = {prompt_id: await wait_for_history(session, prompt_id) for prompt_id in every}

        async with session.get("/history") as response:
            history = await response.json()
        assert sorted(history) == sorted(every)
        assert all(entry["status"]["status_str"] == "success" for entry in entries.values())
        assert {entry["outputs"]["2"]["pid"][0] for entry in entries.values()} == {first.pid, second.pid}
        async with session.get("/queue") as response:
            assert await response.json() == {"queue_running": [], "queue_pending": []}

        for name, events in clients.items():
            own = set(submitted[name])
            await events.wait_until(lambda _: own <= set(events.finished()))
            seen = {m["data"]["prompt_id"] for m in events.json() if isinstance(m.get("data"), dict)
                    and "prompt_id" in m["data"]}
            assert seen == own, f"{name} saw events of prompts not its own"
            assert sorted(m["data"]["prompt_id"] for m in events.json("execution_success")) == sorted(own)
            assert sorted(events.finished()) == sorted(own)
            for prompt_id in own:
                assert progress_of(events, prompt_id) == [1, 2]
            # The first prompt of each client sent previews: binary frames reached that client only.
            assert events.binary()
            await events.close()

        # A file the second worker wrote from its own --cwd is served by the frontend.
        second_outputs = [entry["outputs"]["2"]["images"][0] for entry in entries.values()
                          if entry["outputs"]["2"]["pid"][0] == second.pid]
        image = second_outputs[0]
        async with session.get("/view", params={"filename": image["filename"], "type": "output"}) as response:
            assert response.status == 200
            assert (await response.read()).startswith(b"\x89PNG")


async def test_killed_worker_prompt_completes_once_on_the_other(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    workers = {worker.pid: worker for worker in (cluster.worker(base_dir), cluster.worker(base_dir))}
    async with aiohttp.ClientSession(frontend.url) as session:
        events = await connect_ws(session, frontend, "watcher")
        prompt_id = await post_prompt(session, work_prompt(value=42, seconds=3, steps=30), client_id="watcher")
        victim = await asyncio.to_thread(wait_for_run, base_dir, prompt_id, "start")
        await events.wait_until(lambda _: progress_of(events, prompt_id))
        os.kill(victim, signal.SIGKILL)
        entry = await wait_for_history(session, prompt_id)
        await events.wait_until(lambda _: prompt_id in events.finished())

        survivor = next(pid for pid in workers if pid != victim)
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"]["2"]["pid"] == [survivor]
        assert entry["outputs"]["2"]["value"] == [42]
        logged = [(kind, pid) for kind, logged_id, pid in runs(base_dir) if logged_id == prompt_id]
        assert logged == [("start", victim), ("start", survivor), ("end", survivor)]
        # The client saw one end of the prompt, and one success.
        assert events.finished() == [prompt_id]
        assert [m["data"]["prompt_id"] for m in events.json("execution_success")] == [prompt_id]
        async with session.get("/history") as response:
            assert list(await response.json()) == [prompt_id]
        await events.close()
    assert workers[victim].process.wait(5) == -signal.SIGKILL


async def read_queue(channel: aio_pika.abc.AbstractChannel, name: str, count: int, timeout: float = 30) -> list:
    queue = await channel.get_queue(name, ensure=False)
    found = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
        else:
            found.append(message)
    return found


async def test_malformed_messages_are_dead_lettered_and_workers_keep_serving(cluster: Cluster, base_dir: Path,
                                                                              queue_name: str):
    frontend = cluster.frontend(base_dir)
    workers = [cluster.worker(base_dir), cluster.worker(base_dir)]
    connection = await aio_pika.connect(cluster.uri)
    try:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        invalid = PromptJob("invalid-1", {"1": {"class_type": "NoSuchNode", "inputs": {}}}, {}, ["1"], "test",
                            f"{queue_name}.test").encode()
        sent = [
            aio_pika.Message(b"\x00 this is not JSON", type=PROMPT),
            aio_pika.Message(json.dumps({"prompt_id": "missing-1", "prompt": {}}).encode(), type=PROMPT,
                             reply_to=replies.name, correlation_id="missing-1"),
            aio_pika.Message(invalid.body, type=PROMPT, reply_to=replies.name, correlation_id="invalid-1"),
            # As if five workers had died running it: the quorum queue counts deliveries in this header.
            aio_pika.Message(PromptJob("crashing-1", work_prompt(), {}, ["2"], "test", "-").encode().body,
                             type=PROMPT, reply_to=replies.name, correlation_id="crashing-1",
                             headers={"x-delivery-count": 5}),
        ]
        for message in sent:
            await channel.default_exchange.publish(message, routing_key=queue_name)

        dead = await read_queue(channel, f"{queue_name}.dead", 4)
        reasons = sorted(message.headers[REASON_HEADER] for message in dead)
        assert len(reasons) == 4, reasons
        assert any("not JSON" in reason for reason in reasons)
        assert any("outputs_to_execute" in reason for reason in reasons)
        assert any("NoSuchNode" in reason for reason in reasons)
        assert any("delivered 5 times before" in reason for reason in reasons)
        assert sorted(message.body for message in dead) == sorted(message.body for message in sent)

        # Senders that can be answered are told, with ComfyUI's error shape.
        replied = await read_queue(channel, replies.name, 3)
        assert {message.type for message in replied} == {RESULT}
        answers = {message.correlation_id: json.loads(message.body) for message in replied}
        assert set(answers) == {"missing-1", "invalid-1", "crashing-1"}
        assert answers["invalid-1"]["status"] == "error"
        assert answers["invalid-1"]["error"]["exception_type"] == "comfy.graph.PromptValidationError"
        assert "NoSuchNode" in answers["invalid-1"]["error"]["exception_message"]
        assert answers["missing-1"]["error"]["exception_message"].startswith("the prompt message has no valid")
        assert answers["missing-1"]["error"]["exception_type"] == "comfyui_distributed.protocol.MalformedMessage"
        assert answers["crashing-1"]["error"]["exception_type"] == "comfyui_distributed.protocol.AbandonedPromptError"
    finally:
        await connection.close()

    # Both workers still serve: two slow prompts at once run on both.
    async with aiohttp.ClientSession(frontend.url) as session:
        ids = [await post_prompt(session, work_prompt(value=index, seconds=1.0, steps=2)) for index in range(2)]
        entries = [await wait_for_history(session, prompt_id) for prompt_id in ids]
    assert {entry["outputs"]["2"]["pid"][0] for entry in entries} == {worker.pid for worker in workers}
    assert all(worker.process.poll() is None for worker in workers)


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def restartable_broker(broker: str) -> None:
    """The local broker, if this test may stop and start it (rabbitmqctl works here)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("restarting the broker needs rabbitmqctl on this machine")
    if rabbitmqctl("status").returncode != 0:
        pytest.skip("rabbitmqctl cannot control the broker here (not root, or a remote broker)")


async def test_broker_restart_while_idle(cluster: Cluster, base_dir: Path, restartable_broker: None):
    frontend = cluster.frontend(base_dir)
    workers = [cluster.worker(base_dir), cluster.worker(base_dir)]
    async with aiohttp.ClientSession(frontend.url) as session:
        before = await wait_for_history(session, await post_prompt(session, work_prompt(value=1)))
        assert before["status"]["status_str"] == "success"
        try:
            assert rabbitmqctl("stop_app").returncode == 0
        finally:
            started = rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        assert started.returncode == 0, started.stderr
        # Submitted while the connections may still be down: published once the frontend is back.
        ids = [await post_prompt(session, work_prompt(value=index, seconds=1.0, steps=2)) for index in range(2)]
        entries = [await wait_for_history(session, prompt_id, timeout=90) for prompt_id in ids]
    assert all(entry["status"]["status_str"] == "success" for entry in entries)
    # Both workers reconnected: the two prompts ran at once, one on each.
    assert {entry["outputs"]["2"]["pid"][0] for entry in entries} == {worker.pid for worker in workers}
    # Each ran exactly once.
    assert sorted(prompt_id for kind, prompt_id, _ in runs(base_dir) if kind == "end") == sorted(
        [before["prompt"][1], *ids])


async def test_broker_restart_during_a_prompt_still_finishes_it_once(cluster: Cluster, base_dir: Path,
                                                                    restartable_broker: None):
    frontend = cluster.frontend(base_dir)
    cluster.worker(base_dir)
    cluster.worker(base_dir)
    async with aiohttp.ClientSession(frontend.url) as session:
        events = await connect_ws(session, frontend, "me")
        prompt_id = await post_prompt(session, work_prompt(value=9, seconds=4, steps=40), client_id="me")
        await asyncio.to_thread(wait_for_run, base_dir, prompt_id, "start")
        try:
            assert rabbitmqctl("stop_app").returncode == 0
        finally:
            assert rabbitmqctl("start_app").returncode == 0
            rabbitmqctl("await_startup")
        entry = await wait_for_history(session, prompt_id, timeout=90)
        await events.wait_until(lambda _: prompt_id in events.finished())
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"]["2"]["value"] == [9]
        async with session.get("/history") as response:
            assert list(await response.json()) == [prompt_id]
        # Whether its worker kept it or another took it over, the client saw it end once, successfully.
        await asyncio.sleep(1)
        assert events.finished() == [prompt_id]
        assert [m["type"] for m in events.json() if m["type"].startswith("execution_")
                and m["type"] not in ("execution_start", "execution_cached")] == ["execution_success"]
        await events.close()


async def test_queue_delete_and_interrupt_reach_the_workers(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    cluster.worker(base_dir)
    async with aiohttp.ClientSession(frontend.url) as session:
        events = await connect_ws(session, frontend, "me")
        first = await post_prompt(session, work_prompt(value=1, seconds=2, steps=20), client_id="me")
        dropped = await post_prompt(session, work_prompt(value=2), client_id="me")
        last = await post_prompt(session, work_prompt(value=3), client_id="me")
        await asyncio.to_thread(wait_for_run, base_dir, first, "start")
        await events.wait_until(lambda _: progress_of(events, first))
        async with session.get("/queue") as response:
            queue = await response.json()
        assert [item[1] for item in queue["queue_running"]] == [first]
        assert [item[1] for item in queue["queue_pending"]] == [dropped, last]

        async with session.post("/queue", json={"delete": [dropped]}) as response:
            assert response.status == 200
        assert (await wait_for_history(session, last))["status"]["status_str"] == "success"
        async with session.get("/history") as response:
            assert set(await response.json()) == {first, last}
        assert dropped not in {prompt_id for _, prompt_id, _ in runs(base_dir)}

        slow = await post_prompt(session, work_prompt(value=4, seconds=30, steps=300), client_id="me")
        await events.wait_until(lambda _: progress_of(events, slow))
        async with session.post("/interrupt", json={"prompt_id": slow}) as response:
            assert response.status == 200
        entry = await wait_for_history(session, slow, timeout=20)
        assert entry["status"]["status_str"] == "error"
        assert [message[0] for message in entry["status"]["messages"]][-1] == "execution_interrupted"
        await events.wait_until(lambda _: slow in events.finished())
        assert [m["data"]["prompt_id"] for m in events.json("execution_interrupted")] == [slow]
        await events.close()


async def test_panic_when_exits_the_worker_after_reporting(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    panicking = cluster.worker(base_dir, "--panic-when", "MemoryError")
    failing = {"1": {"class_type": "DistFail", "inputs": {"value": 1, "kind": "MemoryError"}},
               "2": {"class_type": "DistOutput", "inputs": {"value": ["1", 0], "filename_prefix": "Fail"}}}
    async with aiohttp.ClientSession(frontend.url) as session:
        entry = await wait_for_history(session, await post_prompt(session, failing))
        assert entry["status"]["status_str"] == "error"
        error = dict(entry["status"]["messages"])["execution_error"]
        assert error["exception_type"] == "MemoryError"
        assert await asyncio.to_thread(panicking.process.wait, 20) == 1
        assert "named in --panic-when" in panicking.text()
        # Its supervisor would start it again; a new worker picks up the queue.
        cluster.worker(base_dir, "--panic-when", "MemoryError")
        entry = await wait_for_history(session, await post_prompt(session, work_prompt(value=5)))
        assert entry["status"]["status_str"] == "success"


async def test_rest_api_waits_for_the_remote_result(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    worker = cluster.worker(base_dir)
    async with aiohttp.ClientSession(frontend.url) as session:
        async with session.post("/api/v1/prompts", json={"prompt": work_prompt(value=77)},
                                headers={"Accept": "application/json"}) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert answer["outputs"]["2"]["value"] == [77] and answer["outputs"]["2"]["pid"] == [worker.pid]
        async with session.get(answer["urls"][0]) as response:
            assert (await response.read()).startswith(b"\x89PNG")
        async with session.post("/api/v1/prompts", json={"prompt": work_prompt(value=78)},
                                headers={"Accept": "image/png"}) as response:
            assert response.status == 200 and response.content_type == "image/png"
            assert (await response.read()).startswith(b"\x89PNG")
        failing = {"1": {"class_type": "DistFail", "inputs": {"value": 1, "kind": "ValueError"}},
                   "2": {"class_type": "DistOutput", "inputs": {"value": ["1", 0], "filename_prefix": "Fail"}}}
        async with session.post("/api/v1/prompts", json={"prompt": failing},
                                headers={"Accept": "application/json"}) as response:
            assert response.status == 500
            assert (await response.json())["error_details"]["exception_type"] == "ValueError"


async def test_two_frontends_share_the_workers_and_keep_their_own_prompts(cluster: Cluster, base_dir: Path):
    frontends = [cluster.frontend(base_dir), cluster.frontend(base_dir)]
    workers = [cluster.worker(base_dir), cluster.worker(base_dir)]
    sessions = [aiohttp.ClientSession(frontend.url) for frontend in frontends]
    try:
        # The same client id on both frontends: each still gets only the events of its own prompts.
        sockets = [await connect_ws(session, frontend, "same-client") for session, frontend in zip(sessions, frontends)]
        submitted = [[await post_prompt(session, work_prompt(value=10 * index + count, seconds=0.3, steps=2),
                                        client_id="same-client") for count in range(3)]
                     for index, session in enumerate(sessions)]
        for session, ids, events in zip(sessions, submitted, sockets):
            entries = [await wait_for_history(session, prompt_id) for prompt_id in ids]
            assert all(entry["status"]["status_str"] == "success" for entry in entries)
            async with session.get("/history") as response:
                assert sorted(await response.json()) == sorted(ids)
            await events.wait_until(lambda _: set(ids) <= set(events.finished()))
            assert {m["data"]["prompt_id"] for m in events.json() if "prompt_id" in (m.get("data") or {})} == set(ids)
            await events.close()
        ran_on = {entry_pid for _, _, entry_pid in runs(base_dir)}
        assert ran_on == {worker.pid for worker in workers}
    finally:
        for session in sessions:
            await session.close()
