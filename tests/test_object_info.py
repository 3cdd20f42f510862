"""``/object_info``: ComfyUI's shape, key for key, for classic and schema nodes."""
from __future__ import annotations

import json
import logging
import time

from comfy.nodes.object_info import node_info, object_info
from comfy.nodes.registry import NodeRegistry
from comfy_api.latest import io


class ClassicScale:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE",), "factor": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 8.0}),
                         "method": (["nearest", "bilinear"],)},
            "optional": {"mask": ("MASK",)},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", [])
    RETURN_NAMES = ("scaled", "anything")
    FUNCTION = "scale"
    CATEGORY = "image/upscaling"
    DESCRIPTION = "Scales an image."
    OUTPUT_TOOLTIPS = ("The scaled image.", None)
    EXPERIMENTAL = True


class MinimalClassic:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True


class SchemaScale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SchemaScale",
            display_name="Scale (schema)",
            category="image/upscaling",
            description="Scales an image.",
            search_aliases=["resize"],
            is_output_node=True,
            inputs=[io.Image.Input("image"),
                    io.Float.Input("factor", default=1.0, min=0.1, max=8.0, tooltip="How much"),
                    io.Combo.Input("method", options=["nearest", "bilinear"]),
                    io.Mask.Input("mask", optional=True)],
            outputs=[io.Image.Output(display_name="scaled", tooltip="The scaled image."),
                     io.Int.Output("width", is_output_list=True)],
        )

    @classmethod
    def execute(cls, image, factor, method, mask=None) -> io.NodeOutput:
        return io.NodeOutput(image, 1)


def registry_of(**classes: type) -> NodeRegistry:
    registry = NodeRegistry()
    for name, node_class in classes.items():
        registry.register("tests", name, node_class, display_name=f"{name} label" if name == "ClassicScale" else None,
                          module="custom_nodes.scaling")
    return registry


def test_classic_node_info_is_comfyuis_shape():
    registry = registry_of(ClassicScale=ClassicScale, MinimalClassic=MinimalClassic)
    assert node_info("ClassicScale", ClassicScale, registry) == {
        "input": ClassicScale.INPUT_TYPES(),
        "input_order": {"required": ["image", "factor", "method"], "optional": ["mask"], "hidden": ["unique_id"]},
        "is_input_list": False,
        "output": ["IMAGE", "*"],
        "output_is_list": [False, False],
        "output_name": ("scaled", "anything"),
        "name": "ClassicScale",
        "display_name": "ClassicScale label",
        "description": "Scales an image.",
        "python_module": "custom_nodes.scaling",
        "category": "image/upscaling",
        "output_node": False,
        "output_tooltips": ("The scaled image.", None),
        "experimental": True,
        "search_aliases": [],
    }
    minimal = node_info("MinimalClassic", MinimalClassic, registry)
    assert minimal == {
        "input": {"required": {"text": ("STRING", {"multiline": True})}},
        "input_order": {"required": ["text"]},
        "is_input_list": False,
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "MinimalClassic",
        "display_name": "MinimalClassic",
        "description": "",
        "python_module": "custom_nodes.scaling",
        "category": "sd",
        "output_node": True,
        "search_aliases": [],
    }


def test_schema_node_info_is_comfyuis_shape():
    registry = registry_of(SchemaScale=SchemaScale)
    info = node_info("SchemaScale", SchemaScale, registry)
    assert info == {
        "input": {
            "required": {
                "image": ("IMAGE", {}),
                "factor": ("FLOAT", {"tooltip": "How much", "default": 1.0, "min": 0.1, "max": 8.0}),
                "method": ("COMBO", {"multiselect": False, "options": ["nearest", "bilinear"]}),
            },
            "optional": {"mask": ("MASK", {})},
            "hidden": {"prompt": ("PROMPT",), "extra_pnginfo": ("EXTRA_PNGINFO",)},
        },
        "input_order": {"required": ["image", "factor", "method"], "optional": ["mask"],
                        "hidden": ["prompt", "extra_pnginfo"]},
        "is_input_list": False,
        "output": ["IMAGE", "INT"],
        "output_is_list": [False, True],
        "output_name": ["scaled", "width"],
        "output_tooltips": ["The scaled image.", None],
        "output_matchtypes": None,
        "name": "SchemaScale",
        "display_name": "Scale (schema)",
        "description": "Scales an image.",
        "python_module": "custom_nodes.scaling",
        "category": "image/upscaling",
        "output_node": True,
        "deprecated": False,
        "experimental": False,
        "dev_only": False,
        "api_node": False,
        "price_badge": None,
        "search_aliases": ["resize"],
        "essentials_category": None,
    }
    # What the server sends is plain JSON.
    assert json.loads(json.dumps(info))["input"]["hidden"]["prompt"] == ["PROMPT"]


def test_input_order_follows_the_declaration():
    names = [f"input_{index}" for index in (5, 1, 9, 3, 7, 2)]

    class Ordered:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {name: ("INT",) for name in names}, "optional": {"z": ("INT",), "a": ("INT",)}}

        RETURN_TYPES = ()
        FUNCTION = "f"

    info = node_info("Ordered", Ordered, registry_of(Ordered=Ordered))
    assert info["input_order"] == {"required": names, "optional": ["z", "a"]}
    assert list(info["input"]["required"]) == names


def test_a_broken_node_is_left_out_and_logged(caplog):
    class Broken:
        @classmethod
        def INPUT_TYPES(cls):
            raise RuntimeError("cannot list models")

        RETURN_TYPES = ()
        FUNCTION = "f"

    registry = registry_of(MinimalClassic=MinimalClassic, Broken=Broken, SchemaScale=SchemaScale)
    with caplog.at_level(logging.ERROR):
        info = object_info(registry)
    assert list(info) == ["MinimalClassic", "SchemaScale"]
    assert "'Broken'" in caplog.text and "cannot list models" in caplog.text


def test_object_info_for_five_thousand_node_types_is_quick():
    registry = NodeRegistry()
    for index in range(5000):
        node_class = SchemaScale if index % 10 == 0 else ClassicScale
        registry.register("tests", f"Node{index}", node_class)
    started = time.perf_counter()
    info = object_info(registry)
    elapsed = time.perf_counter() - started
    assert len(info) == 5000 and info["Node10"]["name"] == "Node10"
    # A sanity bound only; benchmarks/ measures the real figure.
    assert elapsed < 1.0, f"object_info took {elapsed:.3f} s"
