"""Fixtures for the server tests: a base directory with a real custom node pack, and a running server.

The in-process server listens on a free loopback port; tests talk to it with a real aiohttp client
and websocket. ``comfyui`` subprocess tests use ``start_comfyui``.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional

import aiohttp
import pytest
from websocket_events import Events

PACK = Path(__file__).parent / "server_test_pack"
COMFYUI = str(Path(sys.executable).with_name("comfyui"))
URL_LINE = re.compile(r"To see the GUI go to: (http://\S+)")


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """A ComfyUI base directory holding the server test pack in custom_nodes/."""
    base = tmp_path / "base"
    shutil.copytree(PACK, base / "custom_nodes" / "server_test_pack")
    for name in ("input", "output", "temp", "user"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture
def server_args() -> list[str]:
    """Extra command-line options for the server; a test module overrides this fixture."""
    return []


@dataclass
class RunningServer:
    url: str
    runner: Any
    base: Path

    def ws_url(self, client_id: Optional[str] = None) -> str:
        url = self.url.replace("http://", "ws://") + "/ws"
        return f"{url}?clientId={client_id}" if client_id else url


@pytest.fixture
async def server(base_dir: Path, server_args: list[str]) -> AsyncIterator[RunningServer]:
    from comfy import cli_args
    from comfy.configuration import parse_configuration
    from comfy.plugins import create_plugin_manager, set_plugin_manager
    from comfyui_server.serve import ServerRunner

    pm = create_plugin_manager()
    set_plugin_manager(pm)
    configuration = parse_configuration(["--cwd", str(base_dir), "--port", "0", "--listen", "127.0.0.1",
                                         *server_args], pm)
    cli_args.set_configuration(configuration)
    runner = ServerRunner(configuration, pm)
    modules_before = set(sys.modules)
    await runner.start()
    try:
        yield RunningServer(f"http://127.0.0.1:{runner.port}", runner, base_dir)
    finally:
        await runner.stop()
        cli_args.set_configuration(None)
        set_plugin_manager(None)
        forget_legacy_modules(pm, modules_before)


def forget_legacy_modules(pm, modules_before: set[str]) -> None:
    """Undo the legacy names (folder_paths, server...) the test pack imported, for the tests after ours."""
    from comfy.legacy import legacy_module_table, uninstall_legacy_modules

    for name in legacy_module_table(pm):
        if name not in modules_before:
            sys.modules.pop(name, None)
    uninstall_legacy_modules()


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(server.url) as session:
        yield session


async def connect(session: aiohttp.ClientSession, server: RunningServer, client_id: Optional[str] = None,
                  flags: Optional[dict] = None) -> Events:
    """Open /ws as the frontend does; with ``flags``, send them first and wait for the server's reply."""
    events = Events(await session.ws_connect(server.ws_url(client_id)))
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "status")
    if flags is not None:
        await events.socket.send_json({"type": "feature_flags", "data": flags})
        await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "feature_flags")
    return events


def save_prompt(value: int = 7, prefix: str = "ServerTest") -> dict:
    """A two-node prompt: a number into the image saver."""
    return {"1": {"class_type": "ServerTestNumber", "inputs": {"value": value}},
            "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": prefix}}}


def slow_prompt(seconds: float = 2.0, value: int = 1) -> dict:
    return {"1": {"class_type": "ServerTestSlow", "inputs": {"value": value, "seconds": seconds}},
            "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "Slow"}}}


async def wait_for_history(session: aiohttp.ClientSession, prompt_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"/api/history/{prompt_id}") as response:
            history = await response.json()
        if prompt_id in history:
            return history[prompt_id]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")


@dataclass
class ComfyUIProcess:
    process: subprocess.Popen
    url: str
    output: list[str]

    def text(self) -> str:
        return "".join(self.output)


def start_comfyui(base: Path, *args: str, timeout: float = 60) -> ComfyUIProcess:
    """Run ``comfyui --cwd base --port 0 ...`` and wait until it prints where it listens."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([COMFYUI, "--cwd", str(base), "--port", "0", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=environment)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = URL_LINE.search(line)
        if match:
            # Keep reading, so that a full pipe never blocks the server's logging.
            threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
            return ComfyUIProcess(process, match.group(1).replace("localhost", "127.0.0.1"), lines)
    process.kill()
    raise RuntimeError("comfyui did not start:\n" + "".join(lines))


@pytest.fixture
def comfyui_process(base_dir: Path) -> Iterator[Any]:
    """Start ``comfyui`` subprocesses; each is stopped with SIGTERM after the test."""
    started: list[ComfyUIProcess] = []

    def start(*args: str) -> ComfyUIProcess:
        started.append(start_comfyui(base_dir, *args))
        return started[-1]

    yield start
    for running in started:
        running.process.terminate()
        try:
            running.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            running.process.kill()
