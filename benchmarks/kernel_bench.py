"""Prints the kernel's figures: executor overhead per node, import time and command-line start-up.

Run from a checkout with the kernel installed: python benchmarks/kernel_bench.py
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from comfy.nodes.registry import NodeRegistry
from comfy.transport import InProcessTransport, validate

NODES = 10_000


class Constant:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -2**62, "max": 2**62})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Increment:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value + 1,)


class Sink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value):
        return {"ui": {"value": [value]}}


def chain(length: int) -> dict:
    prompt = {"0": {"class_type": "Constant", "inputs": {"value": 0}}}
    for index in range(1, length - 1):
        prompt[str(index)] = {"class_type": "Increment", "inputs": {"value": [str(index - 1), 0]}}
    prompt["sink"] = {"class_type": "Sink", "inputs": {"value": [str(length - 2), 0]}}
    return prompt


def wide(size: int) -> dict:
    prompt = {}
    for index in range(size // 2):
        prompt[f"c{index}"] = {"class_type": "Constant", "inputs": {"value": index}}
        prompt[f"s{index}"] = {"class_type": "Sink", "inputs": {"value": [f"c{index}", 0]}}
    return prompt


def executor_overhead() -> None:
    registry = NodeRegistry()
    for name, node_class in (("Constant", Constant), ("Increment", Increment), ("Sink", Sink)):
        registry.register("benchmark", name, node_class)
    for label, prompt in (("chain", chain(NODES)), ("wide", wide(NODES))):
        transport = InProcessTransport(registry)
        try:
            for run in ("cold", "cached"):
                started = time.perf_counter()
                validated = validate(registry, prompt)
                validated_at = time.perf_counter()
                outcome = transport.submit(f"{label}-{run}", validated).result()
                finished = time.perf_counter()
                assert outcome.status == "success", outcome.error
                per_node = (finished - started) / len(prompt) * 1e6
                validation = (validated_at - started) / len(prompt) * 1e6
                print(f"executor {label:5} {len(prompt):6} nodes {run:6}: {per_node:6.1f} us/node "
                      f"(validation {validation:.1f} us/node, total {finished - started:.3f} s)")
        finally:
            transport.close()


def best_of(command: list[str], runs: int, **kwargs) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
        times.append(time.perf_counter() - started)
    return min(times)


def import_time() -> None:
    python = sys.executable
    bare = best_of([python, "-c", "pass"], 7)
    for module in ("comfy", "comfy.client.embedded_comfy_client"):
        total = best_of([python, "-c", f"import {module}"], 7)
        print(f"import {module}: {(total - bare) * 1000:.0f} ms (interpreter start {bare * 1000:.0f} ms excluded)")


def command_line_run() -> None:
    with tempfile.TemporaryDirectory() as base:
        nodes = Path(base, "custom_nodes")
        nodes.mkdir()
        (nodes / "bench_nodes.py").write_text(textwrap.dedent("""
            class Echo:
                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"text": ("STRING", {"default": "hello"})}}
                RETURN_TYPES = ()
                FUNCTION = "run"
                OUTPUT_NODE = True
                def run(self, text):
                    return {"ui": {"text": [text]}}
            NODE_CLASS_MAPPINGS = {"Echo": Echo}
        """))
        workflow = Path(base, "workflow.json")
        workflow.write_text(json.dumps({"1": {"class_type": "Echo", "inputs": {"text": "hi"}}}))
        command = [os.path.join(os.path.dirname(sys.executable), "comfyui"), "--cwd", base,
                   "--workflows", str(workflow)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert json.loads(result.stdout.splitlines()[-1]) == {"1": {"text": ["hi"]}}, result.stdout
        runs = [best_of(command, 1, stderr=subprocess.DEVNULL) for _ in range(5)]
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"comfyui --workflows one-node workflow: best {min(runs):.3f} s, median {statistics.median(runs):.3f} s, "
              f"peak memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    executor_overhead()
    import_time()
    command_line_run()
