"""The jobs API, cancelling and interrupting, and many clients queueing at once."""
from __future__ import annotations

import asyncio

import aiohttp

from conftest import connect, save_prompt, slow_prompt, wait_for_history

JOB_KEYS = {"id", "status", "create_time", "priority", "outputs_count", "previewable_outputs_count"}


async def queue(http, prompt, **body) -> str:
    async with http.post("/api/prompt", json={"prompt": prompt, **body}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["prompt_id"]


async def jobs(http, **params) -> dict:
    async with http.get("/api/jobs", params=params) as response:
        assert response.status == 200
        return await response.json()


async def test_jobs_list_detail_and_filters(server, http):
    workflow = {"extra_pnginfo": {"workflow": {"id": "wf-7", "nodes": []}}}
    done = await queue(http, save_prompt(5), extra_data=workflow)
    await wait_for_history(http, done)
    running = await queue(http, slow_prompt(3.0))
    pending = await queue(http, save_prompt(6))
    events = await connect(http, server)
    await asyncio.sleep(0.3)

    active = await jobs(http, status="in_progress,pending", limit="200", offset="0")
    assert [(job["id"], job["status"]) for job in active["jobs"]] == [(pending, "pending"), (running, "in_progress")]
    assert active["pagination"] == {"offset": 0, "limit": 200, "total": 2, "has_more": False}
    for job in active["jobs"]:
        assert set(job) >= JOB_KEYS and isinstance(job["create_time"], int) and job["create_time"] > 0

    finished = await jobs(http, status="completed,failed,cancelled", limit="200", offset="0")
    [job] = finished["jobs"]
    assert job["id"] == done and job["status"] == "completed" and job["workflow_id"] == "wf-7"
    assert job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "2" and job["preview_output"]["mediaType"] == "images"
    assert job["execution_end_time"] >= job["execution_start_time"] >= job["create_time"]

    detail = await (await http.get(f"/api/jobs/{done}")).json()
    assert detail["outputs"]["2"]["images"][0]["filename"].startswith("ServerTest")
    assert detail["workflow"]["prompt"] == save_prompt(5)
    assert detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-7"
    assert detail["execution_status"]["status_str"] == "success"
    async with http.get(f"/api/jobs/{done}/assets") as response:
        assets = await response.json()
    assert assets["assets"][0]["name"] == detail["outputs"]["2"]["images"][0]["filename"]
    assert (await (await http.get(f"/api/jobs/{pending}")).json())["status"] == "pending"
    async with http.get("/api/jobs/unknown") as response:
        assert response.status == 404 and await response.json() == {"error": "Job not found"}

    page = await jobs(http, limit="1", sort_order="asc")
    assert page["jobs"][0]["id"] == done and page["pagination"]["has_more"] is True
    assert page["pagination"]["total"] == 3
    assert [job["id"] for job in (await jobs(http, workflow_id="wf-7"))["jobs"]] == [done]
    for bad in ({"status": "exploded"}, {"limit": "0"}, {"limit": "x"}, {"offset": "y"}, {"sort_by": "name"},
                {"sort_order": "sideways"}):
        async with http.get("/api/jobs", params=bad) as response:
            assert response.status == 400 and "error" in await response.json(), bad

    # Cancelling: the pending one leaves the queue, the running one is interrupted.
    async with http.post(f"/api/jobs/{pending}/cancel") as response:
        assert response.status == 200
    async with http.post("/api/jobs/cancel", json={"job_ids": [running, "unknown"]}) as response:
        assert await response.json() == {"cancelled": [running]}
    await wait_for_history(http, running)
    assert (await (await http.get(f"/api/jobs/{running}")).json())["status"] == "cancelled"
    async with http.get(f"/api/jobs/{pending}") as response:
        assert response.status == 404
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "execution_interrupted")
    async with http.post("/api/jobs/cancel", json={"job_ids": []}) as response:
        assert response.status == 400
    async with http.post(f"/api/jobs/{done}/cancel") as response:
        assert await response.json() == {"cancelled": []}
    await events.close()


