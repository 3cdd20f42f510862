"""/object_info reuses each node's encoded entry, yet is always what the nodes declare now, byte for byte."""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from comfy.nodes.object_info import object_info
from comfy.nodes.registry import NodeRegistry
from comfy_api.latest import io
from comfyui_server.routes.nodes import ObjectInfoEncoder

# A vanilla pack whose choice list is the checkpoints folder, as CheckpointLoaderSimple's is.
MODEL_LIST_PACK = textwrap.dedent('''
    import folder_paths


    class CacheTestLoader:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

        RETURN_TYPES = ("MODEL",)
        FUNCTION = "load"
        CATEGORY = "cache tests"

        def load(self, ckpt_name):
            return (ckpt_name,)


    NODE_CLASS_MAPPINGS = {"CacheTestLoader": CacheTestLoader}
''')


@pytest.fixture
def base_dir(base_dir: Path) -> Path:
    pack = base_dir / "custom_nodes" / "cache_test_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(MODEL_LIST_PACK)
    (base_dir / "models" / "checkpoints").mkdir(parents=True)
    return base_dir


async def object_info_response(http) -> tuple[bytes, str]:
    async with http.get("/api/object_info") as response:
        assert response.status == 200
        return await response.read(), response.headers["Content-Type"]


async def test_a_new_model_file_is_in_the_next_object_info(server, http):
    checkpoints = server.base / "models" / "checkpoints"

    async def choices() -> list[str]:
        body, _content_type = await object_info_response(http)
        return json.loads(body)["CacheTestLoader"]["input"]["required"]["ckpt_name"][0]

    body, content_type = await object_info_response(http)
    assert content_type == "application/json; charset=utf-8"
    # The list also names known downloadable models; the files on disk are what this test adds.
    assert "tiny.safetensors" not in await choices()

    (checkpoints / "tiny.safetensors").write_bytes(b"x")
    assert "tiny.safetensors" in await choices()
    body, _content_type = await object_info_response(http)
    # What the server sends is what the kernel's builder makes now, encoded as json.dumps does.
    assert body == json.dumps(object_info(server.runner.runtime.registry)).encode()

    (checkpoints / "tiny.safetensors").unlink()
    (checkpoints / "nested").mkdir()
    (checkpoints / "nested" / "other.ckpt").write_bytes(b"x")
    listed = await choices()
    assert "nested/other.ckpt" in listed and "tiny.safetensors" not in listed
    body, _content_type = await object_info_response(http)
    assert body == json.dumps(object_info(server.runner.runtime.registry)).encode()


async def test_per_node_route_matches_the_whole_listing(server, http):
    body, _content_type = await object_info_response(http)
    async with http.get("/api/object_info/CacheTestLoader") as response:
        single = await response.json()
    assert single == {"CacheTestLoader": json.loads(body)["CacheTestLoader"]}


class AnyType(str):
    """The wildcard type many custom node packs declare: a str subclass that equals every type."""

    def __ne__(self, other: object) -> bool:
        return False


# Module-level declarations that the nodes below return as they are, so a test can change them in place.
SHARED = {"required": {"value": ("INT", {"default": 1})}}
STATE = {"calls": 0}


