"""The OpenAPI document stays in step with the routes the server registers, and the server answers as it says."""
from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyui_server.routes.rest_api import load_document, registered_operations

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Left to the other tests: the websocket, the frontend's files, and the operations that change state
# (besides running prompts, which is what POST /api/v1/prompts is for).
NOT_FUZZED = ("websocket", "get_index", "get_frontend_file")


def documented_operations(document: dict[str, Any]) -> dict[str, set[str]]:
    return {path: {method for method in item if method in HTTP_METHODS} for path, item in document["paths"].items()}


def custom_node_operations(runner: Any) -> dict[str, set[str]]:
    """What the test pack adds: its route (in both forms) and its web folder."""
    added: dict[str, set[str]] = {}
    for route in runner.server.routes:
        for path in (route.path, "/api" + route.path):
            added.setdefault(path, set()).add(route.method.lower())
    for name in runner.runtime.registry.web_directories:
        added[f"/extensions/{name}/{{filename}}"] = {"get"}
    return added


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [value["$ref"]] if isinstance(value.get("$ref"), str) else [
            ref for item in value.values() for ref in refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in refs(item)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_document_is_well_formed():
    document = load_document()
    assert document["openapi"].startswith("3.1")
    for ref in refs(document):
        resolve(document, ref)
    operation_ids = [operation["operationId"] for item in document["paths"].values()
                     for method, operation in item.items() if method in HTTP_METHODS]
    assert len(operation_ids) == len(set(operation_ids))
    for path, item in document["paths"].items():
        declared = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            parameters = [resolve(document, p["$ref"]) if "$ref" in p else p for p in operation.get("parameters", [])]
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == declared, f"{method.upper()} {path} declares path parameters {in_path}"
            assert operation["responses"], f"{method.upper()} {path} has no responses"


async def test_every_registered_route_is_documented_and_every_documented_one_registered(server):
    registered = registered_operations(server.runner.server.app)
    custom = custom_node_operations(server.runner)
    assert "/server_test/hello" in custom and "/extensions/server_test_pack/{filename}" in custom
    built_in = {path: methods - custom.get(path, set()) for path, methods in registered.items()}
    built_in = {path: methods for path, methods in built_in.items() if methods}
    documented = documented_operations(load_document())

    missing = sorted(f"{method.upper()} {path}" for path, methods in built_in.items()
                     for method in methods - documented.get(path, set()))
    stale = sorted(f"{method.upper()} {path}" for path, methods in documented.items()
                   for method in methods - built_in.get(path, set()))
    assert missing == [], "routes the OpenAPI document does not describe"
    assert stale == [], "operations the OpenAPI document describes that the server does not register"
    # Both forms of the routes the frontend calls, one form of those it calls without /api.
    assert {"/prompt", "/api/prompt", "/view", "/api/view", "/ws", "/internal/logs"} <= set(documented)
    assert "/api/ws" not in documented and "/api/internal/logs" not in documented


async def test_the_served_document_adds_custom_node_routes(server, http):
    async with http.get("/api/openapi.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        served = await response.json()
    async with http.get("/openapi.yaml") as response:
        assert response.status == 200 and response.content_type == "application/yaml"
        assert yaml.safe_load(await response.text()) == served
    hello = served["paths"]["/server_test/hello"]["get"]
    assert hello["tags"] == ["custom nodes"] and "default" in hello["responses"]
    assert "/api/server_test/hello" in served["paths"]
    folder = served["paths"]["/extensions/server_test_pack/{filename}"]["get"]
    assert folder["parameters"] == [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert documented_operations(served) == registered_operations(server.runner.server.app)
    # The packaged document, expanded, is all there is besides the custom node routes.
    packaged = load_document()
    assert {path: served["paths"][path] for path in packaged["paths"]} == packaged["paths"]


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed (pip install schemathesis)")
async def test_schemathesis_finds_no_server_errors_or_undocumented_answers(server, tmp_path):
    """Property-based requests to every safe GET route and to POST /api/v1/prompts on a real server."""
    fuzzed = sorted(operation["operationId"] for item in load_document()["paths"].values()
                    for method, operation in item.items()
                    if method == "get" and operation["operationId"] not in NOT_FUZZED) + ["run_prompt"]
    report = tmp_path / "schemathesis.xml"
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--url", server.url,
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_headers_conformance,response_schema_conformance",
        "--mode", "positive", "--phases", "examples,coverage,fuzzing", "--max-examples", "50", "--seed", "1",
        "--workers", "1", "--request-timeout", "30", "--suppress-health-check", "all",
        "--include-operation-id-regex", f"^({'|'.join(fuzzed)})$",
        "--report", "junit", "--report-junit-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, cwd=tmp_path)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-12000:]
    assert f"{len(fuzzed)} selected" in text, text[-3000:]
