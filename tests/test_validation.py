"""Prompt validation: ComfyUI's error body for every kind of invalid prompt, and what passes."""
from __future__ import annotations

import copy
import json
import time

import pytest

from comfy.graph import PromptValidationError, types_compatible
from comfy.transport import validate

ERROR_KEYS = {"type", "message", "details", "extra_info"}


def rejected(registry, prompt, partial_execution_targets=None) -> dict:
    """The error body validation answers ``prompt`` with, its shape checked."""
    with pytest.raises(PromptValidationError) as info:
        validate(registry, prompt, partial_execution_targets)
    body = info.value.body
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == ERROR_KEYS
    for node_error in body["node_errors"].values():
        assert set(node_error) == {"errors", "dependent_outputs", "class_type"}
        for item in node_error["errors"]:
            assert set(item) == ERROR_KEYS
    # The body is what an HTTP 400 carries: it must survive JSON.
    assert json.loads(json.dumps(body)) == body
    return body


def only_error(body: dict, node_id: str) -> dict:
    errors = body["node_errors"][node_id]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def number_to_show(value=1) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def test_valid_prompt_lists_its_outputs(node_registry):
    validated = validate(node_registry, number_to_show())
    assert validated.outputs == ["2"]
    assert validated.node_errors == {}


def test_json_text_is_accepted(node_registry):
    validated = validate(node_registry, json.dumps(number_to_show()))
    assert validated.outputs == ["2"]
    assert validate(node_registry, json.dumps(number_to_show()).encode()).outputs == ["2"]


def test_integer_node_ids_and_links_become_strings(node_registry):
    validated = validate(node_registry, {1: {"class_type": "Number", "inputs": {"value": 1}},
                                         2: {"class_type": "Show", "inputs": {"value": [1, 0]}}})
    assert validated.outputs == ["2"]
    assert set(validated.prompt) == {"1", "2"}


def test_malformed_json_text(node_registry):
    body = rejected(node_registry, '{"1": {"class_type": ')
    assert body["error"]["type"] == "invalid_prompt"
    assert body["node_errors"] == {}


@pytest.mark.parametrize("prompt", ["[1, 2]", '"text"', {"1": "not a node"}, b"\xff\xfe{"])
def test_prompt_that_is_not_an_object_of_nodes(node_registry, prompt):
    body = rejected(node_registry, prompt)
    assert body["error"]["type"] == "invalid_prompt"
    assert body["node_errors"] == {}


def test_unknown_class_type(node_registry):
    prompt = number_to_show()
    prompt["1"]["class_type"] = "NoSuchNode"
    body = rejected(node_registry, prompt)
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Cannot execute because node NoSuchNode does not exist."
    assert body["error"]["details"] == "Node ID '#1'"
    assert body["node_errors"] == {}


def test_missing_class_type(node_registry):
    prompt = number_to_show()
    del prompt["1"]["class_type"]
    body = rejected(node_registry, prompt)
    assert body["error"] == {"type": "invalid_prompt",
                             "message": "Cannot execute because a node is missing the class_type property.",
                             "details": "Node ID '#1'", "extra_info": {}}


def test_no_output_node(node_registry):
    body = rejected(node_registry, {"1": {"class_type": "Number", "inputs": {"value": 1}}})
    assert body["error"] == {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                             "extra_info": {}}
    assert body["node_errors"] == {}


def test_missing_required_input_is_reported_on_its_node_only(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    body = rejected(node_registry, prompt)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    assert body["error"]["details"] == "Required input is missing: b"
    # The Show node fails only because of node 2, so it is left out, as ComfyUI does.
    assert body["node_errors"] == {"2": {
        "errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "b",
                    "extra_info": {"input_name": "b"}}],
        "dependent_outputs": ["3"], "class_type": "Add"}}


def test_a_shared_failing_node_lists_every_output_that_needs_it(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}
    body = rejected(node_registry, prompt)
    assert sorted(body["node_errors"]["1"]["dependent_outputs"]) == ["2", "3"]
    assert list(body["node_errors"]) == ["1"]


