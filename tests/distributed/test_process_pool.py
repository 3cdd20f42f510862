"""``--executor-factory ProcessPoolExecutor``: each prompt runs in a child process of the worker."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from distributed_helpers import Cluster, connect_ws, post_prompt, wait_for_history, wait_for_run, work_prompt


async def test_prompts_run_in_child_processes_with_progress(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    worker = cluster.worker(base_dir, "--executor-factory", "ProcessPoolExecutor")
    async with aiohttp.ClientSession(frontend.url) as session:
        events = await connect_ws(session, frontend, "me")
        ids = [await post_prompt(session, work_prompt(value=index, seconds=0.1, steps=3, preview=True),
                                 client_id="me") for index in range(2)]
        entries = [await wait_for_history(session, prompt_id) for prompt_id in ids]
        await events.wait_until(lambda _: set(ids) <= set(events.finished()))

        children = [entry["outputs"]["2"]["pid"][0] for entry in entries]
        assert all(entry["outputs"]["2"]["ppid"] == [worker.pid] for entry in entries)
        # A fresh process for each prompt, none of them the worker itself.
        assert len(set(children)) == 2 and worker.pid not in children
        assert [entry["outputs"]["2"]["value"] for entry in entries] == [[0], [1]]
        for prompt_id in ids:
            kinds = [m["type"] for m in events.json() if m.get("data", {}).get("prompt_id") == prompt_id
                     and m["type"] in ("execution_start", "progress", "executed", "execution_success")]
            assert kinds == ["execution_start", "progress", "progress", "progress", "executed", "execution_success"]
        assert len(events.binary()) == 6  # three previews per prompt
        await events.close()


async def test_interrupting_a_prompt_in_a_child_process(cluster: Cluster, base_dir: Path):
    frontend = cluster.frontend(base_dir)
    cluster.worker(base_dir, "--executor-factory", "ProcessPoolExecutor")
    async with aiohttp.ClientSession(frontend.url) as session:
        prompt_id = await post_prompt(session, work_prompt(value=1, seconds=30, steps=300))
        await asyncio.to_thread(wait_for_run, base_dir, prompt_id, "start")
        async with session.post("/interrupt", json={}) as response:
            assert response.status == 200
        entry = await wait_for_history(session, prompt_id, timeout=20)
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        # The worker goes on with the next prompt in the next child.
        after = await wait_for_history(session, await post_prompt(session, work_prompt(value=2)))
        assert after["status"]["status_str"] == "success"
