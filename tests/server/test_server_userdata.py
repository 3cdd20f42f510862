"""Users, settings and user data files, as the frontend saves workflows and settings."""
from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest


async def test_single_user_reports_default(server, http):
    assert await (await http.get("/api/users")).json() == {"storage": "server", "migrated": False}
    async with http.post("/api/settings/Comfy.Test", data=b"1") as response:
        assert response.status == 200
    assert await (await http.get("/api/users")).json() == {"storage": "server", "migrated": True}


async def test_settings_round_trip(server, http):
    assert await (await http.get("/api/settings")).json() == {}
    assert await (await http.get("/api/settings/Comfy.Missing")).json() is None
    # The frontend posts settings without a JSON content type.
    async with http.post("/api/settings", data=json.dumps({"Comfy.A": 1, "Comfy.B": "x"})) as response:
        assert response.status == 200
    async with http.post("/settings/Comfy.B", data=json.dumps({"nested": [1, 2]})) as response:
        assert response.status == 200
    assert await (await http.get("/api/settings")).json() == {"Comfy.A": 1, "Comfy.B": {"nested": [1, 2]}}
    assert await (await http.get("/api/settings/Comfy.A")).json() == 1
    stored = json.loads((server.base / "user" / "default" / "comfy.settings.json").read_text())
    assert stored == {"Comfy.A": 1, "Comfy.B": {"nested": [1, 2]}}
    # A corrupt file reads as no settings rather than an error.
    (server.base / "user" / "default" / "comfy.settings.json").write_text("{broken")
    assert await (await http.get("/api/settings")).json() == {}
    async with http.post("/api/settings", data=b"not json") as response:
        assert response.status == 400


async def test_userdata_crud_and_listings(server, http):
    workflow = json.dumps({"nodes": [], "links": []}).encode()
    path = quote("workflows/a.json", safe="")
    async with http.post(f"/api/userdata/{path}", params={"overwrite": "false", "full_info": "true"},
                         data=workflow) as response:
        assert response.status == 200
        info = await response.json()
    assert info["path"] == "workflows/a.json" and info["size"] == len(workflow)
    assert isinstance(info["modified"], float)
    async with http.post(f"/api/userdata/{path}", params={"overwrite": "false"}, data=b"{}") as response:
        assert response.status == 409
    async with http.post(f"/api/userdata/{path}", data=b'{"v": 2}') as response:
        assert await response.json() == "workflows/a.json"
    async with http.get(f"/api/userdata/{path}") as response:
        assert await response.read() == b'{"v": 2}'
    async with http.post(f"/userdata/{quote('workflows/sub/b.json', safe='')}", data=b"{}") as response:
        assert response.status == 200

    async def listing(**params):
        async with http.get("/api/userdata", params=params) as response:
            return response.status, await response.json() if response.status == 200 else None

    assert await listing(dir="workflows") == (200, ["a.json"])
    assert await listing(dir="workflows", recurse="true") == (200, ["a.json", "sub/b.json"])
    assert await listing(dir="workflows", recurse="true", split="true") == (
        200, [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]])
    status, full = await listing(dir="workflows", recurse="true", full_info="true")
    assert [item["path"] for item in full] == ["a.json", "sub/b.json"] and {"size", "modified", "created"} <= set(full[0])
    assert (await listing(dir="subgraphs"))[0] == 404
    assert (await listing())[0] == 400
    assert (await listing(dir="../.."))[0] == 403

    async with http.get("/api/v2/userdata") as response:
        entries = await response.json()
    # Folders first, then files, each by name.
    assert [(entry["type"], entry["path"]) for entry in entries] == [
        ("directory", "workflows/sub"), ("directory", "workflows"), ("file", "workflows/a.json"),
        ("file", "workflows/sub/b.json")]
    async with http.get("/api/v2/userdata", params={"path": "workflows/sub"}) as response:
        assert [entry["name"] for entry in await response.json()] == ["b.json"]
    async with http.get("/api/v2/userdata", params={"path": "../../"}) as response:
        assert response.status == 400

    target = quote("workflows/renamed.json", safe="")
    async with http.post(f"/api/userdata/{path}/move/{target}", params={"overwrite": "false"}) as response:
        assert response.status == 200 and await response.json() == "workflows/renamed.json"
    async with http.post(f"/api/userdata/{target}/move/{quote('workflows/sub/b.json', safe='')}",
                         params={"overwrite": "false"}) as response:
        assert response.status == 409
    async with http.post(f"/api/userdata/{path}/move/{target}") as response:
        assert response.status == 404
    async with http.delete(f"/api/userdata/{target}") as response:
        assert response.status == 204
    async with http.delete(f"/api/userdata/{target}") as response:
        assert response.status == 404
    assert await listing(dir="workflows", recurse="true") == (200, ["sub/b.json"])


@pytest.mark.parametrize("name", ["../escape.json", "..%2F..%2Fescape.json", "workflows/../../escape.json",
                                  "/etc/passwd", "%2Fetc%2Fpasswd"])
async def test_userdata_refuses_paths_outside_the_user(server, http, name):
    encoded = quote(name, safe="%")
    async with http.post(f"/api/userdata/{encoded}", data=b"x") as response:
        assert response.status in (400, 403, 404), response.status
    async with http.get(f"/api/userdata/{encoded}") as response:
        assert response.status in (400, 403, 404)
    assert not (server.base / "user" / "escape.json").exists()
    assert not (server.base / "escape.json").exists()


async def test_userdata_refuses_symlinks_leading_out(server, http, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    user = server.base / "user" / "default"
    user.mkdir(parents=True)
    os.symlink(secret, user / "link.json")
    os.symlink(tmp_path, user / "linkdir")
    async with http.get("/api/userdata/link.json") as response:
        assert response.status == 403
    async with http.post(f"/api/userdata/{quote('linkdir/new.json', safe='')}", data=b"{}") as response:
        assert response.status == 403
    assert not (tmp_path / "new.json").exists()


class TestMultiUser:
    @pytest.fixture
    def server_args(self) -> list[str]:
        return ["--multi-user"]

    async def test_users_settings_and_files_per_user(self, server, http):
        await multi_user_checks(server, http)


async def multi_user_checks(server, http):
    assert await (await http.get("/api/users")).json() == {"storage": "server", "users": {}}
    async with http.get("/api/settings", headers={"Comfy-User": "nobody"}) as response:
        assert response.status == 401
    async with http.post("/api/users", json={"username": "Ada Lovelace"}) as response:
        user_id = await response.json()
    assert user_id.startswith("Ada-Lovelace_")
    async with http.post("/api/users", json={"username": "Ada Lovelace"}) as response:
        assert response.status == 400 and await response.json() == {"error": "Duplicate username."}
    async with http.post("/api/users", json={"username": "__system"}) as response:
        assert response.status == 400
    assert await (await http.get("/api/users")).json() == {"storage": "server", "users": {user_id: "Ada Lovelace"}}

    headers = {"Comfy-User": user_id}
    async with http.post("/api/settings/Comfy.Who", data=b'"ada"', headers=headers) as response:
        assert response.status == 200
    assert await (await http.get("/api/settings", headers=headers)).json() == {"Comfy.Who": "ada"}
    assert (server.base / "user" / user_id / "comfy.settings.json").exists()
    async with http.get("/api/userdata", params={"dir": "workflows"}, headers={"Comfy-User": "__system"}) as response:
        assert response.status == 403
    # Users are kept across restarts.
    assert json.loads((server.base / "user" / "users.json").read_text()) == {user_id: "Ada Lovelace"}
