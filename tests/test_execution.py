"""The executor: what runs, in which order, what is reused, and the events ComfyUI clients expect."""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest

import nodes_for_tests
from comfy.execution import CACHE_LRU, CACHE_NONE, PromptExecutor
from comfy.execution_context import interrupt_current_processing
from comfy.transport import validate

ERROR_PAYLOAD_KEYS = {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                      "traceback", "current_inputs", "current_outputs", "timestamp"}


class Events(list):
    """Everything one prompt emitted, as (event, data) pairs."""

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.append((event, data))

    def names(self) -> list[str]:
        return [event for event, _ in self]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self if event == name]

    def executing(self) -> list[str]:
        return [data["node"] for data in self.of("executing") if data["node"] is not None]


def run(executor: PromptExecutor, prompt: dict, extra_data: Optional[dict] = None, prompt_id: str = "p"):
    validated = validate(executor.registry, prompt)
    events = Events()
    outcome = executor.execute(validated.prompt, prompt_id, extra_data, validated.outputs, events)
    return outcome, events


@pytest.fixture
def executor(node_registry):
    executor = PromptExecutor(node_registry)
    yield executor
    executor.close()


def chain(depth: int) -> dict:
    """Number -> Add(+1) x (depth - 1) -> Show."""
    prompt = {"0": {"class_type": "Number", "inputs": {"value": 1}}}
    for index in range(1, depth):
        prompt[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": [str(depth - 1), 0]}}
    return prompt


def sums() -> dict:
    """(1 + 2) + 5, shown; and an unconnected Number nobody needs."""
    return {"1": {"class_type": "Number", "inputs": {"value": 1}},
            "2": {"class_type": "Number", "inputs": {"value": 2}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Number", "inputs": {"value": 5}},
            "5": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["4", 0]}},
            "6": {"class_type": "Show", "inputs": {"value": ["5", 0]}},
            "7": {"class_type": "Number", "inputs": {"value": 100}}}


def test_runs_what_outputs_need_in_dependency_order(executor, calls):
    prompt = sums()
    outcome, events = run(executor, prompt)
    assert outcome.status == "success"
    assert outcome.outputs == {"6": {"value": [8]}}
    order = events.executing()
    assert sorted(order) == ["1", "2", "3", "4", "5", "6"]  # "7" is not needed by any output
    position = {node_id: index for index, node_id in enumerate(order)}
    for node_id in order:
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list):
                assert position[value[0]] < position[node_id]
    assert calls == {"Number": 3, "Add": 2, "Show": 1}


def test_event_names_payloads_and_order(executor):
    outcome, events = run(executor, sums(), prompt_id="abc")
    assert events.names()[:2] == ["execution_start", "execution_cached"]
    # The final executing {node: None} comes from the transport, once history is written.
    assert events.names()[-1] == "execution_success"
    start, cached = events[0][1], events[1][1]
    assert set(start) == {"prompt_id", "timestamp"} and start["prompt_id"] == "abc"
    assert isinstance(start["timestamp"], int) and start["timestamp"] > 1_600_000_000_000
    assert cached["nodes"] == [] and cached["prompt_id"] == "abc"
    assert set(events[-1][1]) == {"prompt_id", "timestamp"}
    for data in events.of("executing"):
        assert data == {"node": data["node"], "display_node": data["node"], "prompt_id": "abc"}
    executed = events.of("executed")
    assert executed == [{"node": "6", "display_node": "6", "output": {"value": [8]}, "prompt_id": "abc"}]
    # "executed" follows the node's own "executing".
    assert events.index(("executed", executed[0])) > events.index(("executing", events.of("executing")[-2]))
    assert outcome.meta["6"] == {"node_id": "6", "display_node": "6", "parent_node": None, "real_node_id": "6"}


def test_second_run_is_served_from_the_cache(executor, calls):
    run(executor, sums())
    calls.clear()
    outcome, events = run(executor, sums())
    assert calls == {}
    assert sorted(events.of("execution_cached")[0]["nodes"]) == ["1", "2", "3", "4", "5", "6"]
    assert events.executing() == []
    # A cached output node still reports its output to the client.
    assert events.of("executed") == [{"node": "6", "display_node": "6", "output": {"value": [8]}, "prompt_id": "p"}]
    assert events.index(("executed", events.of("executed")[0])) > 1
    assert outcome.outputs == {"6": {"value": [8]}}


def test_changing_one_input_reruns_only_its_dependents(executor, calls):
    run(executor, sums())
    calls.clear()
    prompt = sums()
    prompt["4"]["inputs"]["value"] = 6
    outcome, events = run(executor, prompt)
    assert outcome.outputs == {"6": {"value": [9]}}
    assert events.executing() == ["4", "5", "6"]
    assert calls == {"Number": 1, "Add": 1, "Show": 1}
    assert sorted(events.of("execution_cached")[0]["nodes"]) == ["1", "2", "3"]


