"""Queueing prompts over HTTP and following them on the websocket, as the frontend does."""
from __future__ import annotations

import struct
import uuid

from conftest import connect, save_prompt, slow_prompt, wait_for_history


async def test_prompt_events_history_and_view(server, http):
    events = await connect(http, server, flags={"supports_preview_metadata": True})
    client_id = events.json("status")[0]["data"]["sid"]
    body = {"client_id": client_id, "prompt": save_prompt(41),
            "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}}
    async with http.post("/api/prompt", json=body) as response:
        assert response.status == 200
        queued = await response.json()
    prompt_id = queued["prompt_id"]
    assert queued["node_errors"] == {} and isinstance(queued["number"], (int, float))

    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "executing"
                          and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id)
    mine = [m for m in events.json() if m["data"].get("prompt_id") == prompt_id and m["type"] != "progress_state"]
    kinds = [m["type"] for m in mine]
    assert kinds == ["execution_start", "execution_cached", "executing", "executing", "executed",
                     "execution_success", "executing"]
    assert [m["data"]["node"] for m in mine if m["type"] == "executing"] == ["1", "2", None]
    executed = next(m["data"] for m in mine if m["type"] == "executed")
    image = executed["output"]["images"][0]
    assert executed["node"] == "2" and image["type"] == "output" and image["filename"].endswith(".png")
    states = [m["data"] for m in events.json("progress_state") if m["data"]["prompt_id"] == prompt_id]
    assert states and states[-1]["nodes"]["2"]["state"] == "finished"
    # The queue changed: everyone gets the new status, and it ends with nothing left to run.
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "status"
                          and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
                          and events.messages.index(m) > events.messages.index(mine[-1]))

    entry = await wait_for_history(http, prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [message[0] for message in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]
    assert entry["outputs"]["2"]["images"] == [image]
    number, stored_id, prompt, extra_data, outputs = entry["prompt"]
    assert stored_id == prompt_id and prompt == save_prompt(41) and outputs == ["2"]
    assert extra_data["client_id"] == client_id and isinstance(extra_data["create_time"], int)

    async with http.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                         "type": "output"}) as response:
        assert response.status == 200 and response.content_type == "image/png"
        assert f'filename="{image["filename"]}"' in response.headers["Content-Disposition"]
        assert (await response.read()).startswith(b"\x89PNG")
    async with http.get("/api/history", params={"max_items": "1"}) as response:
        assert list(await response.json()) == [prompt_id]
    async with http.get("/history/nonexistent") as response:
        assert await response.json() == {}
    await events.close()


async def test_prompt_options_number_front_prompt_id_and_sensitive_keys(server, http):
    blocker = (await (await http.post("/prompt", json={"prompt": slow_prompt(1.0)})).json())["prompt_id"]
    chosen = str(uuid.uuid4())
    body = {"prompt": save_prompt(1), "prompt_id": chosen, "number": 99.5,
            "extra_data": {"auth_token_comfy_org": "secret-token", "api_key_comfy_org": "secret-key"}}
    async with http.post("/api/prompt", json=body) as response:
        queued = await response.json()
    assert queued["prompt_id"] == chosen and queued["number"] == 99.5
    front = await (await http.post("/api/prompt", json={"prompt": save_prompt(2), "front": True})).json()
    assert front["number"] <= 0

    async with http.get("/api/queue") as response:
        queue = await response.json()
    pending_ids = [item[1] for item in queue["queue_pending"]]
    assert pending_ids == [front["prompt_id"], chosen]  # front first, the high number last
    assert "secret" not in str(queue)
    for prompt_id in (blocker, chosen, front["prompt_id"]):
        await wait_for_history(http, prompt_id)
    history = await (await http.get("/api/history")).json()
    assert "secret" not in str(history)
    jobs = await (await http.get("/api/jobs")).json()
    assert "secret" not in str(jobs)


async def test_partial_execution_targets_run_only_those_outputs(server, http):
    prompt = {**save_prompt(3, "First"),
              "3": {"class_type": "ServerTestSaveImage", "inputs": {"value": 4, "filename_prefix": "Second"}}}
    queued = await (await http.post("/api/prompt", json={"prompt": prompt, "partial_execution_targets": ["3"]})).json()
    entry = await wait_for_history(http, queued["prompt_id"])
    assert list(entry["outputs"]) == ["3"] and entry["prompt"][4] == ["3"]