class Counting:
    """Declares a different default on every call."""

    @classmethod
    def INPUT_TYPES(cls):
        STATE["calls"] += 1
        return {"required": {"value": ("INT", {"default": STATE["calls"]})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"


class Shared:
    @classmethod
    def INPUT_TYPES(cls):
        return SHARED

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"


class Wildcard:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": (AnyType("*"),)}}

    RETURN_TYPES = (AnyType("*"),)
    FUNCTION = "run"


class Schema(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="Schema", category="tests",
                         inputs=[io.Combo.Input("choice", options=list(SHARED["required"]))],
                         outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, choice) -> io.NodeOutput:
        return io.NodeOutput(1)


def registry_of(*classes: type) -> NodeRegistry:
    registry = NodeRegistry()
    for node_class in classes:
        registry.register("tests", node_class.__name__, node_class)
    return registry


def encode_twice(encoder: ObjectInfoEncoder, registry: NodeRegistry) -> bytes:
    """The second encoding, checked against the kernel's builder: the first fills the cache."""
    encoder.encode(registry)
    body = encoder.encode(registry)
    assert body == json.dumps(object_info(registry)).encode()
    return body


@pytest.fixture
def shared():
    saved = json.loads(json.dumps(SHARED))
    yield SHARED
    SHARED.clear()
    SHARED.update({section: {name: tuple(spec) for name, spec in specs.items()} for section, specs in saved.items()})


def test_unchanged_entries_are_reused_and_equal_to_json_dumps(shared):
    registry = registry_of(Shared, Wildcard, Schema)
    encoder = ObjectInfoEncoder()
    first = encoder.encode(registry)
    assert first == json.dumps(object_info(registry)).encode()
    # Reused entries are the very bytes of the last answer; the wildcard's str subclass is never cached.
    assert encoder._entries["Shared"][1] in first and set(encoder._entries) == {"Shared", "Schema"}
    assert encode_twice(encoder, registry) == first
    assert encoder.encode(NodeRegistry()) == b"{}"


def test_a_declaration_changed_in_place_is_encoded_again(shared):
    registry = registry_of(Shared, Schema)
    encoder = ObjectInfoEncoder()
    encoder.encode(registry)
    shared["required"]["value"][1]["default"] = 2
    assert json.loads(encode_twice(encoder, registry))["Shared"]["input"]["required"]["value"][1]["default"] == 2
    # Equal under == but not in JSON: 1 and True, 2 and 2.0.
    shared["required"]["value"][1]["default"] = 2.0
    assert b'"default": 2.0' in encode_twice(encoder, registry)
    shared["required"]["value"][1]["default"] = True
    assert b'"default": true' in encode_twice(encoder, registry)
    # Same keys in another order: the frontend's widget order follows it.
    shared["required"]["other"] = ("FLOAT",)
    assert json.loads(encoder.encode(registry))["Shared"]["input_order"]["required"] == ["value", "other"]
    shared["required"] = {"other": ("FLOAT",), "value": shared["required"]["value"]}
    assert json.loads(encode_twice(encoder, registry))["Shared"]["input_order"]["required"] == ["other", "value"]
    assert json.loads(encoder.encode(registry))["Schema"]["input"]["required"]["choice"][1]["options"] == \
        ["other", "value"]


def test_a_new_declaration_on_every_call_is_never_stale():
    encoder = ObjectInfoEncoder()
    registry = registry_of(Counting)
    defaults = [json.loads(encoder.encode(registry))["Counting"]["input"]["required"]["value"][1]["default"]
                for _call in range(3)]
    assert defaults[1:] == [defaults[0] + 1, defaults[0] + 2]


def test_class_attributes_and_labels_count_too(shared):
    registry = registry_of(Shared)
    encoder = ObjectInfoEncoder()
    encoder.encode(registry)
    Shared.CATEGORY = "changed"
    try:
        assert json.loads(encode_twice(encoder, registry))["Shared"]["category"] == "changed"
        Shared.OUTPUT_NODE = True
        assert json.loads(encode_twice(encoder, registry))["Shared"]["output_node"] is True
    finally:
        del Shared.CATEGORY, Shared.OUTPUT_NODE
    assert json.loads(encode_twice(encoder, registry))["Shared"]["category"] == "sd"
    registry.display_names["Shared"] = "Shared label"
    assert json.loads(encode_twice(encoder, registry))["Shared"]["display_name"] == "Shared label"


def test_a_broken_or_unencodable_node_is_left_out_and_logged(caplog):
    class Broken:
        @classmethod
        def INPUT_TYPES(cls):
            raise RuntimeError("cannot list models")

        RETURN_TYPES = ()
        FUNCTION = "run"

    class Unencodable:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": object()})}}

        RETURN_TYPES = ()
        FUNCTION = "run"

    registry = registry_of(Broken, Unencodable, Wildcard)
    with caplog.at_level(logging.ERROR):
        body = ObjectInfoEncoder().encode(registry)
    assert list(json.loads(body)) == ["Wildcard"]
    assert "'Broken'" in caplog.text and "cannot list models" in caplog.text
    assert "'Unencodable'" in caplog.text and "not JSON serializable" in caplog.text