def test_classic_cache_keeps_only_the_latest_prompt(executor, calls):
    first, second = chain(3), chain(3)
    second["0"]["inputs"]["value"] = 50
    run(executor, first)
    run(executor, second)
    calls.clear()
    run(executor, first)
    assert calls == {"Number": 1, "Add": 2, "Show": 1}


def test_lru_cache_brings_back_results_of_older_prompts(node_registry, calls):
    executor = PromptExecutor(node_registry, CACHE_LRU, 50)
    try:
        first, second = chain(3), chain(3)
        second["0"]["inputs"]["value"] = 50
        run(executor, first)
        run(executor, second)
        calls.clear()
        outcome, _ = run(executor, first)
        assert calls == {}
        assert outcome.outputs == {"out": {"value": [3]}}
    finally:
        executor.close()


def test_lru_cache_drops_the_least_recently_used(node_registry, calls):
    executor = PromptExecutor(node_registry, CACHE_LRU, 4)
    try:
        prompts = []
        for value in range(3):
            prompt = chain(3)
            prompt["0"]["inputs"]["value"] = value
            prompts.append(prompt)
            run(executor, prompt)
        calls.clear()
        run(executor, prompts[0])
        assert calls["Number"] == 1
        assert len(executor.cache.entries) <= 4
    finally:
        executor.close()


def test_no_cache_reuses_nothing_across_prompts(node_registry, calls):
    executor = PromptExecutor(node_registry, CACHE_NONE)
    try:
        run(executor, sums())
        calls.clear()
        run(executor, sums())
        assert calls == {"Number": 3, "Add": 2, "Show": 1}
    finally:
        executor.close()


def test_a_node_used_twice_runs_once(executor, calls):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"3": {"value": [4]}, "4": {"value": [2]}}
    assert calls["Number"] == 1


def test_wrapped_list_constant_is_a_value_not_a_link(executor):
    # The frontend wraps list widget values in __value__; unwrapped, [1, 0] must not read as a link to node 1.
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 5}},
              "2": {"class_type": "Show", "inputs": {"value": {"__value__": [1, 0]}}}}
    outcome, events = run(executor, prompt)
    assert outcome.outputs == {"2": {"value": [[1, 0]]}}
    assert events.executing() == ["2"]


def one(class_type: str, value: int = 1) -> dict:
    return {"1": {"class_type": class_type, "inputs": {"value": value}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_is_changed_constant_is_cached(executor, calls):
    run(executor, one("Stable"))
    run(executor, one("Stable"))
    assert calls["Stable"] == 1


def test_is_changed_nan_always_runs(executor, calls):
    run(executor, one("Volatile"))
    run(executor, one("Volatile"))
    assert calls["Volatile"] == 2
    # The output node downstream reran, but its own input (the same value) did not change its result.
    assert calls["Show"] == 2


def test_is_changed_new_value_reruns(executor, calls):
    run(executor, one("Versioned"))
    run(executor, one("Versioned"))
    assert calls["Versioned"] == 1
    nodes_for_tests.Versioned.version = 1
    outcome, _ = run(executor, one("Versioned"))
    assert calls["Versioned"] == 2
    assert outcome.outputs == {"2": {"value": [2]}}


def test_is_changed_gets_none_for_linked_inputs(executor, calls):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 4}},
              "2": {"class_type": "ChangedByLink", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    run(executor, prompt)
    run(executor, prompt)
    assert calls["ChangedByLink"] == 1


def switch(use_first: bool) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": 1}},
            "2": {"class_type": "Fail", "inputs": {"value": 2, "message": "the unneeded branch ran"}},
            "3": {"class_type": "Switch", "inputs": {"use_first": use_first, "first": ["1", 0], "second": ["2", 0]}},
            "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}


def test_lazy_input_that_is_not_needed_never_runs(executor, calls):
    outcome, events = run(executor, switch(True))
    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"4": {"value": [1]}}
    assert calls["Fail"] == 0
    assert "2" not in events.executing()


def test_lazy_input_that_is_needed_runs(executor, calls):
    prompt = switch(False)
    prompt["2"] = {"class_type": "Number", "inputs": {"value": 2}}
    outcome, events = run(executor, prompt)
    assert outcome.outputs == {"4": {"value": [2]}}
    assert events.executing() == ["2", "3", "4"]


def test_lazy_branch_choice_can_change_between_runs(executor, calls):
    prompt = switch(True)
    prompt["2"] = {"class_type": "Number", "inputs": {"value": 2}}
    run(executor, prompt)
    prompt["3"]["inputs"]["use_first"] = False
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"4": {"value": [2]}}
    assert calls["Switch"] == 2


