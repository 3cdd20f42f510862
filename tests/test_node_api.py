"""The node APIs: schema nodes seen through the classic interface, the classic typing, graph building."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from comfy.nodes.package_typing import CustomNode, InputTypes
from comfy_api.latest import ComfyExtension, IO, UI, io, ui
from comfy_execution.graph_utils import ExecutionBlocker, GraphBuilder, add_graph_prefix, is_link


class Blend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestBlend",
            display_name="Blend",
            category="image/test",
            description="Blends two numbers.",
            inputs=[
                io.Float.Input("a", default=1.0, min=0.0, max=2.0, step=0.1),
                io.Int.Input("times", default=1, min=1, max=8, tooltip="Repeat count"),
                io.Combo.Input("mode", options=["add", "mul"], default="add"),
                io.String.Input("note", multiline=True, optional=True),
                io.Image.Input("image", optional=True, lazy=True),
            ],
            outputs=[io.Float.Output(display_name="value"), io.String.Output("log", is_output_list=True)],
        )

    @classmethod
    def execute(cls, a: float, times: int, mode: str, note: str = "", image=None) -> io.NodeOutput:
        value = a * times if mode == "mul" else a + times
        return io.NodeOutput(value, [note] * times, ui={"text": [f"{value}"]})


class Saver(io.ComfyNode):
    """An output node that reads its hidden values and has an input named like one of them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="TestSaver", is_output_node=True, not_idempotent=True,
                         inputs=[io.AnyType.Input("prompt")], hidden=[io.Hidden.unique_id])

    @classmethod
    async def execute(cls, prompt) -> io.NodeOutput:
        await asyncio.sleep(0)
        own_class = cls.hidden.prompt[cls.hidden.unique_id]["class_type"]
        return io.NodeOutput(ui=ui.PreviewText(f"{prompt}|{cls.hidden.unique_id}|{own_class}"))


class Checked(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="TestChecked", inputs=[io.Int.Input("x"), io.Int.Input("y", lazy=True)],
                         outputs=[io.Int.Output()], hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, x: int, y: int) -> io.NodeOutput:
        return io.NodeOutput(x + y)

    @classmethod
    def validate_inputs(cls, x: int) -> bool | str:
        return True if x >= 0 else f"x must not be negative (node {cls.hidden.unique_id})"

    @classmethod
    def fingerprint_inputs(cls, x: int, y: int = 0) -> str:
        return f"{x}:{cls.hidden.unique_id}"

    @classmethod
    def check_lazy_status(cls, x: int, y: int | None = None) -> list[str]:
        return ["y"] if y is None and x > 0 else []


def test_schema_node_shows_the_classic_interface():
    assert Blend.INPUT_TYPES() == {
        "required": {
            "a": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.1}),
            "times": ("INT", {"tooltip": "Repeat count", "default": 1, "min": 1, "max": 8}),
            "mode": ("COMBO", {"default": "add", "multiselect": False, "options": ["add", "mul"]}),
        },
        "optional": {
            "note": ("STRING", {"multiline": True}),
            "image": ("IMAGE", {"lazy": True}),
        },
    }
    assert Blend.RETURN_TYPES == ("FLOAT", "STRING")
    assert Blend.RETURN_NAMES == ("value", "log")
    assert Blend.OUTPUT_IS_LIST == (False, True)
    assert Blend.OUTPUT_TOOLTIPS == (None, None)
    assert Blend.FUNCTION == "EXECUTE_NORMALIZED"
    assert Blend.CATEGORY == "image/test"
    assert Blend.DESCRIPTION == "Blends two numbers."
    assert (Blend.OUTPUT_NODE, Blend.INPUT_IS_LIST, Blend.NOT_IDEMPOTENT) == (False, False, False)
    # Hooks a node does not define must not appear: the executor decides by their presence.
    for hook in ("VALIDATE_INPUTS", "IS_CHANGED", "check_lazy_status"):
        assert not hasattr(Blend, hook)


def test_schema_node_function_returns_the_classic_dict():
    node = Blend()
    returned = getattr(node, Blend.FUNCTION)(a=0.5, times=2, mode="mul", note="n")
    assert returned == {"result": (1.0, ["n", "n"]), "ui": {"text": ["1.0"]}}


async def test_async_schema_node_gets_its_hidden_values_apart_from_its_inputs():
    assert Saver.FUNCTION == "EXECUTE_NORMALIZED_ASYNC"
    assert Saver.OUTPUT_NODE is True and Saver.NOT_IDEMPOTENT is True
    # Output nodes get PROMPT and EXTRA_PNGINFO; the key for PROMPT steps aside from the input "prompt".
    assert Saver.INPUT_TYPES()["hidden"] == {"unique_id": "UNIQUE_ID", "hidden_prompt": "PROMPT",
                                             "extra_pnginfo": "EXTRA_PNGINFO"}
    coroutine = getattr(Saver(), Saver.FUNCTION)(prompt="cat", unique_id="7",
                                                hidden_prompt={"7": {"class_type": "graph"}}, extra_pnginfo=None)
    assert inspect.isawaitable(coroutine)
    assert await coroutine == {"ui": {"text": ("cat|7|graph",)}}
    assert Saver.hidden.unique_id is None  # outside a call nothing leaks


def test_schema_hooks_become_classic_hooks_that_keep_their_signature():
    assert inspect.getfullargspec(Checked.VALIDATE_INPUTS).args == ["cls", "x"]
    assert Checked.VALIDATE_INPUTS(x=1) is True
    assert Checked.VALIDATE_INPUTS(x=-1, unique_id="4") == "x must not be negative (node 4)"
    # The executor passes hidden values along; the hook sees them only through cls.hidden.
    assert Checked.IS_CHANGED(x=3, y=4, unique_id="9") == "3:9"
    assert Checked().check_lazy_status(x=1, y=None, unique_id="9") == ["y"]
    assert Checked().check_lazy_status(x=1, y=2) == []


def test_node_output_forms():
    class Expanding(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="TestExpanding", outputs=[io.Int.Output(), io.Int.Output()],
                             enable_expand=True)

        @classmethod
        def execute(cls, how: str):
            if how == "expand":
                graph = GraphBuilder("p.")
                node = graph.node("TestChecked", x=1, y=2)
                return io.NodeOutput(node.out(0), node.out(0), expand=graph.finalize())
            if how == "block":
                return io.NodeOutput(block_execution="stopped")
            if how == "tuple":
                return 1, 2
            return None

    run = Expanding().EXECUTE_NORMALIZED
    assert run(how="tuple") == {"result": (1, 2)}
    assert run(how="none") == {}
    expanded = run(how="expand")
    assert expanded["result"] == (["p.1", 0], ["p.1", 0])
    assert expanded["expand"] == {"p.1": {"class_type": "TestChecked", "inputs": {"x": 1, "y": 2}}}
    blocked = run(how="block")["result"]
    assert len(blocked) == 2 and all(isinstance(b, ExecutionBlocker) and b.message == "stopped" for b in blocked)

    with pytest.raises(ValueError, match="enable_expand"):
        class NotExpanding(Expanding):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="TestNotExpanding", outputs=[io.Int.Output()])
        NotExpanding().EXECUTE_NORMALIZED(how="expand")


def test_types_and_options():
    assert [t.io_type for t in (io.Image, io.Mask, io.Latent, io.Conditioning, io.Model, io.Vae, io.Clip,
                                io.Sigmas, io.Noise, io.Sampler, io.Guider, io.AnyType)] == \
        ["IMAGE", "MASK", "LATENT", "CONDITIONING", "MODEL", "VAE", "CLIP", "SIGMAS", "NOISE", "SAMPLER",
         "GUIDER", "*"]
    custom = io.Custom("MY_THING")
    assert custom.Input("t").get_io_type() == "MY_THING" and custom.Output().io_type == "MY_THING"
    # Binding a new type never changes the classes it inherits from.
    assert io.ComfyTypeIO.Input.io_type == "*" and io.Image.Input.io_type == "IMAGE"

    @io.comfytype(io_type="POINTS")
    class Points:
        Type = list
    assert Points.Input("p").get_io_type() == "POINTS" and issubclass(Points, io.ComfyTypeIO)

    upload = io.Combo.Input("image", options=["a.png"], upload=io.UploadType.image,
                            image_folder=io.FolderType.input)
    assert upload.as_dict() == {"optional": False, "multiselect": False, "options": ["a.png"],
                                "image_upload": True, "image_folder": "input"}
    slider = io.Int.Input("n", display_mode=io.NumberDisplay.slider, control_after_generate=True, force_input=True)
    assert slider.as_dict() == {"optional": False, "forceInput": True, "control_after_generate": True,
                                "display": "slider"}
    flag = io.Boolean.Input("on", default=True, label_on="yes", label_off="no")
    assert flag.as_dict() == {"optional": False, "default": True, "label_on": "yes", "label_off": "no"}
    multi = io.MultiCombo.Input("tags", options=["x", "y"], default=["x"], chip=True)
    assert multi.get_io_type() == "COMBO"
    assert multi.as_dict()["multiselect"] is True and multi.as_dict()["multi_select"] is True
    assert IO is io and UI is ui


def test_schema_rejects_repeated_ids():
    class Repeated(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="TestRepeated", inputs=[io.Int.Input("x"), io.Float.Input("x")])

        @classmethod
        def execute(cls, x):
            return io.NodeOutput()

    with pytest.raises(ValueError, match=r"Input ids must be unique, but \['x'\]"):
        Repeated.GET_SCHEMA()


def test_base_class_stays_inert():
    # Documentation tools and loaders probe every attribute of a class; the base must not raise.
    names = dict(inspect.getmembers(io.ComfyNode))
    assert "RETURN_TYPES" in names and "IS_CHANGED" not in names


