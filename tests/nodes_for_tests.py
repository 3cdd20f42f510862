"""Small real node classes for the kernel's tests: no torch, each counts its runs in ``CALLS``."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter

from comfy.execution_context import throw_exception_if_processing_interrupted
from comfy.progress import ProgressBar

# class name -> how many times its FUNCTION ran (each list item counts once).
CALLS: Counter = Counter()
# Set by Spin once it is looping, so a test knows when to interrupt.
SPINNING = threading.Event()

INT_RANGE = {"default": 0, "min": -(10 ** 9), "max": 10 ** 9}


def reset() -> None:
    CALLS.clear()
    SPINNING.clear()
    Versioned.version = 0


class Number:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        CALLS["Number"] += 1
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", INT_RANGE), "b": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, a, b):
        CALLS["Add"] += 1
        return (a + b,)


class Scale:
    """A FLOAT input with bounds, like a sampler's cfg."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE),
                             "factor": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1})}}

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value, factor):
        CALLS["Scale"] += 1
        return (value * factor,)


class Choice:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"color": (["red", "green", "blue"],),
                             "shape": ("COMBO", {"options": ["circle", "square"]})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, color, shape):
        CALLS["Choice"] += 1
        return (f"{color} {shape}",)


class Text:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, text):
        CALLS["Text"] += 1
        return (text,)


class Show:
    """An output node that accepts anything and shows it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, value):
        CALLS["Show"] += 1
        return {"ui": {"value": [value]}}


class ShowInt:
    """An output node that only accepts INT."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, value):
        CALLS["ShowInt"] += 1
        return {"ui": {"value": [value]}}


class Anything:
    """Outputs ``*``: it links to any input."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("*",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        return (value,)


class IntOrString:
    """Outputs a comma union type."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT,STRING",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        return (value,)


class WantsStringOrFloat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING,FLOAT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, value):
        return {"ui": {"value": [value]}}


class Even:
    """VALIDATE_INPUTS with its own failure text; the value is not range-checked by the kernel."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": 0, "max": 10})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value % 2 == 0 else f"{value} is odd"

    def run(self, value):
        return (value,)


class AsyncEven(Even):
    """The same check, written as a coroutine."""

    @classmethod
    async def VALIDATE_INPUTS(cls, value):
        await asyncio.sleep(0)
        return True if value % 2 == 0 else f"{value} is odd"


class TypeAware:
    """VALIDATE_INPUTS asks for input_types: it decides link types itself, so any type may arrive."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        if input_types.get("value") in ("INT", "STRING"):
            return True
        return f"cannot take {input_types.get('value')}"

    def run(self, value):
        return {"ui": {"value": [value]}}


class ValidatesLink:
    """VALIDATE_INPUTS names a linked input: it receives None for it, as in ComfyUI."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE), "label": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    @classmethod
    def VALIDATE_INPUTS(cls, value, label):
        return True if value is None and label else "needs a label"

    def run(self, value, label):
        return {"ui": {"value": [f"{label}={value}"]}}


class Stable:
    """IS_CHANGED answers a constant: cached like any node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    @classmethod
    def IS_CHANGED(cls, value):
        return "same"

    def run(self, value):
        CALLS["Stable"] += 1
        return (value,)


class Volatile:
    """IS_CHANGED answers NaN: runs every time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        CALLS["Volatile"] += 1
        return (value,)


class Versioned:
    """IS_CHANGED answers ``version``: runs again whenever a test bumps it."""
    version = 0

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    @classmethod
    def IS_CHANGED(cls, value):
        return cls.version

    def run(self, value):
        CALLS["Versioned"] += 1
        return (value + self.version,)


class ChangedByLink:
    """IS_CHANGED names a linked input; ComfyUI passes None for it (constants only)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    @classmethod
    def IS_CHANGED(cls, value):
        return "constant" if value is None else value

    def run(self, value):
        CALLS["ChangedByLink"] += 1
        return (value,)


class Switch:
    """Lazy inputs: only the chosen branch is evaluated."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"use_first": ("BOOLEAN", {"default": True}),
                             "first": ("INT", {"lazy": True}),
                             "second": ("INT", {"lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def check_lazy_status(self, use_first, first=None, second=None):
        if use_first:
            return ["first"] if first is None else []
        return ["second"] if second is None else []

    def run(self, use_first, first=None, second=None):
        CALLS["Switch"] += 1
        return (first if use_first else second,)


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE), "message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value, message):
        CALLS["Fail"] += 1
        raise ValueError(message)


class BadReturn:
    """Returns a bare value instead of a tuple: a node bug the executor must report, not choke on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        return value