def test_output_is_list_maps_the_next_node_over_the_items(executor, calls):
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 3, "start": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, events = run(executor, prompt)
    assert outcome.outputs == {"3": {"value": [11, 12, 13]}}
    assert calls == {"Range": 1, "Add": 3, "Show": 3}
    assert events.of("executed")[0]["output"] == {"value": [11, 12, 13]}


def test_input_is_list_receives_the_whole_list(executor, calls):
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 4, "start": 1}},
              "2": {"class_type": "Total", "inputs": {"values": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"3": {"value": [10]}}
    assert calls["Total"] == 1


def test_shorter_lists_repeat_their_last_item(executor):
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 3, "start": 0}},
              "2": {"class_type": "Range", "inputs": {"count": 2, "start": 100}},
              "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"4": {"value": [100, 102, 103]}}


def test_node_expansion(executor, calls):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 5}},
              "2": {"class_type": "Double", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, events = run(executor, prompt)
    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"3": {"value": [10]}}
    assert calls["Add"] == 1
    assert events.of("executing")[2] == {"node": "2.add", "display_node": "2", "prompt_id": "p"}
    assert "2.add" not in outcome.meta  # meta is kept for nodes with UI output only
    calls.clear()
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"3": {"value": [10]}}
    assert calls == {}


def test_recursive_expansion(executor, calls):
    prompt = {"1": {"class_type": "CountDown", "inputs": {"n": 20, "total": 0}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"2": {"value": [210]}}
    assert calls["CountDown"] == 21


def test_deep_recursive_expansion(executor):
    prompt = {"1": {"class_type": "CountDown", "inputs": {"n": 3000, "total": 0}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"2": {"value": [3000 * 3001 // 2]}}


def test_expanded_output_node_runs_and_reports(executor):
    prompt = {"1": {"class_type": "ExpandToShow", "inputs": {"value": 7}},
              "2": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}
    outcome, events = run(executor, prompt)
    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"1.show": {"value": [7]}, "2": {"value": [7]}}
    assert {"node": "1.show", "display_node": "1", "output": {"value": [7]}, "prompt_id": "p"} \
        in events.of("executed")
    assert outcome.meta == {
        "1.show": {"node_id": "1.show", "display_node": "1", "parent_node": "1", "real_node_id": "1"},
        "2": {"node_id": "2", "display_node": "2", "parent_node": None, "real_node_id": "2"}}


def test_object_constants_are_never_confused_in_the_cache(executor):
    first, _ = run(executor, {"1": {"class_type": "ShowBoxed", "inputs": {"value": 1}}})
    second, _ = run(executor, {"1": {"class_type": "ShowBoxed", "inputs": {"value": 2}}})
    assert first.outputs["1.show"]["value"][0].content == 1
    assert second.outputs["1.show"]["value"][0].content == 2


def test_node_instances_are_reused_and_pruned(executor):
    run(executor, chain(3))
    instance = executor.instances[("0", "Number")]
    prompt = chain(3)
    prompt["0"]["inputs"]["value"] = 9
    run(executor, prompt)
    assert executor.instances[("0", "Number")] is instance
    other = {f"x{key}": node for key, node in chain(3).items()}
    for node in other.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [f"x{value[0]}", value[1]]
    other["x0"]["inputs"]["value"] = 77
    run(executor, other)
    assert all(node_id.startswith("x") for node_id, _ in executor.instances)


def test_expansion_with_a_duplicate_id_fails_the_prompt(executor):
    prompt = {"2.add": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Double", "inputs": {"value": ["2.add", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, events = run(executor, prompt)
    assert outcome.status == "error"
    assert outcome.error["node_id"] == "2"
    assert events.names()[-1] == "execution_error"


def test_async_node_functions(executor, calls):
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 3, "start": 1}},
              "2": {"class_type": "AsyncDouble", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "AsyncDouble", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.outputs == {"4": {"value": [4, 8, 12]}}
    assert calls["AsyncDouble"] == 6


def test_a_failing_async_call_cancels_its_siblings(executor, calls):
    prompt = {"1": {"class_type": "Range", "inputs": {"count": 3, "start": 0}},
              "2": {"class_type": "AsyncFlaky", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, _ = run(executor, prompt)
    assert outcome.status == "error" and outcome.error["exception_message"] == "zero"
    # The next prompt's async node must not wake the failed prompt's other calls.
    outcome, _ = run(executor, one("AsyncFlaky", 5))
    assert outcome.status == "success"
    assert calls["AsyncFlaky"] == 1


def test_hidden_inputs(executor):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "9": {"class_type": "Hidden", "inputs": {"value": ["1", 0]}}}
    extra_data = {"extra_pnginfo": {"workflow": {"nodes": []}}, "auth_token_comfy_org": "token",
                  "api_key_comfy_org": "key"}
    outcome, _ = run(executor, prompt, extra_data)
    assert outcome.outputs["9"] == {"prompt_nodes": ["1", "9"], "extra_pnginfo": [{"workflow": {"nodes": []}}],
                                    "unique_id": ["9"], "auth_token": ["token"], "api_key": ["key"]}


def test_hidden_inputs_without_extra_data(executor):
    outcome, _ = run(executor, {"9": {"class_type": "Hidden", "inputs": {"value": 1}}})
    assert outcome.outputs["9"]["extra_pnginfo"] == [None]
    assert outcome.outputs["9"]["auth_token"] == [None]


def test_failing_node_reports_execution_error(executor, calls):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}},
              "2": {"class_type": "Fail", "inputs": {"value": ["1", 0], "message": "it broke"}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    outcome, events = run(executor, prompt, prompt_id="bad")
    assert outcome.status == "error"
    assert events.names()[-1] == "execution_error"
    payload = events.of("execution_error")[0]
    assert payload is outcome.error
    assert set(payload) == ERROR_PAYLOAD_KEYS
    assert payload["prompt_id"] == "bad"
    assert payload["node_id"] == "2" and payload["node_type"] == "Fail"
    assert payload["executed"] == ["1"]
    assert payload["exception_message"] == "it broke"
    assert payload["exception_type"] == "ValueError"
    assert any("raise ValueError(message)" in line for line in payload["traceback"])
    assert payload["current_inputs"] == {"value": [3], "message": ["it broke"]}
    assert payload["current_outputs"] == ["1"]
    assert "execution_success" not in events.names()

    # The executor is healthy afterwards, and what ran before the failure is cached.
    calls.clear()
    outcome, _ = run(executor, one("Number", 3))
    assert outcome.status == "success"
    assert calls == {"Show": 1}


def test_malformed_node_result_fails_the_prompt_cleanly(executor):
    outcome, events = run(executor, one("BadReturn", 3), prompt_id="bad-result")
    assert outcome.status == "error"
    assert outcome.error["node_id"] == "1" and outcome.error["node_type"] == "BadReturn"
    assert outcome.error["exception_type"] == "TypeError"
    assert events.names()[-1] == "execution_error"
    assert run(executor, one("Number", 3))[0].status == "success"


def test_missing_output_reaches_consumers_as_none(executor):
    outcome, _ = run(executor, one("UiOnly", 3))
    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"1": {"value": [3]}, "2": {"value": [None]}}


def test_progress_events(executor):
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 3}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    _, events = run(executor, prompt, prompt_id="pp")
    assert events.of("progress") == [{"value": step, "max": 3, "prompt_id": "pp", "node": "1"} for step in (1, 2, 3)]
    names = events.names()
    assert names.index("progress") > names.index("executing")
    assert ("executing", {"node": "2", "display_node": "2", "prompt_id": "pp"}) in events[names.index("progress"):]


def test_interrupt_from_another_thread(executor, calls):
    prompt = {"1": {"class_type": "Spin", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    threading.Thread(target=lambda: (nodes_for_tests.SPINNING.wait(10), interrupt_current_processing())).start()
    outcome, events = run(executor, prompt, prompt_id="spin")
    assert outcome.status == "interrupted"
    assert events.names()[-1] == "execution_interrupted"
    payload = events.of("execution_interrupted")[0]
    assert set(payload) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert payload["node_id"] == "1" and payload["node_type"] == "Spin" and payload["prompt_id"] == "spin"
    # The interruption belonged to that prompt; the next one runs to the end.
    outcome, _ = run(executor, one("Number", 2))
    assert outcome.status == "success"


def test_deep_chain_runs(executor):
    started = time.perf_counter()
    outcome, _ = run(executor, chain(10_000))
    elapsed = time.perf_counter() - started
    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"out": {"value": [10_000]}}
    assert elapsed < 10
    # Cached the second time, just as deep.
    outcome, events = run(executor, chain(10_000))
    assert outcome.outputs == {"out": {"value": [10_000]}}
    assert events.executing() == []


def test_twenty_thousand_nodes_run(executor, calls):
    prompt = {}
    for index in range(10_000):
        prompt[f"n{index}"] = {"class_type": "Number", "inputs": {"value": index}}
        prompt[f"s{index}"] = {"class_type": "ShowInt", "inputs": {"value": [f"n{index}", 0]}}
    started = time.perf_counter()
    outcome, _ = run(executor, prompt)
    elapsed = time.perf_counter() - started
    assert outcome.status == "success"
    assert len(outcome.outputs) == 10_000
    assert outcome.outputs["s9999"] == {"value": [9999]}
    assert calls == {"Number": 10_000, "ShowInt": 10_000}
    assert elapsed < 10