async def test_extension_is_abstract():
    with pytest.raises(TypeError):
        ComfyExtension()

    class Extension(ComfyExtension):
        async def get_node_list(self):
            return [Blend]

    extension = Extension()
    assert await extension.on_load() is None
    assert await extension.get_node_list() == [Blend]


def test_classic_nodes_can_subclass_the_protocol():
    class Invert(CustomNode):
        @classmethod
        def INPUT_TYPES(cls) -> InputTypes:
            return {"required": {"value": ("INT", {"default": 0, "min": -5, "max": 5})}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "invert"
        CATEGORY = "math"

        def invert(self, value: int) -> tuple[int]:
            return (-value,)

    assert Invert().invert(value=3) == (-3,)
    for optional in ("VALIDATE_INPUTS", "IS_CHANGED", "check_lazy_status", "OUTPUT_NODE", "RETURN_NAMES"):
        assert not hasattr(Invert, optional)


def test_graph_builder_matches_comfyui_ids_and_links():
    GraphBuilder.set_default_prefix("12", 3)
    first, second = GraphBuilder(), GraphBuilder()
    assert (first.prefix, second.prefix) == ("12.3.0.", "12.3.1.")

    graph = GraphBuilder(prefix="x.")
    load = graph.node("Load", name="a")
    scale = graph.node("Scale", id="scale", image=load.out(0), factor=2)
    assert graph.node("Scale", id="scale") is scale
    assert graph.lookup_node("scale") is scale and graph.lookup_node("1") is load
    scale.set_input("factor", None)
    scale.set_override_display_id("5")
    assert graph.finalize() == {
        "x.1": {"class_type": "Load", "inputs": {"name": "a"}},
        "x.scale": {"class_type": "Scale", "inputs": {"image": ["x.1", 0]}, "override_display_id": "5"},
    }
    graph.replace_node_output("1", 0, "constant")
    assert scale.get_input("image") == "constant"
    graph.remove_node("1")
    assert list(graph.finalize()) == ["x.scale"]

    assert is_link(["3", 0]) and not is_link(("3", 0)) and not is_link([3, 0]) and not is_link(["3", "0"])
    prefixed, outputs = add_graph_prefix({"1": {"class_type": "A", "inputs": {"v": ["2", 1], "k": 4}}},
                                         [["1", 0], 7], "p.")
    assert prefixed == {"p.1": {"class_type": "A", "inputs": {"v": ["p.2", 1], "k": 4}}}
    assert outputs == (["p.1", 0], 7)


class Pick(io.ComfyNode):
    """Chooses one of two lazy inputs; only the chosen branch runs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="TestPick", inputs=[io.Boolean.Input("first"), io.Int.Input("a", lazy=True),
                                                     io.Int.Input("b", lazy=True)],
                         outputs=[io.Int.Output()])

    @classmethod
    def check_lazy_status(cls, first: bool, a=None, b=None) -> list[str]:
        return ["a"] if first else ["b"]

    @classmethod
    def execute(cls, first: bool, a=None, b=None) -> io.NodeOutput:
        return io.NodeOutput(a if first else b)


class Twice(io.ComfyNode):
    """Expands into a Checked node adding the input to itself."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="TestTwice", inputs=[io.Int.Input("v")], outputs=[io.Int.Output()],
                         enable_expand=True)

    @classmethod
    def execute(cls, v: int) -> io.NodeOutput:
        graph = GraphBuilder()
        node = graph.node("TestChecked", x=v, y=v)
        return io.NodeOutput(node.out(0), expand=graph.finalize())


def test_schema_nodes_run_through_the_executor():
    from comfy.execution import PromptExecutor
    from comfy.graph import PromptValidationError
    from comfy.nodes.registry import NodeRegistry
    from comfy.transport import validate

    registry = NodeRegistry()
    for node_class in (Checked, Pick, Twice, Saver):
        registry.register("tests", node_class.GET_SCHEMA().node_id, node_class)
    prompt = {
        "1": {"class_type": "TestChecked", "inputs": {"x": 1, "y": 2}},
        "2": {"class_type": "TestChecked", "inputs": {"x": 10, "y": 20}},
        "3": {"class_type": "TestPick", "inputs": {"first": False, "a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "TestTwice", "inputs": {"v": ["3", 0]}},
        "5": {"class_type": "TestSaver", "inputs": {"prompt": ["4", 0]}},
    }
    executor = PromptExecutor(registry)
    try:
        validated = validate(registry, prompt)
        events = []
        outcome = executor.execute(validated.prompt, "p", {}, validated.outputs,
                                   lambda event, data: events.append((event, data)))
    finally:
        executor.close()

    assert outcome.status == "success", outcome.error
    assert outcome.outputs == {"5": {"text": ("60|5|TestSaver",)}}
    ran = [data["node"] for event, data in events if event == "executing" and data["node"] is not None]
    assert "1" not in ran and {"2", "3", "4", "5"} <= set(ran)

    prompt["1"]["inputs"]["x"] = -1
    prompt["3"]["inputs"]["first"] = True
    with pytest.raises(PromptValidationError, match="x must not be negative"):
        validate(registry, prompt)
