"""Helpers of the distributed tests: frontends and workers as real processes, websocket clients,
and the run log the test pack writes."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import aiohttp
from websocket_events import Events

AMQP_URI = os.environ.get("COMFYUI_TEST_AMQP_URI", "amqp://guest:guest@127.0.0.1")
PACK = Path(__file__).parent / "distributed_test_pack"
BIN = Path(sys.executable).parent
COMFYUI = str(BIN / "comfyui")
COMFYUI_WORKER = str(BIN / "comfyui-worker")
URL_LINE = re.compile(r"To see the GUI go to: (http://\S+)")
WORKER_READY = re.compile(r"Worker (\S+) takes prompts from queue")
TIMEOUT = 60


async def delete_layout(uri: str, name: str) -> None:
    """Remove what a test's frontends and workers declared under ``name``."""
    import aio_pika

    connection = await aio_pika.connect(uri)
    try:
        for queue in (name, f"{name}.dead"):
            channel = await connection.channel()
            await channel.queue_delete(queue)
        for exchange in (f"{name}.progress", f"{name}.control"):
            channel = await connection.channel()
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def make_base(path: Path) -> Path:
    """A ComfyUI base directory holding the test pack in custom_nodes/."""
    shutil.copytree(PACK, path / "custom_nodes" / "distributed_test_pack")
    for name in ("input", "output", "temp", "user"):
        (path / name).mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Process:
    """A running frontend or worker, its output collected as it comes."""
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    url: str = ""
    worker_id: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = list(self.lines)
            for line in lines[seen:]:
                if re.search(pattern, line):
                    return line
            seen = len(lines)
            time.sleep(0.05)
        raise TimeoutError(f"no line matching {pattern!r} in {timeout}s:\n{self.text()}")


def spawn(command: list[str], ready: re.Pattern, timeout: float = TIMEOUT) -> tuple[Process, re.Match]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    running = Process(popen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = popen.stdout.readline()
        if not line:
            break
        running.lines.append(line)
        match = ready.search(line)
        if match:
            # Keep reading, so that a full pipe never blocks the process's logging.
            threading.Thread(target=lambda: running.lines.extend(popen.stdout), daemon=True).start()
            return running, match
    popen.kill()
    raise RuntimeError(f"{command[0]} did not start:\n{running.text()}")


class Cluster:
    """Starts frontends and workers for one test, all on its queue name; stops them afterwards."""

    def __init__(self, uri: str, queue_name: str):
        self.uri = uri
        self.queue_name = queue_name
        self.started: list[Process] = []

    def queue_options(self) -> list[str]:
        return ["--distributed-queue-connection-uri", self.uri, "--distributed-queue-name", self.queue_name]

    def frontend(self, base: Path, *args: str) -> Process:
        running, match = spawn([COMFYUI, "--cwd", str(base), "--port", "0", "--distributed-queue-frontend",
                                 *self.queue_options(), *args], URL_LINE)
        running.url = match.group(1).replace("localhost", "127.0.0.1")
        self.started.append(running)
        # The server prints its address before the frontend's connection is up; wait for both.
        running.wait_for_line("Distributed frontend .* sends prompts")
        return running

    def worker(self, base: Path, *args: str) -> Process:
        running, match = spawn([COMFYUI_WORKER, "--cwd", str(base), *self.queue_options(), *args], WORKER_READY)
        running.worker_id = match.group(1)
        self.started.append(running)
        return running

    def stop(self) -> None:
        for running in self.started:
            if running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        for running in self.started:
            try:
                running.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()


async def connect_ws(session: aiohttp.ClientSession, frontend: Process, client_id: str) -> Events:
    url = frontend.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    events = Events(await session.ws_connect(url), TIMEOUT)
    await events.wait_until(lambda messages: any(isinstance(m, dict) and m["type"] == "status" for m in messages))
    return events


def work_prompt(value: int = 1, seconds: float = 0.05, steps: int = 2, preview: bool = False,
                prefix: str = "Dist") -> dict:
    """DistWork into DistOutput: runs for ``seconds`` with progress, then saves an image."""
    return {"1": {"class_type": "DistWork", "inputs": {"value": value, "seconds": seconds, "steps": steps,
                                                        "preview": preview}},
            "2": {"class_type": "DistOutput", "inputs": {"value": ["1", 0], "filename_prefix": prefix}}}


async def post_prompt(session: aiohttp.ClientSession, prompt: dict, client_id: Optional[str] = None) -> str:
    body: dict[str, Any] = {"prompt": prompt}
    if client_id is not None:
        body["client_id"] = client_id
    async with session.post("/prompt", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
    return answer["prompt_id"]


async def wait_for_history(session: aiohttp.ClientSession, prompt_id: str, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"/history/{prompt_id}") as response:
            history = await response.json()
        if prompt_id in history:
            return history[prompt_id]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")


def runs(base: Path) -> list[tuple[str, str, int]]:
    """(start|end, prompt id, process id) for each DistWork run, from the pack's log in the output folder."""
    path = base / "output" / "dist_runs.log"
    if not path.exists():
        return []
    return [(kind, prompt_id, int(pid)) for kind, prompt_id, pid in
            (line.split() for line in path.read_text().splitlines() if line.strip())]


def wait_for_run(base: Path, prompt_id: str, kind: str = "start", timeout: float = TIMEOUT) -> int:
    """The process id that logged ``kind`` for ``prompt_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for logged_kind, logged_id, pid in runs(base):
            if logged_kind == kind and logged_id == prompt_id:
                return pid
        time.sleep(0.02)
    raise TimeoutError(f"prompt {prompt_id} did not log {kind!r} in {timeout}s")
