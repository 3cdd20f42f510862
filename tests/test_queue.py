"""The prompt queue, its history, and the in-process transport that serves it from a worker thread."""
from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest

import nodes_for_tests
from comfy.cli_args_types import Configuration
from comfy.execution import CACHE_LRU, CACHE_NONE
from comfy.execution_context import interrupt_current_processing
from comfy.queue import PromptQueue, QueueFullError
from comfy.transport import InProcessTransport, TransportClosedError, validate

TIMEOUT = 20


# -- the queue on its own -------------------------------------------------------------------------

def put(queue: PromptQueue, prompt_id: str, **kwargs):
    return queue.put(prompt_id, {"1": {"class_type": "Show", "inputs": {"value": prompt_id}}},
                     {"client_id": "c"}, ["1"], **kwargs)


def test_prompts_run_in_order_of_number_then_arrival():
    queue = PromptQueue()
    put(queue, "a")
    put(queue, "b")
    put(queue, "front", front=True)
    put(queue, "low", number=-100)
    put(queue, "high", number=1000.5)
    running, pending = queue.get_current_queue()
    assert running == []
    assert [item[1] for item in pending] == ["low", "front", "a", "b", "high"]
    assert [queue.get(0).prompt_id for _ in range(5)] == ["low", "front", "a", "b", "high"]
    assert queue.get(0.01) is None


def test_queue_items_are_comfyui_five_tuples():
    queue = PromptQueue()
    put(queue, "a")
    put(queue, "b")
    item = queue.get(0)
    running, pending = queue.get_current_queue()
    extra_data = {"client_id": "c", "create_time": item.extra_data["create_time"]}
    assert running == [[item.number, "a", item.prompt, extra_data, ["1"]]]
    assert len(pending) == 1 and len(pending[0]) == 5 and pending[0][1] == "b"
    assert isinstance(item.extra_data["create_time"], int)
    assert queue.get_tasks_remaining() == 2
    assert queue.is_running("a") and not queue.is_running("b")


def test_delete_a_pending_prompt():
    queue = PromptQueue()
    for prompt_id in "abc":
        put(queue, prompt_id)
    running = queue.get(0)
    assert queue.delete_queue_item("b") is True
    assert queue.delete_queue_item("b") is False
    # A running prompt is not deleted (it is interrupted instead).
    assert queue.delete_queue_item(running.prompt_id) is False
    assert [item[1] for item in queue.get_current_queue()[1]] == ["c"]


def test_wipe_queue_keeps_the_running_prompt():
    queue = PromptQueue()
    for prompt_id in "abc":
        put(queue, prompt_id)
    queue.get(0)
    queue.wipe_queue()
    running, pending = queue.get_current_queue()
    assert [item[1] for item in running] == ["a"] and pending == []


def test_max_size():
    queue = PromptQueue(max_size=2)
    put(queue, "a")
    put(queue, "b")
    with pytest.raises(QueueFullError):
        put(queue, "c")
    queue.get(0)
    put(queue, "c")  # the running prompt does not count


def finish(queue: PromptQueue, prompt_id: str, status: str = "success"):
    item = queue.get(0)
    assert item.prompt_id == prompt_id
    queue.task_done(item, {"1": {"value": [prompt_id]}},
                    {"status_str": status, "completed": status == "success",
                     "messages": [["execution_start", {"prompt_id": prompt_id, "timestamp": 1}]]},
                    {"1": {"node_id": "1", "display_node": "1", "parent_node": None, "real_node_id": "1"}})
    return item


def test_history_entry_shape():
    queue = PromptQueue()
    put(queue, "a")
    item = finish(queue, "a")
    history = queue.get_history("a")
    assert list(history) == ["a"]
    assert history["a"] == {
        "prompt": [item.number, "a", item.prompt, item.extra_data, ["1"]],
        "outputs": {"1": {"value": ["a"]}},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": "a", "timestamp": 1}]]},
        "meta": {"1": {"node_id": "1", "display_node": "1", "parent_node": None, "real_node_id": "1"}}}
    assert queue.get_history("missing") == {}
    assert queue.get_tasks_remaining() == 0
    # Callers get copies: changing them changes nothing inside the queue.
    history["a"]["outputs"].clear()
    assert queue.get_history("a")["a"]["outputs"] == {"1": {"value": ["a"]}}


