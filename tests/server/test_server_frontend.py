"""What the frontend loads at start-up: the page, its bundle, node definitions, extensions, and the
cross-site protections around them."""
from __future__ import annotations

import gzip
import re

import pytest

from conftest import connect


async def test_index_and_an_asset_load(server, http):
    async with http.get("/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-cache"
        page = await response.text()
    script = re.search(r'src="\./(assets/index-[^"]+\.js)"', page).group(1)
    async with http.get("/" + script) as response:
        assert response.status == 200 and "javascript" in response.content_type
        assert len(await response.read()) > 1000
    async with http.get("/assets/no-such-file.js") as response:
        assert response.status == 404


async def test_startup_routes_answer_as_the_frontend_expects(server, http):
    features = await (await http.get("/api/features")).json()
    assert features["supports_preview_metadata"] is True and features["max_upload_size"] == 100 * 1024 * 1024
    stats = await (await http.get("/api/system_stats")).json()
    assert isinstance(stats["system"]["argv"], list) and isinstance(stats["system"]["os"], str)
    assert stats["system"]["required_frontend_version"] and stats["devices"][0]["type"]
    assert isinstance(await (await http.get("/api/embeddings")).json(), list)
    assert await (await http.get("/api/global_subgraphs")).json() != {}
    async with http.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "split": "false",
                                                   "full_info": "true"}) as response:
        assert response.status == 404  # no workflows yet: the frontend reads this as an empty list
    assert await (await http.get("/api/jobs", params={"status": "in_progress,pending", "limit": "200",
                                                      "offset": "0"})).json() == {
        "jobs": [], "pagination": {"offset": 0, "limit": 200, "total": 0, "has_more": False}}
    assert await (await http.get("/api/node_replacements")).json() == {}


async def test_object_info_describes_the_test_nodes(server, http):
    info = await (await http.get("/api/object_info")).json()
    number = info["ServerTestNumber"]
    assert number["input"] == {"required": {"value": ["INT", {"default": 0, "min": -(10 ** 9), "max": 10 ** 9}]}}
    assert number["input_order"] == {"required": ["value"]}
    assert number["output"] == ["INT"] and number["output_is_list"] == [False] and number["output_name"] == ["INT"]
    assert number["name"] == "ServerTestNumber" and number["display_name"] == "Number (server tests)"
    assert number["category"] == "server tests" and number["output_node"] is False
    assert number["description"] == "Passes an integer on."
    assert number["python_module"] == "custom_nodes.server_test_pack"
    save = info["ServerTestSaveImage"]
    assert save["output_node"] is True and save["input"]["optional"] == {"mode": [["L", "RGBA"]]}
    single = await (await http.get("/object_info/ServerTestSaveImage")).json()
    assert single == {"ServerTestSaveImage": save}
    assert await (await http.get("/api/object_info/Nope")).json() == {}


async def test_custom_node_extensions_translations_blueprints_and_examples(server, http):
    extensions = await (await http.get("/api/extensions")).json()
    assert "/extensions/server_test_pack/server_test.js" in extensions
    assert any(path.startswith("/extensions/core/") for path in extensions)
    async with http.get("/extensions/server_test_pack/server_test.js") as response:
        assert response.status == 200 and "serverTest" in await response.text()
    async with http.get("/extensions/server_test_pack/../__init__.py") as response:
        assert response.status in (403, 404)

    i18n = await (await http.get("/api/i18n")).json()
    assert i18n["en"]["nodeDefs"]["ServerTestNumber"]["display_name"] == "Number (en)"
    assert i18n["en"]["commands"] == {"Comfy_Test": {"label": "Test command"}}
    assert i18n["fr"]["nodeDefs"]["ServerTestNumber"]["display_name"] == "Nombre"

    blueprints = await (await http.get("/api/global_subgraphs")).json()
    [(blueprint_id, entry)] = blueprints.items()
    assert entry == {"source": "custom_node", "name": "blueprint", "info": {"node_pack": "custom_nodes.server_test_pack"}}
    full = await (await http.get(f"/api/global_subgraphs/{blueprint_id}")).json()
    assert full["data"].startswith("{") and full["name"] == "blueprint"

    assert await (await http.get("/api/workflow_templates")).json() == {"server_test_pack": ["example"]}
    async with http.get("/api/workflow_templates/server_test_pack/example.json") as response:
        assert response.status == 200 and (await response.json())["links"] == []
    async with http.get("/api/workflow_templates/server_test_pack/../__init__.py") as response:
        assert response.status in (403, 404)