def test_link_to_a_missing_node(node_registry):
    prompt = {"2": {"class_type": "Show", "inputs": {"value": ["99", 0]}}}
    error = only_error(rejected(node_registry, prompt), "2")
    assert error["type"] == "bad_linked_input"
    assert error["extra_info"]["input_name"] == "value"
    assert error["extra_info"]["received_value"] == ["99", 0]


@pytest.mark.parametrize("link", [["1", 1], ["1", -1]])
def test_link_to_an_output_slot_that_does_not_exist(node_registry, link):
    prompt = number_to_show()
    prompt["2"]["inputs"]["value"] = link
    error = only_error(rejected(node_registry, prompt), "2")
    assert error["type"] == "bad_linked_input"
    assert error["extra_info"]["input_name"] == "value"


def test_a_list_that_is_not_a_link(node_registry):
    prompt = number_to_show()
    prompt["2"]["inputs"]["value"] = ["1", 0, 5]
    error = only_error(rejected(node_registry, prompt), "2")
    assert error["type"] == "bad_linked_input"
    assert error["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert error["details"] == "value"


def test_type_mismatch_on_a_link(node_registry):
    prompt = {"1": {"class_type": "Text", "inputs": {"text": "hi"}},
              "2": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}
    error = only_error(rejected(node_registry, prompt), "2")
    assert error["type"] == "return_type_mismatch"
    assert error["message"] == "Return type mismatch between linked nodes"
    assert error["details"] == "value, STRING != INT"
    assert error["extra_info"]["received_type"] == "STRING"
    assert error["extra_info"]["linked_node"] == ["1", 0]
    assert error["extra_info"]["input_name"] == "value"


@pytest.mark.parametrize("source, target", [
    ("Anything", "ShowInt"),  # a "*" output links to an INT input
    ("Text", "Show"),  # a "*" input takes a STRING
    ("IntOrString", "ShowInt"),  # a union containing INT
    ("IntOrString", "WantsStringOrFloat"),  # two unions that share STRING
    ("Scale", "WantsStringOrFloat"),  # FLOAT into a union containing it
])
def test_compatible_link_types(node_registry, source, target):
    inputs = {"text": "x"} if source == "Text" else {"value": 1, "factor": 1.0} if source == "Scale" else {"value": 1}
    prompt = {"1": {"class_type": source, "inputs": inputs},
              "2": {"class_type": target, "inputs": {"value": ["1", 0]}}}
    assert validate(node_registry, prompt).outputs == ["2"]


def test_union_without_overlap_is_a_mismatch(node_registry):
    prompt = {"1": {"class_type": "IntOrString", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": 1.0}},
              "4": {"class_type": "WantsStringOrFloat", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "Number", "inputs": {"value": 1}},
              "6": {"class_type": "WantsStringOrFloat", "inputs": {"value": ["5", 0]}}}
    validated = validate(node_registry, prompt)
    assert sorted(validated.outputs) == ["2", "4"]
    error = only_error({"node_errors": validated.node_errors}, "6")
    assert error["details"] == "value, INT != STRING,FLOAT"


@pytest.mark.parametrize("received, expected, compatible", [
    ("INT", "INT", True), ("INT", "FLOAT", False), ("*", "MODEL", True), ("IMAGE", "*", True),
    ("INT,STRING", "STRING,FLOAT", True), ("INT, STRING", "STRING", True), ("INT,FLOAT", "STRING,BOOLEAN", False),
])
def test_types_compatible_follows_comfyui(received, expected, compatible):
    assert types_compatible(received, expected) is compatible


def test_value_bigger_than_max(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": 150}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    error = only_error(rejected(node_registry, prompt), "2")
    assert error["type"] == "value_bigger_than_max"
    assert error["message"] == "Value 150.0 bigger than max of 100.0"
    assert error["details"] == "factor"
    assert error["extra_info"]["input_name"] == "factor"
    assert error["extra_info"]["received_value"] == 150.0


def test_value_smaller_than_min(node_registry):
    body = rejected(node_registry, number_to_show(value=-(10 ** 10)))
    error = only_error(body, "1")
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == f"Value {-(10 ** 10)} smaller than min of {-(10 ** 9)}"
    assert error["extra_info"]["input_config"] == ["INT", {"default": 0, "min": -(10 ** 9), "max": 10 ** 9}]


def test_value_that_does_not_convert(node_registry):
    error = only_error(rejected(node_registry, number_to_show(value="many")), "1")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    assert error["details"].startswith("value, many, ")
    assert error["extra_info"]["received_value"] == "many"


@pytest.mark.parametrize("inputs, details", [
    ({"color": "purple", "shape": "circle"}, "color: 'purple' not in ['red', 'green', 'blue']"),
    ({"color": "red", "shape": "triangle"}, "shape: 'triangle' not in ['circle', 'square']"),
])
def test_value_not_in_a_combos_choices(node_registry, inputs, details):
    prompt = {"1": {"class_type": "Choice", "inputs": inputs},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    error = only_error(rejected(node_registry, prompt), "1")
    assert error["type"] == "value_not_in_list"
    assert error["message"] == "Value not in list"
    assert error["details"] == details


def test_json_float_for_a_float_input_is_kept(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": 7.5}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    validated = validate(node_registry, prompt)
    assert validated.prompt["2"]["inputs"]["factor"] == 7.5


def test_numbers_are_converted_to_the_declared_type(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 3.0}},
              "2": {"class_type": "Scale", "inputs": {"value": ["1", 0], "factor": 8}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    validated = validate(node_registry, prompt)
    assert validated.prompt["1"]["inputs"]["value"] == 3 and type(validated.prompt["1"]["inputs"]["value"]) is int
    assert type(validated.prompt["2"]["inputs"]["factor"]) is float
    # The caller's prompt is not changed by validation.
    assert prompt["1"]["inputs"]["value"] == 3.0 and type(prompt["1"]["inputs"]["value"]) is float


def test_a_node_may_link_to_the_same_node_twice(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    assert validate(node_registry, prompt).outputs == ["3"]


def test_cycle(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["3", 0]}},
              "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["1", 0]}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    body = rejected(node_registry, prompt)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    # Only the nodes on the cycle have errors of their own; the output behind it is left out.
    assert set(body["node_errors"]) == {"2", "3"}
    assert only_error(body, "2")["type"] == "dependency_cycle"
    for node_id in ("2", "3"):
        assert body["node_errors"][node_id]["dependent_outputs"] == ["4"]


def test_self_link_is_a_cycle(node_registry):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    body = rejected(node_registry, prompt)
    assert "1" in body["node_errors"]


def test_cycle_in_one_output_leaves_the_other_valid(node_registry):
    prompt = {"1": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Number", "inputs": {"value": 1}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    validated = validate(node_registry, prompt)
    assert validated.outputs == ["4"]
    assert validated.node_errors["1"]["dependent_outputs"] == ["2"]


def test_partial_execution_targets(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Number", "inputs": {}},  # invalid, but not a target's dependency
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    assert validate(node_registry, prompt, ["2"]).outputs == ["2"]
    assert validate(node_registry, prompt, ["2"]).node_errors == {}
    body = rejected(node_registry, prompt, ["4"])
    assert body["node_errors"]["3"]["dependent_outputs"] == ["4"]
    # Targets that are not output nodes leave nothing to run.
    assert rejected(node_registry, prompt, ["1"])["error"]["type"] == "prompt_no_outputs"


def test_custom_validation_failure_text(node_registry):
    prompt = {"1": {"class_type": "Even", "inputs": {"value": 3}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    error = only_error(rejected(node_registry, prompt), "1")
    assert error == {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                     "details": "value - 3 is odd", "extra_info": {"input_name": "value"}}


def test_async_custom_validation(node_registry):
    prompt = {"1": {"class_type": "AsyncEven", "inputs": {"value": 4}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert validate(node_registry, prompt).outputs == ["2"]
    prompt["1"]["inputs"]["value"] = 5
    assert only_error(rejected(node_registry, prompt), "1")["details"] == "value - 5 is odd"


async def test_async_custom_validation_from_a_running_loop(node_registry):
    prompt = {"1": {"class_type": "AsyncEven", "inputs": {"value": 5}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert only_error(rejected(node_registry, prompt), "1")["details"] == "value - 5 is odd"


def test_custom_validation_replaces_the_builtin_range_check(node_registry):
    # max is 10, but VALIDATE_INPUTS takes "value", so ComfyUI leaves the check to it.
    prompt = {"1": {"class_type": "Even", "inputs": {"value": 12}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert validate(node_registry, prompt).outputs == ["2"]


def test_custom_validation_with_input_types_decides_link_types(node_registry):
    prompt = {"1": {"class_type": "Text", "inputs": {"text": "hi"}},
              "2": {"class_type": "TypeAware", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Number", "inputs": {"value": 1}},
              "4": {"class_type": "Scale", "inputs": {"value": ["3", 0], "factor": 1.0}},
              "5": {"class_type": "TypeAware", "inputs": {"value": ["4", 0]}}}
    validated = validate(node_registry, prompt)
    # STRING into an INT input passes: the node's validator takes input_types and accepts it.
    assert validated.outputs == ["2"]
    error = only_error({"node_errors": validated.node_errors}, "5")
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "input_types - cannot take FLOAT"


def test_custom_validation_gets_none_for_linked_inputs(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "ValidatesLink", "inputs": {"value": ["1", 0], "label": "x"}}}
    assert validate(node_registry, prompt).outputs == ["2"]
    prompt["2"]["inputs"]["label"] = ""
    # As in ComfyUI, a failing validator yields one error per input it was given.
    errors = rejected(node_registry, prompt)["node_errors"]["2"]["errors"]
    assert [(error["type"], error["details"], error["extra_info"]) for error in errors] == [
        ("custom_validation_failed", "value - needs a label", {"input_name": "value"}),
        ("custom_validation_failed", "label - needs a label", {"input_name": "label"})]


def test_broken_input_types_is_reported_against_the_node(node_registry):
    body = rejected(node_registry, {"1": {"class_type": "BrokenInputTypes", "inputs": {}}})
    error = only_error(body, "1")
    assert error["type"] == "exception_during_validation"
    assert error["details"] == "INPUT_TYPES is broken"
    assert error["extra_info"]["exception_type"] == "RuntimeError"


def test_some_outputs_invalid_while_others_run(node_registry):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Choice", "inputs": {"color": "purple", "shape": "circle"}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    validated = validate(node_registry, prompt)
    assert validated.outputs == ["2"]
    assert list(validated.node_errors) == ["3"]
    assert validated.node_errors["3"]["dependent_outputs"] == ["4"]
    assert validated.node_errors["3"]["class_type"] == "Choice"


def test_error_message_of_the_exception(node_registry):
    with pytest.raises(PromptValidationError, match="Prompt outputs failed validation"):
        validate(node_registry, {"1": {"class_type": "Number", "inputs": {}},
                                 "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}})


def test_deep_chain_with_an_error_at_the_bottom(node_registry):
    depth = 10_000
    prompt = {"0": {"class_type": "Number", "inputs": {"value": "not a number"}}}
    for index in range(1, depth):
        prompt[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": [str(depth - 1), 0]}}
    started = time.perf_counter()
    body = rejected(node_registry, prompt)
    assert time.perf_counter() - started < 5
    assert list(body["node_errors"]) == ["0"]
    assert body["node_errors"]["0"]["dependent_outputs"] == ["out"]


def test_many_outputs_sharing_a_failing_node_validate_quickly(node_registry):
    prompt = {"bad": {"class_type": "Number", "inputs": {}}}
    for index in range(3000):
        prompt[f"a{index}"] = {"class_type": "Add", "inputs": {"a": ["bad", 0], "b": index}}
        prompt[f"s{index}"] = {"class_type": "Show", "inputs": {"value": [f"a{index}", 0]}}
    prompt["chain0"] = {"class_type": "Number", "inputs": {"value": 1}}
    for index in range(1, 3000):
        prompt[f"chain{index}"] = {"class_type": "Add", "inputs": {"a": [f"chain{index - 1}", 0], "b": 1}}
    for index in range(3000):
        prompt[f"t{index}"] = {"class_type": "Show", "inputs": {"value": ["chain2999", 0]}}
    started = time.perf_counter()
    validated = validate(node_registry, copy.deepcopy(prompt))
    assert time.perf_counter() - started < 5
    assert len(validated.outputs) == 3000
    assert len(validated.node_errors["bad"]["dependent_outputs"]) == 3000
