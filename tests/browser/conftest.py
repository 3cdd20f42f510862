"""Fixtures for the browser tests: a ``comfyui`` process with a small custom node pack, and headless Chromium.

Debian's chromium (``apt-get install chromium``) is driven by Playwright's Python package; Playwright's own
browser downloads are not used. Without either, the tests skip and say which is missing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

PACK = Path(__file__).parent / "browser_test_pack"
COMFYUI = str(Path(sys.executable).with_name("comfyui"))
URL_LINE = re.compile(r"To see the GUI go to: (http://\S+)")
CHROMIUM = os.environ.get("COMFYUI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class ComfyUIProcess:
    process: subprocess.Popen
    url: str
    base: Path
    output: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture
def comfyui(tmp_path: Path) -> Iterator[ComfyUIProcess]:
    """``comfyui --cwd <tmp> --port 0`` with the browser test pack, until the test ends."""
    base = tmp_path / "base"
    shutil.copytree(PACK, base / "custom_nodes" / "browser_test_pack")
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    # A returning user: no first-run template browser over the canvas.
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    process = subprocess.Popen([COMFYUI, "--cwd", str(base), "--port", "0", "--listen", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    deadline = time.monotonic() + 90
    url = None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = URL_LINE.search(line)
        if match:
            url = match.group(1).replace("localhost", "127.0.0.1")
    if url is None:
        process.kill()
        pytest.fail("comfyui did not start:\n" + "".join(lines))
    # Keep reading, so that a full pipe never blocks the server's logging.
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    try:
        yield ComfyUIProcess(process, url, base, lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium, for one test: Playwright's sync API runs an event loop that must not outlive it."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set COMFYUI_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> list[Path]:
    """Folders screenshots go to: the test's tmp_path, and $COMFYUI_TEST_ARTIFACTS when set."""
    folders = [tmp_path / "artifacts"]
    if os.environ.get("COMFYUI_TEST_ARTIFACTS"):
        folders.append(Path(os.environ["COMFYUI_TEST_ARTIFACTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders
