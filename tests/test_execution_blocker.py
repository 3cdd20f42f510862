"""ExecutionBlocker: a node can stop its consumers, silently or with a message for the client."""
from __future__ import annotations

from comfy.nodes.registry import NodeRegistry
from comfy.transport import InProcessTransport, validate
from comfy_execution.graph_utils import ExecutionBlocker


class Gate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 10}),
                             "message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    def run(self, value, message):
        if value == 0:
            return (ExecutionBlocker(message or None), ExecutionBlocker(message or None))
        return (value, value * 10)


class Record:
    seen: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        Record.seen.append(value)
        return {"ui": {"value": [value]}}


def run(prompt: dict) -> tuple:
    registry = NodeRegistry()
    registry.register("test", "Gate", Gate)
    registry.register("test", "Record", Record)
    transport = InProcessTransport(registry)
    events: list = []
    transport.add_listener(lambda event, data, client_id: events.append((event, data)))
    try:
        outcome = transport.submit("p", validate(registry, prompt)).result(timeout=10)
    finally:
        transport.close()
    return outcome, events


def graph(value: int, message: str = "") -> dict:
    return {"g": {"class_type": "Gate", "inputs": {"value": value, "message": message}},
            "a": {"class_type": "Record", "inputs": {"value": ["g", 0]}},
            "b": {"class_type": "Record", "inputs": {"value": ["g", 1]}}}


def test_blocked_outputs_do_not_run_and_the_prompt_succeeds() -> None:
    Record.seen = []
    outcome, events = run(graph(0))
    assert outcome.status == "success"
    assert Record.seen == [] and outcome.outputs == {}
    assert not [data for event, data in events if event == "execution_error"]


def test_blocker_with_message_is_reported_for_each_blocked_output_node() -> None:
    Record.seen = []
    outcome, events = run(graph(0, "no input image"))
    errors = [data for event, data in events if event == "execution_error"]
    assert sorted(error["node_id"] for error in errors) == ["a", "b"]
    assert all(error["exception_message"] == "Execution Blocked: no input image" for error in errors)
    assert outcome.status == "success" and Record.seen == []


def test_unblocked_values_flow() -> None:
    Record.seen = []
    outcome, _ = run(graph(3))
    assert outcome.status == "success"
    assert sorted(Record.seen) == [3, 30]
