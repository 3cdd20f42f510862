"""The commands as operators run them: ``comfyui-worker``, ``comfyui --distributed-queue-worker``, and a
frontend that is its own worker."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import aiohttp

from distributed_helpers import (COMFYUI, COMFYUI_WORKER, WORKER_READY, Cluster, spawn, post_prompt,
                                 wait_for_history, work_prompt)


def test_worker_help_and_plugin_listing():
    help_text = subprocess.run([COMFYUI_WORKER, "--help"], capture_output=True, text=True, timeout=60).stdout
    for option in ("--distributed-queue-connection-uri", "--distributed-queue-name", "--executor-factory",
                   "--panic-when", "--cwd"):
        assert option in help_text
    listing = subprocess.run([COMFYUI, "--list-plugins"], capture_output=True, text=True, timeout=60).stdout
    assert any(line.split("\t")[:2] == ["distributed", "comfyui-distributed 0.1.0"] for line in listing.splitlines())


def test_worker_waits_for_an_absent_broker_and_stops_on_sigterm(tmp_path: Path):
    worker = subprocess.Popen([COMFYUI_WORKER, "--cwd", str(tmp_path), "--distributed-queue-connection-uri",
                               "amqp://guest:guest@127.0.0.1:1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert worker.poll() is None, "the worker gave up instead of waiting for the broker"
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0
    assert "Connect call failed" in output
    assert "guest:guest@" not in output  # the password stays out of the logs


def test_disabled_plugin_means_no_worker(tmp_path: Path):
    result = subprocess.run([COMFYUI_WORKER, "--cwd", str(tmp_path), "--disable-plugins", "distributed"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "distributed plugin, which is disabled" in result.stderr


async def test_comfyui_worker_option_and_a_frontend_that_works_too(cluster: Cluster, base_dir: Path):
    # `comfyui --distributed-queue-worker` is a worker, like comfyui-worker.
    running, _ = spawn([COMFYUI, "--cwd", str(base_dir), "--distributed-queue-worker", *cluster.queue_options()],
                        WORKER_READY)
    cluster.started.append(running)
    # A frontend that is also a worker (and the only other one) runs prompts itself too.
    frontend = cluster.frontend(base_dir, "--distributed-queue-worker")
    frontend.wait_for_line("Worker .* takes prompts from queue")
    async with aiohttp.ClientSession(frontend.url) as session:
        ids = [await post_prompt(session, work_prompt(value=index, seconds=1.0, steps=2)) for index in range(2)]
        entries = [await wait_for_history(session, prompt_id) for prompt_id in ids]
    assert {entry["outputs"]["2"]["pid"][0] for entry in entries} == {running.pid, frontend.pid}