def test_history_paging():
    queue = PromptQueue()
    for prompt_id in "abcde":
        put(queue, prompt_id)
        finish(queue, prompt_id)
    assert list(queue.get_history()) == list("abcde")
    assert list(queue.get_history(max_items=2)) == ["d", "e"]
    assert list(queue.get_history(max_items=2, offset=1)) == ["b", "c"]
    assert list(queue.get_history(max_items=10, offset=3)) == ["d", "e"]
    assert list(queue.get_history(offset=4)) == ["e"]
    assert list(queue.get_history(max_items=0)) == []


def test_delete_and_clear_history():
    queue = PromptQueue()
    for prompt_id in "abc":
        put(queue, prompt_id)
        finish(queue, prompt_id)
    queue.delete_history_item("b")
    queue.delete_history_item("not there")
    assert list(queue.get_history()) == ["a", "c"]
    queue.wipe_history()
    assert queue.get_history() == {}


def test_history_keeps_the_newest_entries():
    queue = PromptQueue(max_history=3)
    for prompt_id in "abcde":
        put(queue, prompt_id)
        finish(queue, prompt_id)
    assert list(queue.get_history()) == ["c", "d", "e"]


def test_sensitive_extra_data_stays_out_of_queue_and_history():
    queue = PromptQueue()
    item = queue.put("a", {}, {"client_id": "c", "auth_token_comfy_org": "secret-token",
                               "api_key_comfy_org": "secret-key"}, [])
    assert item.full_extra_data()["auth_token_comfy_org"] == "secret-token"
    assert item.full_extra_data()["api_key_comfy_org"] == "secret-key"
    assert "secret" not in json.dumps(queue.get_current_queue())
    finish(queue, "a")
    assert "secret" not in json.dumps(queue.get_history())


def test_on_change_callbacks():
    queue = PromptQueue()
    changes = []
    queue.on_change.append(lambda: changes.append(queue.get_tasks_remaining()))
    put(queue, "a")
    put(queue, "b")
    queue.delete_queue_item("b")
    finish(queue, "a")
    queue.wipe_queue()
    assert changes == [1, 2, 1, 1, 0, 0]


def test_get_waits_for_a_prompt_from_another_thread():
    queue = PromptQueue()
    threading.Timer(0.05, put, (queue, "late")).start()
    item = queue.get(timeout=TIMEOUT)
    assert item is not None and item.prompt_id == "late"


# -- the in-process transport ---------------------------------------------------------------------

@pytest.fixture
def transport(node_registry):
    transport = InProcessTransport(node_registry)
    yield transport
    transport.close()


def submit(transport, prompt, prompt_id, **kwargs) -> concurrent.futures.Future:
    return transport.submit(prompt_id, validate(transport.registry, prompt), **kwargs)


