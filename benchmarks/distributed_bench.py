"""Prints the distributed queue's figures: prompts per second of a fixed-cost CPU workflow through 1, 2
and 4 workers with the scaling efficiency, and the latency the queue adds to a trivial prompt (submit to
result) over in-process execution.

Run from a checkout with the distributed plugin installed and RabbitMQ running:
    python benchmarks/distributed_bench.py [--uri amqp://guest:guest@127.0.0.1] [--cost-ms 200]
The frontend is an embedded ``Comfy()`` in this process; workers are ``comfyui-worker`` processes.
"""
from __future__ import annotations

import argparse
import asyncio
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
from typing import Any

COMFYUI_WORKER = str(Path(sys.executable).with_name("comfyui-worker"))
WORKER_READY = re.compile(r"Worker \S+ takes prompts from queue")

PACK = textwrap.dedent('''
    INT = ("INT", {"default": 0, "min": 0, "max": 2 ** 62})


    class BenchBurn:
        """A fixed amount of pure-Python CPU work: ``iterations`` steps of a linear congruential generator."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"seed": INT, "iterations": INT}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "run"
        CATEGORY = "benchmark"

        def run(self, seed, iterations):
            value = seed
            for _ in range(iterations):
                value = (value * 1103515245 + 12345) & 0x7FFFFFFF
            return (value,)


    class BenchOut:
        """A trivial output node: its input as a UI value."""
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": INT}}

        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True
        CATEGORY = "benchmark"

        def run(self, value):
            return {"ui": {"value": [value]}}


    NODE_CLASS_MAPPINGS = {"BenchBurn": BenchBurn, "BenchOut": BenchOut}
''')


def calibrate(cost_s: float) -> int:
    """Iterations of BenchBurn's loop that take ``cost_s`` of CPU on this machine."""
    iterations, value = 200_000, 1
    started = time.process_time()
    for _ in range(iterations):
        value = (value * 1103515245 + 12345) & 0x7FFFFFFF
    return int(iterations * cost_s / (time.process_time() - started))


def burn_prompt(seed: int, iterations: int) -> dict:
    return {"1": {"class_type": "BenchBurn", "inputs": {"seed": seed, "iterations": iterations}},
            "2": {"class_type": "BenchOut", "inputs": {"value": ["1", 0]}}}


def trivial_prompt(value: int) -> dict:
    return {"1": {"class_type": "BenchOut", "inputs": {"value": value}}}


def start_worker(base: Path, uri: str, queue_name: str) -> subprocess.Popen:
    worker = subprocess.Popen([COMFYUI_WORKER, "--cwd", str(base), "--distributed-queue-connection-uri", uri,
                               "--distributed-queue-name", queue_name],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in worker.stdout:
        if WORKER_READY.search(line):
            threading.Thread(target=lambda: [None for _ in worker.stdout], daemon=True).start()
            return worker
    raise RuntimeError(f"the worker did not start (exit status {worker.wait()})")


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(30)


def configuration(base: Path, uri: str = "", queue_name: str = "") -> Any:
    from comfy.configuration import default_configuration

    options = default_configuration()
    options.update(cwd=str(base), logging_level="WARNING")
    if uri:
        options.update(distributed_queue_frontend=True, distributed_queue_connection_uri=uri,
                       distributed_queue_name=queue_name)
    return options


async def latencies(options: Any, count: int) -> list[float]:
    """Seconds from submit to result of ``count`` trivial prompts, one after another (after a warm-up)."""
    from comfy.client.embedded_comfy_client import Comfy

    async with Comfy(options) as client:
        for value in range(10):
            await client.queue_prompt(trivial_prompt(10 ** 9 + value))
        measured = []
        for value in range(count):
            started = time.perf_counter()
            await client.queue_prompt(trivial_prompt(value))
            measured.append(time.perf_counter() - started)
    return measured


async def throughput(options: Any, prompts: int, iterations: int, seed: int) -> float:
    """Prompts per second with ``prompts`` fixed-cost prompts queued at once."""
    from comfy.client.embedded_comfy_client import Comfy

    async with Comfy(options) as client:
        await client.queue_prompt(burn_prompt(10 ** 9 + seed, 1000))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client.queue_prompt(burn_prompt(seed + index, iterations)) for index in range(prompts)))
        return prompts / (time.perf_counter() - started)


async def delete_layout(uri: str, name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(uri)
    try:
        channel = await connection.channel()
        for queue in (name, f"{name}.dead"):
            await channel.queue_delete(queue)
        for exchange in (f"{name}.progress", f"{name}.control"):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=os.environ.get("COMFYUI_BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1"))
    parser.add_argument("--cost-ms", type=float, default=200, help="CPU time of one workflow")
    parser.add_argument("--prompts-per-worker", type=int, default=12)
    parser.add_argument("--latency-prompts", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each measurement; the best is kept, since other programs share the CPUs")
    arguments = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="comfyui-distributed-bench-"))
    (base / "custom_nodes" / "bench_pack").mkdir(parents=True)
    (base / "custom_nodes" / "bench_pack" / "__init__.py").write_text(PACK)
    queue_name = f"comfyui-bench-{uuid.uuid4().hex[:8]}"
    iterations = calibrate(arguments.cost_ms / 1000)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; workflow: {iterations} loop steps "
          f"= {arguments.cost_ms:.0f} ms of CPU")

    def best_rate(options: Any, prompts: int, seed: int) -> float:
        return max(asyncio.run(throughput(options, prompts, iterations, seed + run * 100))
                   for run in range(arguments.repeat))

    local = best_rate(configuration(base), arguments.prompts_per_worker, 0)
    print(f"in-process: {local:.2f} prompts/s")
    rates: dict[int, float] = {}
    workers: list[subprocess.Popen] = []
    try:
        for count in sorted(arguments.workers):
            while len(workers) < count:
                workers.append(start_worker(base, arguments.uri, queue_name))
            rates[count] = best_rate(configuration(base, arguments.uri, queue_name),
                                     arguments.prompts_per_worker * count, count * 1000)
            efficiency = rates[count] / (rates[min(rates)] * count / min(rates))
            print(f"{count} worker(s): {rates[count]:.2f} prompts/s, scaling efficiency {efficiency:.2f}")
        stop(workers[1:])
        workers = workers[:1]
        in_process = min((asyncio.run(latencies(configuration(base), arguments.latency_prompts))
                          for _ in range(arguments.repeat)), key=statistics.median)
        queued = min((asyncio.run(latencies(configuration(base, arguments.uri, queue_name), arguments.latency_prompts))
                      for _ in range(arguments.repeat)), key=statistics.median)
    finally:
        stop(workers)
        asyncio.run(delete_layout(arguments.uri, queue_name))
    local_ms, queued_ms = statistics.median(in_process) * 1000, statistics.median(queued) * 1000
    p90 = statistics.quantiles(queued, n=10)[-1] * 1000 - statistics.quantiles(in_process, n=10)[-1] * 1000
    print(f"trivial prompt, submit to result: in-process {local_ms:.2f} ms, through the queue {queued_ms:.2f} ms "
          f"(median); added latency {queued_ms - local_ms:.2f} ms median, {p90:.2f} ms at the 90th percentile")


if __name__ == "__main__":
    main()
