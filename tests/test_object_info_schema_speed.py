"""Schema nodes' cached /object_info entries: reused while the schema is unchanged, never served stale."""
from __future__ import annotations

import json
from typing import Any

from comfy.nodes.object_info import declaration_key, declare, object_info
from comfy.nodes.registry import NodeRegistry
from comfy_api.latest import io
from comfyui_server.routes.nodes import ObjectInfoEncoder

# What the node below declares; tests change it between requests, as a model folder listing would change.
STATE: dict[str, Any] = {}


class Changing(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Changing", category=STATE.get("category", "tests"),
            inputs=[io.Combo.Input("choice", options=STATE.get("options", ["a", "b"]),
                                   remote=STATE.get("remote"), extra_dict=STATE.get("extra", {})),
                    io.Int.Input("value", default=STATE.get("default", 1), display_mode=STATE.get("display"))],
            outputs=STATE.get("outputs", [io.Int.Output()]), is_output_node=STATE.get("output_node", False))

    @classmethod
    def execute(cls, choice: str, value: int) -> io.NodeOutput:
        return io.NodeOutput(value)


def entry(encoder: ObjectInfoEncoder, registry: NodeRegistry) -> dict[str, Any]:
    """The node's entry as the encoder serves it, checked byte for byte against a fresh build."""
    body = encoder.encode(registry)
    assert body == json.dumps(object_info(registry)).encode()
    return json.loads(body)["Changing"]


def registry() -> NodeRegistry:
    nodes = NodeRegistry()
    nodes.register("tests", "Changing", Changing, module="custom_nodes.tests")
    return nodes


def test_unchanged_schema_reuses_its_entry():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    entry(encoder, nodes)
    cached = encoder._entries["Changing"]
    entry(encoder, nodes)
    assert encoder._entries["Changing"][1] is cached[1]


def test_changed_options_are_never_served_stale():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    options = ["a", "b"]
    STATE["options"] = options
    assert entry(encoder, nodes)["input"]["required"]["choice"][1]["options"] == ["a", "b"]
    options.append("c")  # the same list, changed in place
    assert entry(encoder, nodes)["input"]["required"]["choice"][1]["options"] == ["a", "b", "c"]
    STATE["options"] = ["z"]
    assert entry(encoder, nodes)["input"]["required"]["choice"][1]["options"] == ["z"]
    STATE["category"] = "moved"
    assert entry(encoder, nodes)["category"] == "moved"


def test_values_equal_under_eq_but_not_in_json_are_told_apart():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    for default, spelled in ((1, b'"default": 1}'), (1.0, b'"default": 1.0}'), (True, b'"default": true}')):
        STATE["default"] = default
        entry(encoder, nodes)
        assert spelled in encoder._entries["Changing"][1]
    STATE["extra"] = {"x": 1, "y": 2}
    entry(encoder, nodes)
    STATE["extra"] = {"y": 2, "x": 1}
    assert list(entry(encoder, nodes)["input"]["required"]["choice"][1]) == ["y", "x", "multiselect", "options"]


def test_enums_and_objects_among_the_attributes_are_fingerprinted():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    STATE["display"] = io.NumberDisplay.slider
    assert entry(encoder, nodes)["input"]["required"]["value"][1]["display"] == "slider"
    assert declaration_key(declare("Changing", Changing, nodes)) is not None
    STATE["display"] = io.NumberDisplay.number
    assert entry(encoder, nodes)["input"]["required"]["value"][1]["display"] == "number"
    remote = io.RemoteOptions(route="/models", refresh_button=True)
    STATE["remote"] = remote
    assert entry(encoder, nodes)["input"]["required"]["choice"][1]["remote"]["route"] == "/models"
    remote.route = "/other"  # the same object, changed in place
    assert entry(encoder, nodes)["input"]["required"]["choice"][1]["remote"]["route"] == "/other"


def test_finalizing_a_shared_schema_part_and_flags_count():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    # One Output object reused by every define_schema call: finalize gives it an id the first time.
    STATE["outputs"] = [io.Int.Output(display_name="sum")]
    first = entry(encoder, nodes)
    assert entry(encoder, nodes) == first == entry(encoder, nodes)
    STATE["output_node"] = True
    assert entry(encoder, nodes)["input"]["hidden"] == {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}
    STATE["output_node"] = False
    assert "hidden" not in entry(encoder, nodes)["input"]


def test_a_schema_that_becomes_invalid_is_left_out():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    entry(encoder, nodes)
    STATE["outputs"] = [io.Int.Output("same"), io.Int.Output("same")]
    assert json.loads(encoder.encode(nodes)) == {}
    STATE.pop("outputs")
    assert entry(encoder, nodes)["output"] == ["INT"]


def test_registered_display_name_and_module_count():
    STATE.clear()
    nodes, encoder = registry(), ObjectInfoEncoder()
    assert entry(encoder, nodes)["display_name"] is None
    nodes.display_names["Changing"] = "Changing label"
    assert entry(encoder, nodes)["display_name"] == "Changing label"
    nodes.modules["Changing"] = "custom_nodes.elsewhere"
    assert entry(encoder, nodes)["python_module"] == "custom_nodes.elsewhere"