def show(value) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_transport_runs_a_prompt_and_records_history(transport):
    received = []
    transport.add_listener(lambda event, data, client_id: received.append((event, data, client_id)))
    outcome = submit(transport, show(4), "p1", extra_data={"client_id": "me"}).result(TIMEOUT)
    assert outcome.status == "success"
    assert outcome.outputs == {"2": {"value": [4]}}
    assert {client_id for _, _, client_id in received} == {"me"}
    assert [event for event, _, _ in received] == ["execution_start", "execution_cached", "executing", "executing",
                                                   "executed", "execution_success", "executing"]
    entry = transport.queue.get_history("p1")["p1"]
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    number, prompt_id, prompt, extra_data, outputs = entry["prompt"]
    assert prompt_id == "p1" and prompt["2"]["class_type"] == "Show" and outputs == ["2"]
    assert extra_data["client_id"] == "me"
    assert entry["outputs"] == {"2": {"value": [4]}}
    assert entry["meta"] == {"2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}}
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"] is True
    assert [message[0] for message in status["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]
    assert all(isinstance(message, list) and len(message) == 2 and message[1]["prompt_id"] == "p1"
               for message in status["messages"])
    assert json.loads(json.dumps(entry)) == entry


def test_failed_prompt_in_history(transport):
    prompt = {"1": {"class_type": "Fail", "inputs": {"value": 1, "message": "nope"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    outcome = submit(transport, prompt, "bad").result(TIMEOUT)
    assert outcome.status == "error"
    assert outcome.error["exception_message"] == "nope"
    status = transport.queue.get_history("bad")["bad"]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert [message[0] for message in status["messages"]][-1] == "execution_error"
    # The worker carries on.
    assert submit(transport, show(1), "good").result(TIMEOUT).status == "success"


def spin() -> dict:
    return {"1": {"class_type": "Spin", "inputs": {"value": 1}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_interrupt_the_running_prompt(transport):
    future = submit(transport, spin(), "spin")
    assert nodes_for_tests.SPINNING.wait(TIMEOUT)
    transport.interrupt("some other prompt")
    time.sleep(0.05)
    assert not future.done()
    transport.interrupt("spin")
    outcome = future.result(TIMEOUT)
    assert outcome.status == "interrupted"
    assert outcome.error["node_id"] == "1"
    status = transport.queue.get_history("spin")["spin"]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"
    assert submit(transport, show(2), "after").result(TIMEOUT).status == "success"


def test_process_wide_interrupt(transport):
    future = submit(transport, spin(), "spin")
    assert nodes_for_tests.SPINNING.wait(TIMEOUT)
    interrupt_current_processing()
    assert future.result(TIMEOUT).status == "interrupted"
    assert submit(transport, show(3), "after").result(TIMEOUT).status == "success"


def test_interrupt_while_idle_does_not_touch_the_next_prompt(transport):
    transport.interrupt()
    interrupt_current_processing()
    assert submit(transport, show(3), "p").result(TIMEOUT).status == "success"


def test_priorities_and_deleting_a_pending_prompt(transport):
    started = []
    transport.add_listener(lambda event, data, _: started.append(data["prompt_id"])
                           if event == "execution_start" else None)
    blocker = {"1": {"class_type": "Sleep", "inputs": {"seconds": 0.3}},
               "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    futures = {"blocker": submit(transport, blocker, "blocker")}
    while not transport.queue.is_running("blocker"):
        time.sleep(0.005)
    futures["normal"] = submit(transport, show(1), "normal")
    futures["deleted"] = submit(transport, show(2), "deleted")
    futures["front"] = submit(transport, show(3), "front", front=True)
    futures["first"] = submit(transport, show(4), "first", number=-1000)
    assert transport.delete("deleted") is True
    assert futures["deleted"].cancelled()
    for name in ("blocker", "normal", "front", "first"):
        assert futures[name].result(TIMEOUT).status == "success"
    assert started == ["blocker", "first", "front", "normal"]
    assert "deleted" not in transport.queue.get_history()


def test_sensitive_extra_data_reaches_the_node_only(transport):
    prompt = {"9": {"class_type": "Hidden", "inputs": {"value": 1}}}
    extra_data = {"client_id": "c", "extra_pnginfo": {"workflow": {}}, "auth_token_comfy_org": "secret-token",
                  "api_key_comfy_org": "secret-key"}
    outcome = submit(transport, prompt, "p", extra_data=extra_data).result(TIMEOUT)
    assert outcome.outputs["9"]["auth_token"] == ["secret-token"]
    assert outcome.outputs["9"]["api_key"] == ["secret-key"]
    assert outcome.outputs["9"]["extra_pnginfo"] == [{"workflow": {}}]
    entry = transport.queue.get_history("p")["p"]
    assert "auth_token_comfy_org" not in entry["prompt"][3] and "api_key_comfy_org" not in entry["prompt"][3]
    # The history keeps the node's UI output as it was shown; the request's extra_data holds no credentials.
    assert extra_data["auth_token_comfy_org"] == "secret-token"


def test_queue_full(node_registry):
    transport = InProcessTransport(node_registry, Configuration({"max_queue_size": 1}))
    try:
        blocker = {"1": {"class_type": "Sleep", "inputs": {"seconds": 0.2}},
                   "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
        running = submit(transport, blocker, "running")
        while not transport.queue.is_running("running"):
            time.sleep(0.005)
        waiting = submit(transport, show(1), "waiting")
        with pytest.raises(QueueFullError):
            submit(transport, show(2), "refused")
        assert running.result(TIMEOUT).status == "success" and waiting.result(TIMEOUT).status == "success"
        assert "refused" not in transport.queue.get_history()
    finally:
        transport.close()


@pytest.mark.parametrize("options, mode", [({}, "classic"), ({"cache_lru": 7}, CACHE_LRU),
                                           ({"cache_none": True}, CACHE_NONE)])
def test_cache_mode_from_configuration(node_registry, options, mode):
    transport = InProcessTransport(node_registry, Configuration(options))
    try:
        assert transport.executor.cache.mode == mode
    finally:
        transport.close()


def test_the_same_prompt_id_cannot_be_queued_twice(transport):
    blocker = {"1": {"class_type": "Sleep", "inputs": {"seconds": 0.1}},
               "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    first = submit(transport, blocker, "same")
    with pytest.raises(ValueError):
        submit(transport, show(1), "same")
    assert first.result(TIMEOUT).status == "success"
    # Once it has finished, the id may be used again.
    assert submit(transport, show(1), "same").result(TIMEOUT).status == "success"


def test_a_failing_listener_does_not_fail_the_prompt(transport, caplog):
    def broken(event, data, client_id):
        raise RuntimeError("listener bug")

    seen = []
    transport.add_listener(broken)
    transport.add_listener(lambda event, data, client_id: seen.append(event))
    assert submit(transport, show(5), "p").result(TIMEOUT).status == "success"
    assert seen[-1] == "executing"
    assert "listener bug" in caplog.text
    transport.remove_listener(broken)


def test_close_stops_the_worker_and_fails_waiting_prompts(node_registry):
    transport = InProcessTransport(node_registry)
    running = submit(transport, spin(), "spin")
    waiting = submit(transport, show(1), "waiting")
    assert nodes_for_tests.SPINNING.wait(TIMEOUT)
    transport.close()
    assert running.result(TIMEOUT).status == "interrupted"
    with pytest.raises(TransportClosedError):
        waiting.result(TIMEOUT)
    assert not any(thread.name == "comfyui-prompt-worker" and thread.is_alive() and thread is transport._worker
                   for thread in threading.enumerate())
    with pytest.raises(TransportClosedError):
        submit(transport, show(1), "late")


def test_a_failing_queue_callback_does_not_stop_the_worker(transport, caplog):
    def broken():
        raise RuntimeError("callback bug")

    transport.queue.on_change.append(broken)
    assert submit(transport, show(1), "one").result(TIMEOUT).status == "success"
    assert submit(transport, show(2), "two").result(TIMEOUT).status == "success"
    assert "callback bug" in caplog.text


@pytest.mark.parametrize("prompt_kind", ["success", "error"])
def test_prompt_finished_signal_comes_after_history_is_written(transport, prompt_kind):
    """Clients wait for executing {node: None}, then read /history: the entry must already be there."""
    prompt = show(1) if prompt_kind == "success" else {
        "1": {"class_type": "Fail", "inputs": {"value": 1, "message": "nope"}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    seen_in_history = []

    def listener(event, data, client_id):
        if event == "executing" and data["node"] is None:
            seen_in_history.append(data["prompt_id"] in transport.queue.get_history(data["prompt_id"]))

    transport.add_listener(listener)
    submit(transport, prompt, f"finished-{prompt_kind}").result(TIMEOUT)
    assert seen_in_history == [True]


def test_take_a_chosen_pending_prompt_and_wipe_reports_ids():
    queue = PromptQueue()
    for prompt_id in "abc":
        put(queue, prompt_id)
    assert queue.take("b").prompt_id == "b"
    assert queue.take("b") is None and queue.take("zzz") is None
    running, pending = queue.get_current_queue()
    assert [item[1] for item in running] == ["b"] and [item[1] for item in pending] == ["a", "c"]
    assert sorted(queue.wipe_queue()) == ["a", "c"]
    assert queue.get_current_queue()[1] == []