async def test_validation_error_has_comfyui_shape(server, http):
    prompt = {"1": {"class_type": "ServerTestNumber", "inputs": {"value": "not a number"}},
              "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0]}}}
    async with http.post("/api/prompt", json={"prompt": prompt}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["error"]) >= {"type", "message", "details", "extra_info"}
    errors = body["node_errors"]["1"]
    assert errors["class_type"] == "ServerTestNumber" and errors["dependent_outputs"] == ["2"]
    assert errors["errors"][0]["type"] == "invalid_input_type"
    assert errors["errors"][0]["extra_info"]["input_name"] == "value"

    async with http.post("/api/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}) as response:
        body = await response.json()
    assert response.status == 400 and body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    async with http.post("/api/prompt", json={"client_id": "x"}) as response:
        body = await response.json()
    assert response.status == 400 and body == {"error": {"type": "no_prompt", "message": "No prompt provided",
                                                         "details": "No prompt provided", "extra_info": {}},
                                               "node_errors": {}}
    # The server goes on serving.
    async with http.get("/api/prompt") as response:
        assert await response.json() == {"exec_info": {"queue_remaining": 0}}


async def test_malformed_json_is_a_clear_400(server, http):
    for path in ("/api/prompt", "/prompt"):
        async with http.post(path, data=b"{not json", headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            body = await response.json()
        assert body["error"]["message"] and "JSON" in body["error"]["details"] and body["node_errors"] == {}
    for path in ("/api/queue", "/api/history", "/api/settings", "/api/jobs/cancel"):
        async with http.post(path, data=b"[1, 2") as response:
            assert response.status == 400, path
            assert "not valid JSON" in (await response.json())["error"]
    async with http.get("/api/no/such/route") as response:
        assert response.status == 404
    async with http.get("/api/object_info/ServerTestNumber") as response:
        assert response.status == 200


async def test_execution_error_reaches_client_and_history(server, http):
    events = await connect(http, server, client_id="failing-client")
    prompt = {"1": {"class_type": "ServerTestFail", "inputs": {"value": 5}},
              "2": {"class_type": "ServerTestSaveImage", "inputs": {"value": ["1", 0], "filename_prefix": "x"}}}
    queued = await (await http.post("/api/prompt", json={"prompt": prompt, "client_id": "failing-client"})).json()
    error = await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "execution_error")
    assert error["data"]["prompt_id"] == queued["prompt_id"] and error["data"]["node_id"] == "1"
    assert "failing on purpose" in error["data"]["exception_message"]
    entry = await wait_for_history(http, queued["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    job = await (await http.get(f"/api/jobs/{queued['prompt_id']}")).json()
    assert job["status"] == "failed" and job["execution_error"]["node_type"] == "ServerTestFail"
    await events.close()


async def test_previews_are_binary_frames_in_comfyui_framing(server, http):
    plain = await connect(http, server, client_id="plain")
    rich = await connect(http, server, client_id="rich", flags={"supports_preview_metadata": True})
    for client_id in ("plain", "rich"):
        queued = await (await http.post("/api/prompt", json={"prompt": slow_prompt(0.2, value=len(client_id)),
                                                             "client_id": client_id})).json()
        await wait_for_history(http, queued["prompt_id"])
    await plain.wait_for(lambda m: isinstance(m, bytes))
    await rich.wait_for(lambda m: isinstance(m, bytes))

    frame = plain.binary()[0]
    event, image_format = struct.unpack(">II", frame[:8])
    assert (event, image_format) == (1, 1) and frame[8:10] == b"\xff\xd8"  # JPEG
    frame = rich.binary()[0]
    event, length = struct.unpack(">II", frame[:8])
    metadata = __import__("json").loads(frame[8:8 + length])
    assert event == 4 and metadata["image_type"] == "image/jpeg" and metadata["node_id"] == "1"
    assert metadata["display_node_id"] == "1" and metadata["prompt_id"]
    assert frame[8 + length:8 + length + 2] == b"\xff\xd8"
    # Each client saw only its own prompt's previews and progress.
    assert len(plain.binary()) == len(rich.binary()) == 4
    assert all(m["data"]["prompt_id"] != queued["prompt_id"] for m in plain.json("progress"))
    assert rich.json("progress")[-1]["data"] == {"value": 4, "max": 4, "prompt_id": queued["prompt_id"], "node": "1"}
    await plain.close()
    await rich.close()


async def test_custom_nodes_reach_clients_through_prompt_server(server, http):
    events = await connect(http, server, client_id="notified")
    prompt = {"1": {"class_type": "ServerTestNotify", "inputs": {"text": "hi"}}}
    queued = await (await http.post("/api/prompt", json={"prompt": prompt, "client_id": "notified"})).json()
    notice = await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "server_test.notice")
    assert notice["data"] == {"text": "hi", "node": "1"}
    frame = await events.wait_for(lambda m: isinstance(m, bytes))
    # Progress text with the server's supports_progress_text_metadata layout: prompt id, node id, text.
    event, prompt_length = struct.unpack(">II", frame[:8])
    prompt_id = frame[8:8 + prompt_length].decode()
    (node_length,) = struct.unpack(">I", frame[8 + prompt_length:12 + prompt_length])
    node = frame[12 + prompt_length:12 + prompt_length + node_length].decode()
    assert (event, prompt_id, node) == (3, queued["prompt_id"], "1")
    assert frame[12 + prompt_length + node_length:] == b"progress: hi"
    await events.close()


async def test_a_reconnecting_client_learns_the_running_node(server, http):
    events = await connect(http, server, client_id="returning")
    queued = await (await http.post("/api/prompt", json={"prompt": slow_prompt(2.0), "client_id": "returning"})).json()
    await events.wait_for(lambda m: isinstance(m, dict) and m["type"] == "executing" and m["data"]["node"] == "1")
    await events.close()
    again = await connect(http, server, client_id="returning")
    assert again.json("status")[0]["data"]["sid"] == "returning"
    executing = await again.wait_for(lambda m: isinstance(m, dict) and m["type"] == "executing")
    assert executing["data"]["node"] == "1" and executing["data"]["prompt_id"] == queued["prompt_id"]
    # Events of its running prompt reach the new socket.
    await again.wait_for(lambda m: isinstance(m, dict) and m["type"] == "execution_success")
    await again.close()
