"""The official frontend in headless Chromium against a real ``comfyui`` process: it loads without errors our
server causes, runs a workflow queued from its Run button, and shows the saved image on the node."""
from __future__ import annotations

import json
import re
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Requests to our server the frontend expects to fail, and handles (SERVER_API.md section 2 and 3.5).
TOLERATED = [
    # A user stylesheet, linked from the page and asked of the user's data; usually there is none.
    re.compile(r"^/user\.css$"),
    re.compile(r"^/api/userdata/user\.css$"),
    # No saved workflows, blueprints or templates yet: 404 reads as an empty list.
    re.compile(r"^/api/userdata\?dir=(workflows|subgraphs)&"),
    re.compile(r"^/api/userdata/comfy\.templates\.json$"),
    # A translated template index falls back to index.json.
    re.compile(r"^/templates/index\.[\w-]+\.json$"),
]
WORKFLOW = {"1": {"class_type": "BrowserTestSaveImage", "inputs": {"red": 123, "filename_prefix": "BrowserTest"}}}
CANVAS_READY = "() => window.app && window.app.graph && document.querySelector('#graph-canvas')"


@dataclass
class PageLog:
    """What went wrong in the page: our server's failed answers, failed requests to it, and script errors."""
    origin: str
    failed_responses: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    def ours(self, url: str) -> str | None:
        """The path and query of a URL of our server, or None for another origin."""
        return url[len(self.origin):] if url.startswith(self.origin + "/") else None

    def on_response(self, response: Any) -> None:
        path = self.ours(response.url)
        if path is not None and response.status >= 400 and not any(p.search(path) for p in TOLERATED):
            self.failed_responses.append(f"{response.status} {response.request.method} {path}")

    def on_request_failed(self, request: Any) -> None:
        path = self.ours(request.url)
        # A tolerated 404 of a stylesheet or a fetch the page dropped is reported as aborted too.
        if path is not None and not any(p.search(path) for p in TOLERATED):
            self.failed_requests.append(f"{request.method} {path}: {request.failure}")

    def on_page_error(self, error: Any) -> None:
        self.script_errors.append(str(error))


def test_frontend_runs_a_workflow_and_shows_its_image(comfyui, browser, artifacts):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    log = PageLog(comfyui.url)
    page.on("response", log.on_response)
    page.on("requestfailed", log.on_request_failed)
    page.on("pageerror", log.on_page_error)
    try:
        page.goto(comfyui.url)
        page.wait_for_function(CANVAS_READY, timeout=60_000)
        page.evaluate("workflow => window.app.loadApiJson(workflow, 'browser-test.json')", WORKFLOW)
        assert page.evaluate("() => window.app.graph.nodes.map(node => node.type)") == ["BrowserTestSaveImage"]
        # Widgets exist only when the node's definition came from /object_info.
        assert page.evaluate("() => window.app.graph.getNodeById(1).widgets.map(w => [w.name, w.value])") == [
            ["red", 123], ["filename_prefix", "BrowserTest"]]

        # Queue it as a user does; the node then fetches its image from /api/view.
        with page.expect_response(lambda response: "/api/view?" in response.url and "BrowserTest_00001_.png"
                                  in response.url, timeout=60_000) as viewed:
            page.get_by_role("button", name="Run", exact=True).click()
        response = viewed.value
        assert response.status == 200 and response.headers["content-type"] == "image/png"
        saved = comfyui.base / "output" / "BrowserTest_00001_.png"
        assert response.body() == saved.read_bytes()
        page.wait_for_function("() => window.app.graph.getNodeById(1).imgs?.[0]?.naturalWidth === 64",
                               timeout=30_000)

        with urllib.request.urlopen(f"{comfyui.url}/api/history", timeout=30) as answer:
            (entry,) = json.load(answer).values()
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"] == {"1": {"images": [{"filename": "BrowserTest_00001_.png", "subfolder": "",
                                                      "type": "output"}]}}
        # The workflow went with the prompt, as the frontend sends it to be saved into the image.
        assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"][0]["type"] == "BrowserTestSaveImage"
    finally:
        screenshot = artifacts[0] / "frontend.png"
        page.screenshot(path=str(screenshot))
        for folder in artifacts[1:]:
            shutil.copy(screenshot, Path(folder) / screenshot.name)
        context.close()
    assert log.failed_responses == [], "our server answered the frontend with errors it does not expect"
    assert log.failed_requests == [], "requests to our server failed"
    assert log.script_errors == [], "the page raised script errors"