async def test_interrupt_stops_only_the_running_prompt(server, http):
    events = await connect(http, server, client_id="c1")
    first = await queue(http, slow_prompt(5.0, value=1), client_id="c1")
    second = await queue(http, save_prompt(2), client_id="c1")
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "executing"
                          and m["data"]["prompt_id"] == first and m["data"]["node"] == "1")
    # An id that is not running interrupts nothing.
    async with http.post("/api/interrupt", json={"prompt_id": second}) as response:
        assert response.status == 200
    await asyncio.sleep(0.2)
    assert not events.json("execution_interrupted")
    async with http.post("/api/interrupt", json={"prompt_id": first}) as response:
        assert response.status == 200
    interrupted = await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "execution_interrupted")
    assert interrupted["data"]["prompt_id"] == first and interrupted["data"]["node_id"] == "1"
    assert (await wait_for_history(http, first))["status"]["status_str"] == "error"
    assert (await wait_for_history(http, second))["status"]["status_str"] == "success"

    # With no body, whatever runs now is interrupted.
    third = await queue(http, slow_prompt(5.0, value=3), client_id="c1")
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "executing"
                          and m["data"]["prompt_id"] == third)
    async with http.post("/interrupt") as response:
        assert response.status == 200
    assert (await wait_for_history(http, third))["status"]["status_str"] == "error"
    await events.close()


async def test_queue_delete_and_clear(server, http):
    blocker = await queue(http, slow_prompt(1.0))
    waiting = [await queue(http, save_prompt(value)) for value in range(3)]
    async with http.post("/api/queue", json={"delete": [waiting[0]]}) as response:
        assert response.status == 200
    pending = [item[1] for item in (await (await http.get("/queue")).json())["queue_pending"]]
    assert pending == waiting[1:]
    async with http.post("/api/queue", json={"clear": True}) as response:
        assert response.status == 200
    assert (await (await http.get("/api/queue")).json())["queue_pending"] == []
    await wait_for_history(http, blocker)
    async with http.post("/api/history", json={"delete": [blocker]}) as response:
        assert response.status == 200
    assert await (await http.get("/api/history")).json() == {}
    async with http.post("/api/free", json={"unload_models": True, "free_memory": True}) as response:
        assert response.status == 200
    for path in ("/api/queue", "/api/history"):
        async with http.post(path, json={"delete": 5}) as response:
            assert response.status == 400 and "list" in (await response.json())["error"]


async def test_client_that_disconnects_mid_run_does_not_disturb_others(server, http):
    watcher = await connect(http, server, client_id="watcher")
    async with aiohttp.ClientSession(server.url) as other:
        leaver = await connect(other, server, client_id="leaver")
        gone = await queue(http, slow_prompt(0.6), client_id="leaver")
        await leaver.wait_for(lambda m: isinstance(m, dict) and m["type"] == "progress")
        await leaver.close()
    mine = await queue(http, save_prompt(9), client_id="watcher")
    assert (await wait_for_history(http, gone))["status"]["status_str"] == "success"
    await watcher.wait_for(lambda m: isinstance(m, dict) and m["type"] == "execution_success"
                           and m["data"]["prompt_id"] == mine)
    assert all(m["data"].get("prompt_id") != gone for m in watcher.json() if m["type"] != "status")
    await watcher.close()


async def test_hundred_prompts_from_four_clients(server, http):
    async def client(number: int) -> tuple[list[str], list[dict]]:
        async with aiohttp.ClientSession(server.url) as session:
            events = await connect(session, server, client_id=f"client-{number}")
            ids = []
            for index in range(25):
                async with session.post("/api/prompt", json={
                        "prompt": save_prompt(number * 100 + index, f"c{number}"),
                        "client_id": f"client-{number}"}) as response:
                    ids.append((await response.json())["prompt_id"])
            for prompt_id in ids:
                await events.wait_for(lambda m, p=prompt_id: isinstance(m, dict)
                                      and m["type"] == "execution_success" and m["data"]["prompt_id"] == p, 60)
            await events.close()
            return ids, events.json()

    results = await asyncio.gather(*(client(number) for number in range(4)))
    all_ids = [prompt_id for ids, _messages in results for prompt_id in ids]
    assert len(set(all_ids)) == 100
    history = await (await http.get("/api/history")).json()
    assert set(all_ids) <= set(history)
    assert all(history[prompt_id]["status"]["status_str"] == "success" for prompt_id in all_ids)
    for number, (ids, messages) in enumerate(results):
        seen = {m["data"]["prompt_id"] for m in messages if m["type"] == "executed"}
        assert seen == set(ids)  # each client got exactly its own prompts' outputs
    assert len(list((server.base / "output").glob("c*_*.png"))) == 100
    finished = await jobs(http, status="completed")
    assert finished["pagination"]["total"] == 100
