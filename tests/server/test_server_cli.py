"""``comfyui`` as a user starts it: a real process, its options, its exit codes."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import COMFYUI, save_prompt, slow_prompt


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run(base, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([COMFYUI, "--cwd", str(base), *args], capture_output=True, text=True, timeout=timeout)


def test_comfyui_serves_the_frontend_and_a_custom_node_route(comfyui_process):
    running = comfyui_process()
    assert get(running.url + "/")[0] == 200
    for path in ("/server_test/hello", "/api/server_test/hello"):
        status, body = get(running.url + path)
        assert status == 200 and json.loads(body) == {"hello": "world", "queue": {"exec_info": {"queue_remaining": 0}}}
    status, queued = post_json(running.url + "/api/prompt", {"prompt": save_prompt(3)})
    assert status == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        history = json.loads(get(f"{running.url}/history/{queued['prompt_id']}")[1])
        if history:
            break
        time.sleep(0.05)
    assert history[queued["prompt_id"]]["status"]["status_str"] == "success"

    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0


def test_custom_nodes_find_the_app_and_user_manager_at_import(comfyui_process, base_dir):
    (base_dir / "custom_nodes" / "app_route_node.py").write_text(
        "from aiohttp import web\n"
        "from server import PromptServer\n"
        "async def where(request):\n"
        "    path = PromptServer.instance.user_manager.get_request_user_filepath(request, 'x.json')\n"
        "    escape = PromptServer.instance.user_manager.get_request_user_filepath(request, '../x.json')\n"
        "    return web.json_response({'path': path, 'escape': escape})\n"
        "PromptServer.instance.app.router.add_get('/app_route_node/where', where)\n"
        "NODE_CLASS_MAPPINGS = {}\n")
    running = comfyui_process()
    status, body = get(running.url + "/app_route_node/where")
    assert status == 200
    assert json.loads(body) == {"path": str(base_dir / "user" / "default" / "x.json"), "escape": None}


def test_sigint_stops_with_a_running_prompt(comfyui_process):
    running = comfyui_process()
    assert post_json(running.url + "/api/prompt", {"prompt": slow_prompt(30.0)})[0] == 200
    time.sleep(0.5)
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=30) == 0


def test_listens_on_several_addresses(comfyui_process):
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    running = comfyui_process("--listen", "127.0.0.1,::1")
    port = running.url.rsplit(":", 1)[1]
    assert get(f"http://127.0.0.1:{port}/api/prompt")[0] == 200
    assert get(f"http://[::1]:{port}/api/prompt")[0] == 200
    assert f"http://[::1]:{port}" in running.text()


def test_dont_print_server(base_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([COMFYUI, "--cwd", str(base_dir), "--port", str(port), "--dont-print-server"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(f"http://127.0.0.1:{port}/api/prompt")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "To see the GUI" not in output


def test_quick_test_for_ci(base_dir):
    result = run(base_dir, "--quick-test-for-ci")
    assert result.returncode == 0, result.stderr
    (base_dir / "custom_nodes" / "broken.py").write_text("raise ImportError('this pack is broken')\n")
    result = run(base_dir, "--quick-test-for-ci", "--log-stdout")
    assert result.returncode == 1
    assert "broken" in result.stdout and "broken" not in result.stderr


def test_front_end_version_that_needs_a_download_is_a_clear_error(base_dir):
    result = run(base_dir, "--front-end-version", "Comfy-Org/ComfyUI_frontend@0.0.1", "--port", "0")
    assert result.returncode == 1
    assert "would need a download" in result.stderr and "--front-end-root" in result.stderr
    result = run(base_dir, "--front-end-version", "nonsense", "--port", "0")
    assert result.returncode == 1 and "owner/repo@version" in result.stderr


def test_front_end_root_is_served(comfyui_process, base_dir, tmp_path):
    root = tmp_path / "frontend"
    root.mkdir()
    (root / "index.html").write_text("<html>my frontend</html>")
    (root / "app.js").write_text("console.log(1)")
    running = comfyui_process("--front-end-root", str(root))
    assert get(running.url + "/") == (200, b"<html>my frontend</html>")
    assert get(running.url + "/app.js")[0] == 200


def test_port_in_use_is_a_clear_error(base_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(base_dir, "--port", str(port))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1 port {port}" in result.stderr


class TestQueueLimit:
    @pytest.fixture
    def server_args(self) -> list[str]:
        return ["--max-queue-size", "1"]

    async def test_a_full_queue_refuses_prompts_clearly(self, server, http):
        async with http.post("/api/prompt", json={"prompt": slow_prompt(1.0)}) as response:
            assert response.status == 200
        await asyncio.sleep(0.2)
        async with http.post("/api/prompt", json={"prompt": save_prompt(1)}) as response:
            assert response.status == 200
        async with http.post("/api/prompt", json={"prompt": save_prompt(2)}) as response:
            body = await response.json()
        assert response.status == 429 and body["error"]["type"] == "queue_full"
        assert "--max-queue-size 1" in body["error"]["details"]