async def test_templates_from_the_templates_package_when_installed(server, http):
    try:
        import comfyui_workflow_templates  # noqa: F401
    except ImportError:
        async with http.get("/templates/index.json") as response:
            assert response.status == 404
        return
    async with http.get("/templates/index.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        categories = await response.json()
    name = categories[0]["templates"][0]["name"]
    async with http.get(f"/templates/{name}.json") as response:
        assert response.status == 200 and "nodes" in await response.json()
    for missing in ("no-such-template.json", "../../etc/passwd", "index.json/.."):
        async with http.get(f"/templates/{missing}") as response:
            assert response.status == 404, missing


async def test_internal_routes(server, http):
    events = await connect(http, server, client_id="terminal")
    async with http.patch("/internal/logs/subscribe", json={"enabled": True, "clientId": "terminal"}) as response:
        assert response.status == 200
    import logging
    logging.getLogger("server-test").warning("a line for the terminal panel")
    message = await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "logs"
                                    and "terminal panel" in m["data"]["entries"][0]["m"])
    assert set(message["data"]["size"]) == {"cols", "rows"}
    raw = await (await http.get("/internal/logs/raw")).json()
    assert any("terminal panel" in entry["m"] for entry in raw["entries"])
    assert "terminal panel" in await (await http.get("/internal/logs")).json()

    folders = await (await http.get("/internal/folder_paths")).json()
    assert folders["checkpoints"] == [str(server.base / "models" / "checkpoints")]
    (server.base / "input" / "old.png").write_bytes(b"1")
    (server.base / "input" / ".hidden").write_bytes(b"1")
    (server.base / "input" / "new.png").write_bytes(b"2")
    import os
    os.utime(server.base / "input" / "old.png", (1, 1))
    assert await (await http.get("/internal/files/input")).json() == ["new.png", "old.png"]
    async with http.get("/internal/files/models") as response:
        assert response.status == 400 and await response.json() == {"error": "Invalid directory type"}
    await events.close()


async def test_models_routes(server, http):
    (server.base / "models" / "loras" / "style").mkdir(parents=True)
    (server.base / "models" / "loras" / "style" / "a.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    (server.base / "models" / "loras" / "notes.txt").write_text("not a model")
    assert "loras" in await (await http.get("/api/models")).json()
    # Plugins may offer known models beside the files on disk.
    loras = await (await http.get("/api/models/loras")).json()
    assert "style/a.safetensors" in loras and "notes.txt" not in loras
    async with http.get("/api/models/nonsense") as response:
        assert response.status == 404
    folders = await (await http.get("/api/experiment/models")).json()
    assert {"name": "loras", "folders": [str(server.base / "models" / "loras")]} in folders
    assert not any(folder["name"] in ("configs", "custom_nodes") for folder in folders)
    [model] = await (await http.get("/api/experiment/models/loras")).json()
    assert model["name"] == "style/a.safetensors" and model["pathIndex"] == 0 and model["size"] == 10
    async with http.get("/api/experiment/models/preview/loras/0/style/a.safetensors") as response:
        assert response.status == 404
    async with http.get("/api/view_metadata/loras", params={"filename": "style/a.safetensors"}) as response:
        assert response.status == 404  # no __metadata__ in its header


async def test_foreign_origin_to_a_loopback_host_is_refused(server, http):
    port = server.url.rsplit(":", 1)[1]
    async with http.post("/api/prompt", json={"prompt": {}},
                         headers={"Origin": "http://evil.example", "Host": f"127.0.0.1:{port}"}) as response:
        assert response.status == 403
    async with http.get("/api/system_stats", headers={"Origin": f"http://localhost:{port}",
                                                       "Host": f"localhost:{port}"}) as response:
        assert response.status == 200
    async with http.get("/api/system_stats", headers={"Origin": "http://127.0.0.1:9999",
                                                       "Host": f"127.0.0.1:{port}"}) as response:
        assert response.status == 403
    async with http.options("/api/prompt") as response:
        assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers


class TestCorsAndCompression:
    @pytest.fixture
    def server_args(self) -> list[str]:
        return ["--enable-cors-header", "--enable-compress-response-body"]

    async def test_cors_headers_and_gzip(self, server, http):
        async with http.get("/api/object_info", headers={"Origin": "http://evil.example",
                                                          "Accept-Encoding": "gzip"}, auto_decompress=False) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.headers["Content-Encoding"] == "gzip"
            assert b"ServerTestNumber" in gzip.decompress(await response.read())
        async with http.options("/api/prompt", headers={"Origin": "http://evil.example"}) as response:
            assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get("/api/nope", headers={"Origin": "http://evil.example"}) as response:
            assert response.status == 404 and response.headers["Access-Control-Allow-Origin"] == "*"
