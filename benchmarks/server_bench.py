"""Prints the server's figures: /object_info latency with many node types, POST /prompt throughput, the idle gap
between prompts, websocket event latency, and resident memory as prompts accumulate.

Run from a checkout with the server plugin installed: python benchmarks/server_bench.py [--node-types 5000]
It starts ``comfyui --cwd <temporary folder> --port 0`` with a generated custom node pack and talks to it over HTTP.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import aiohttp

COMFYUI = str(Path(sys.executable).with_name("comfyui"))
URL_LINE = re.compile(r"To see the GUI go to: (http://\S+)")

# The generated pack: many small node types for /object_info, and two nodes the measurements run.
PACK = textwrap.dedent('''
    import time

    from comfy_api.latest import io

    INT = ("INT", {"default": 0, "min": 0, "max": 2 ** 62})


    class BenchNoop:
        """A trivial output node: returns its input as a UI value."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": INT}}

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
        CATEGORY = "benchmark"

        def run(self, value):
            return {"ui": {"value": [value]}}


    class BenchStamp:
        """Reports when its work started and finished, by this machine's clock."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": INT}}

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
        CATEGORY = "benchmark"

        def run(self, value):
            started = time.time()
            return {"ui": {"started": [started], "finished": [time.time()]}}


    def _generated(index):
        def run(self, a, b, choice, text):
            return (a + b,)
        return type(f"BenchGenerated{index}", (), {
            "INPUT_TYPES": classmethod(lambda cls: {
                "required": {"a": INT, "b": ("INT", {"default": index, "min": 0, "max": 100000}),
                             "choice": (["one", "two", "three"],), "text": ("STRING", {"multiline": True})},
                "optional": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}),
            "RETURN_TYPES": ("INT",), "RETURN_NAMES": ("sum",), "FUNCTION": "run",
            "CATEGORY": f"benchmark/generated/{index % 50}", "DESCRIPTION": f"Generated node {index}.", "run": run})


    def _generated_schema(index):
        """The same node as a schema (io.ComfyNode) node, whose entry is built from its schema on each request."""
        class Generated(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(
                    node_id=f"BenchSchema{index}", category=f"benchmark/schema/{index % 50}",
                    description=f"Generated schema node {index}.",
                    inputs=[io.Int.Input("a", default=0, min=0, max=2 ** 62),
                            io.Int.Input("b", default=index, min=0, max=100000),
                            io.Combo.Input("choice", options=["one", "two", "three"]),
                            io.String.Input("text", multiline=True),
                            io.Float.Input("scale", default=1.0, min=0.0, max=10.0, step=0.01, optional=True)],
                    outputs=[io.Int.Output(display_name="sum")])

            @classmethod
            def execute(cls, a, b, choice, text, scale=1.0):
                return io.NodeOutput(a + b)

        return Generated


    NODE_CLASS_MAPPINGS = {"BenchNoop": BenchNoop, "BenchStamp": BenchStamp}
    NODE_CLASS_MAPPINGS.update({f"BenchGenerated{i}": _generated(i) for i in range(NODE_TYPES)})
    NODE_CLASS_MAPPINGS.update({f"BenchSchema{i}": _generated_schema(i) for i in range(SCHEMA_NODE_TYPES)})
''')


class Server:
    """A ``comfyui`` process on a free port, with the generated pack."""

    def __init__(self, base: Path, node_types: int, schema_node_types: int = 0):
        pack = base / "custom_nodes" / "bench_pack"
        pack.mkdir(parents=True)
        (pack / "__init__.py").write_text(f"NODE_TYPES = {node_types}\nSCHEMA_NODE_TYPES = {schema_node_types}\n"
                                          + PACK)
        started = time.perf_counter()
        self.process = subprocess.Popen([COMFYUI, "--cwd", str(base), "--port", "0", "--listen", "127.0.0.1"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.output: list[str] = []
        self.url = self._wait_for_url()
        self.start_seconds = time.perf_counter() - started
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()

    def _wait_for_url(self) -> str:
        for line in self.process.stdout:
            self.output.append(line)
            match = URL_LINE.search(line)
            if match:
                return match.group(1).replace("localhost", "127.0.0.1")
        raise RuntimeError("comfyui did not start:\n" + "".join(self.output))

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def summary(values: list[float], unit: str = "ms") -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"median {statistics.median(ordered):.2f} {unit}, p95 {p95:.2f} {unit}, "
            f"min {ordered[0]:.2f} {unit}, max {ordered[-1]:.2f} {unit} (n={len(ordered)})")


def noop(value: int) -> dict[str, Any]:
    return {"1": {"class_type": "BenchNoop", "inputs": {"value": value}}}


def stamp(value: int) -> dict[str, Any]:
    return {"1": {"class_type": "BenchStamp", "inputs": {"value": value}}}


async def wait_until_idle(session: aiohttp.ClientSession, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get("/prompt") as response:
            if (await response.json())["exec_info"]["queue_remaining"] == 0:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("the queue did not empty")


async def object_info(session: aiohttp.ClientSession, node_types: str, repeats: int) -> None:
    timings, size = [], 0
    for _attempt in range(repeats):
        started = time.perf_counter()
        async with session.get("/api/object_info") as response:
            body = await response.read()
        timings.append((time.perf_counter() - started) * 1000)
        size = len(body)
    count = len(json.loads(body))
    print(f"GET /api/object_info with {count} node types ({node_types}), {size / 1e6:.1f} MB:")
    print(f"  first {timings[0]:.1f} ms; then {summary(timings[1:])}")


async def post_throughput(session: aiohttp.ClientSession, prompts: int, concurrency: int, offset: int) -> None:
    """POST /prompt as fast as ``concurrency`` clients can; counts accepted prompts per second."""
    values = iter(range(offset, offset + prompts))
    accepted = 0

    async def poster() -> None:
        nonlocal accepted
        for value in values:
            async with session.post("/prompt", json={"prompt": noop(value)}) as response:
                await response.read()
                accepted += response.status == 200

    started = time.perf_counter()
    await asyncio.gather(*[poster() for _client in range(concurrency)])
    elapsed = time.perf_counter() - started
    print(f"POST /prompt, {prompts} trivial prompts from {concurrency} concurrent client(s): "
          f"{accepted} accepted in {elapsed:.2f} s = {accepted / elapsed:.0f} prompts/s")
    await wait_until_idle(session)


async def read_events(socket: aiohttp.ClientWebSocketResponse, prompts: int,
                      events: dict[str, dict[str, Any]]) -> None:
    """Record, per prompt, when 'executed' arrived, its output, and the lifecycle timestamps; until ``prompts`` end."""
    done = 0
    async for message in socket:
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        arrived = time.time()
        event = json.loads(message.data)
        data = event["data"]
        if not isinstance(data, dict) or "prompt_id" not in data:
            continue
        record = events.setdefault(data["prompt_id"], {})
        if event["type"] == "executed":
            record["received"], record["output"] = arrived, data["output"]
        elif event["type"] in ("execution_start", "execution_success"):
            record[event["type"]] = data["timestamp"]
            done += event["type"] == "execution_success"
            if done == prompts:
                return


async def idle_gaps(server: Server, session: aiohttp.ClientSession, prompts: int, offset: int) -> None:
    """Queue ``prompts`` stamped prompts at once; the idle time between one's end and the next one's start."""
    client_id = uuid.uuid4().hex
    events: dict[str, dict[str, Any]] = {}
    async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as socket:
        await socket.receive()
        reader = asyncio.ensure_future(read_events(socket, prompts, events))
        ids = []
        for value in range(offset, offset + prompts):
            async with session.post("/prompt", json={"prompt": stamp(value), "client_id": client_id}) as response:
                ids.append((await response.json())["prompt_id"])
        await reader
    node_gaps = [(events[after]["output"]["started"][0] - events[before]["output"]["finished"][0]) * 1000
                 for before, after in zip(ids, ids[1:])]
    event_gaps = [events[after]["execution_start"] - events[before]["execution_success"]
                  for before, after in zip(ids, ids[1:])]
    print(f"Idle gap between queued prompts ({prompts} one-node prompts queued back to back):")
    print(f"  node finished -> next prompt's node started: {summary(node_gaps)}")
    print(f"  execution_success -> next execution_start (ms timestamps): {summary(event_gaps)}")


async def event_latency(server: Server, session: aiohttp.ClientSession, prompts: int, offset: int) -> None:
    """One prompt at a time: from the node finishing to its 'executed' message read by the client."""
    client_id = uuid.uuid4().hex
    latencies = []
    async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as socket:
        await socket.receive()
        for value in range(offset, offset + prompts):
            events: dict[str, dict[str, Any]] = {}
            reader = asyncio.ensure_future(read_events(socket, 1, events))
            async with session.post("/prompt", json={"prompt": stamp(value), "client_id": client_id}) as response:
                prompt_id = (await response.json())["prompt_id"]
            await reader
            latencies.append((events[prompt_id]["received"] - events[prompt_id]["output"]["finished"][0]) * 1000)
    print(f"Websocket latency, node finished -> its 'executed' message read by the client, one prompt at a time: "
          f"{summary(latencies)}")


async def memory(server: Server, session: aiohttp.ClientSession, prompts: int, offset: int) -> None:
    """RSS after 100 and after ``prompts`` trivial prompts (each distinct, so each runs and enters the history)."""
    print(f"Resident memory: {server.rss_mib():.1f} MiB before the prompts of this step")
    marks = {}
    for value in range(prompts):
        async with session.post("/prompt", json={"prompt": noop(offset + value)}) as response:
            await response.read()
        if value + 1 in (100, prompts):
            await wait_until_idle(session)
            marks[value + 1] = server.rss_mib()
    print(f"  after 100 trivial prompts: {marks[100]:.1f} MiB; after {prompts}: {marks[prompts]:.1f} MiB; "
          f"growth {marks[prompts] - marks[100]:+.1f} MiB "
          f"({(marks[prompts] - marks[100]) * 1024 / (prompts - 100):.1f} KiB per prompt)")


async def measure(server: Server, arguments: argparse.Namespace) -> None:
    async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=900)) as session:
        # Memory first, while the history holds only these prompts.
        await memory(server, session, arguments.prompts, offset=0)
        generated = f"{arguments.node_types} classic + {arguments.schema_node_types} schema generated"
        await object_info(session, generated, arguments.repeats)
        await post_throughput(session, arguments.prompts, 1, offset=10 ** 6)
        await post_throughput(session, arguments.prompts, 16, offset=2 * 10 ** 6)
        await idle_gaps(server, session, arguments.gap_prompts, offset=3 * 10 ** 6)
        await event_latency(server, session, arguments.gap_prompts, offset=4 * 10 ** 6)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-types", type=int, default=5000, help="generated node types (default 5000)")
    parser.add_argument("--schema-node-types", type=int, default=0,
                        help="generated schema (io.ComfyNode) node types besides those (default 0)")
    parser.add_argument("--prompts", type=int, default=1000, help="prompts for throughput and memory (default 1000)")
    parser.add_argument("--gap-prompts", type=int, default=300, help="prompts for the idle gap and the event latency (default 300)")
    parser.add_argument("--repeats", type=int, default=20, help="GET /object_info repetitions (default 20)")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder), arguments.node_types, arguments.schema_node_types)
        try:
            print(f"comfyui started with {arguments.node_types + arguments.schema_node_types} generated node types "
                  f"in {server.start_seconds:.2f} s "
                  f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
            asyncio.run(measure(server, arguments))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