class UiOnly:
    """Declares an output but returns only UI: consumers get None, as in ComfyUI."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        return {"ui": {"value": [value]}}


class Range:
    """OUTPUT_IS_LIST: one output that is a list of ``count`` items."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 0, "max": 1000}),
                             "start": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, count, start):
        CALLS["Range"] += 1
        return (list(range(start, start + count)),)


class Total:
    """INPUT_IS_LIST: receives whole lists, returns one sum."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, values):
        CALLS["Total"] += 1
        return (sum(values),)


class Double:
    """Expands into an Add of its input with itself (node expansion with plain dicts)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value, unique_id):
        CALLS["Double"] += 1
        add = f"{unique_id}.add"
        return {"result": ([add, 0],), "expand": {add: {"class_type": "Add", "inputs": {"a": value, "b": value}}}}


class CountDown:
    """Recursion by expansion: ``n`` + CountDown(n - 1) until zero."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", INT_RANGE), "total": ("INT", INT_RANGE)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, n, total, unique_id):
        CALLS["CountDown"] += 1
        if n <= 0:
            return (total,)
        child = f"{unique_id}.{n}"
        return {"result": ([child, 0],),
                "expand": {child: {"class_type": "CountDown", "inputs": {"n": n - 1, "total": total + n}}}}


class ExpandToShow:
    """Expands into a graph whose output node shows the value, and passes the value on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value, unique_id):
        number, show = f"{unique_id}.number", f"{unique_id}.show"
        return {"result": ([number, 0],),
                "expand": {number: {"class_type": "Number", "inputs": {"value": value}},
                           show: {"class_type": "Show", "inputs": {"value": [number, 0]}}}}


class Box:
    """An object constant whose repr says nothing of its content, like a large tensor's."""

    def __init__(self, content):
        self.content = content

    def __repr__(self) -> str:
        return "Box(...)"


class ShowBoxed:
    """Expands into a Show whose input is an object constant, as nodes pass tensors on in expansions."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, value, unique_id):
        return {"expand": {f"{unique_id}.show": {"class_type": "Show", "inputs": {"value": Box(value)}}}}


class AsyncDouble:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    async def run(self, value):
        await asyncio.sleep(0.001)
        CALLS["AsyncDouble"] += 1
        return (value * 2,)


class AsyncFlaky:
    """Fails at once for 0; other values finish a little later."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    async def run(self, value):
        if value == 0:
            raise ValueError("zero")
        await asyncio.sleep(0.05)
        CALLS["AsyncFlaky"] += 1
        return (value,)


class Hidden:
    """An output node that shows what its hidden inputs received."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID",
                           "auth_token": "AUTH_TOKEN_COMFY_ORG", "api_key": "API_KEY_COMFY_ORG"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, value, prompt, extra_pnginfo, unique_id, auth_token, api_key):
        return {"ui": {"prompt_nodes": sorted(prompt), "extra_pnginfo": [extra_pnginfo], "unique_id": [unique_id],
                       "auth_token": [auth_token], "api_key": [api_key]}}


class Spin:
    """Loops until the prompt is interrupted."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", INT_RANGE)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, value):
        SPINNING.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            throw_exception_if_processing_interrupted()
            time.sleep(0.002)
        raise TimeoutError("Spin was never interrupted")


class Steps:
    """Reports progress once per step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1, "max": 100})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, steps):
        bar = ProgressBar(steps)
        for _ in range(steps):
            bar.update(1)
        return (steps,)


class Sleep:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, seconds):
        time.sleep(seconds)
        return (seconds,)


class SaveText:
    """Writes a text file to the output directory and shows it the way SaveImage shows images."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""}), "filename": ("STRING", {"default": "out.txt"})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"

    def run(self, text, filename):
        from comfy import paths

        folder = os.path.join(paths.get_output_directory(), "texts")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, filename), "w", encoding="utf-8") as file:
            file.write(text)
        return {"ui": {"texts": [{"filename": filename, "subfolder": "texts", "type": "output"}]}}


class BrokenInputTypes:
    @classmethod
    def INPUT_TYPES(cls):
        raise RuntimeError("INPUT_TYPES is broken")

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "tests"


NODE_CLASS_MAPPINGS: dict[str, type] = {
    cls.__name__: cls for cls in (
        Number, Add, Scale, Choice, Text, Show, ShowInt, Anything, IntOrString, WantsStringOrFloat, Even, AsyncEven,
        TypeAware, ValidatesLink, BadReturn, UiOnly, Stable, Volatile, Versioned, ChangedByLink, Switch, Fail,
        Range, Total, Double, CountDown, ExpandToShow, ShowBoxed, AsyncDouble, AsyncFlaky, Hidden, Spin, Steps,
        Sleep, SaveText, BrokenInputTypes)
}
