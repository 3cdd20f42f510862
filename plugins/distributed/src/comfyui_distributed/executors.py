"""Where a worker runs its prompts (``--executor-factory``).

``ThreadPoolExecutor``: on the kernel's in-process transport, so node outputs stay cached between
prompts. ``ProcessPoolExecutor``: each prompt in a child process of its own, started (nodes loaded)
while the previous prompt runs; its exit frees everything it held, GPU memory included.
Either way the prompt is validated again against this worker's nodes first.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import multiprocessing
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from comfy.graph import PromptValidationError, full_type_name
from comfy.nodes.registry import NodeRegistry
from comfy.transport import InProcessTransport, validate

from comfyui_distributed.protocol import Outgoing, PromptJob, PromptReply, encode_event, error_payload

logger = logging.getLogger(__name__)

Emit = Callable[[Outgoing], None]


@dataclass
class RunResult:
    reply: PromptReply
    # Set when the prompt is refused rather than run (it fails validation here): why, for the dead letter.
    rejection: Optional[str] = None


class Runner(Protocol):
    """Runs one prompt at a time for a worker."""

    async def run(self, job: PromptJob, emit: Emit) -> RunResult:
        """Validate and run ``job``; ``emit`` (callable from any thread) gets its events in order."""

    def interrupt(self, prompt_id: str) -> None:
        """Stop ``prompt_id`` if it is the prompt running."""

    def close(self) -> None:
        """Stop the running prompt and free what the runner holds."""


def run_prompt(registry: NodeRegistry, transport: InProcessTransport, job: PromptJob, emit: Emit) -> RunResult:
    """Validate ``job`` against ``registry`` and run it on ``transport``, blocking until it ends."""
    try:
        validated = validate(registry, job.prompt, job.outputs_to_execute)
    except PromptValidationError as error:
        return _refused(job, error, emit)

    def listener(event: str, data: dict[str, Any], _client_id: Optional[str]) -> None:
        if data.get("prompt_id") != job.prompt_id:
            return
        if event == "executing" and data.get("node") is None:
            return  # the frontend says "finished" itself, once its own history holds the prompt
        try:
            outgoing = encode_event(job.prompt_id, event, data)
        except (AttributeError, TypeError, ValueError, OSError) as error:  # a preview that is not a PIL image
            logger.warning("Event %s of prompt %s cannot be sent: %s", event, job.prompt_id, error)
            return
        if outgoing is not None:
            emit(outgoing)

    transport.add_listener(listener)
    try:
        outcome = transport.submit(job.prompt_id, validated, job.extra_data).result()
    finally:
        transport.remove_listener(listener)
    # The local history entry has the status messages; the frontend keeps the history, not us.
    entry = transport.queue.get_history(job.prompt_id).get(job.prompt_id)
    transport.queue.delete_history_item(job.prompt_id)
    messages = entry["status"]["messages"] if entry is not None else []
    return RunResult(PromptReply(job.prompt_id, outcome.status, outcome.outputs, outcome.meta, outcome.error, messages))


def _refused(job: PromptJob, error: PromptValidationError, emit: Emit) -> RunResult:
    body = error.body
    summary = body.get("error") or {}
    node_errors = body.get("node_errors") or {}
    node_id = next(iter(node_errors), None)
    text = f"{summary.get('message', 'Invalid prompt')}: {summary.get('details', '')}".rstrip(": ")
    payload = error_payload(job.prompt_id, full_type_name(PromptValidationError), text, node_id,
                            node_errors[node_id].get("class_type") if node_id is not None else None)
    emit(encode_event(job.prompt_id, "execution_error", payload))
    return RunResult(PromptReply(job.prompt_id, "error", error=payload, messages=[["execution_error", payload]]),
                     rejection=f"the prompt is not valid on this worker: {text}")


class ThreadRunner:
    """Runs prompts on an in-process transport (its worker thread and executor caches)."""

    def __init__(self, registry: NodeRegistry, transport: InProcessTransport,
                 on_close: Optional[Callable[[], None]] = None):
        self.registry = registry
        self.transport = transport
        self._on_close = on_close or transport.close

    async def run(self, job: PromptJob, emit: Emit) -> RunResult:
        return await asyncio.to_thread(run_prompt, self.registry, self.transport, job, emit)

    def interrupt(self, prompt_id: str) -> None:
        self.transport.interrupt(prompt_id)

    def close(self) -> None:
        self._on_close()


def _digest(prompt_id: str) -> bytes:
    """A fixed-size name for a prompt id, to fit the shared interrupt slot."""
    return hashlib.sha1(prompt_id.encode()).hexdigest().encode()


class ProcessRunner:
    """Runs each prompt in a fresh child process (``spawn``: safe with CUDA, nothing inherited).

    The children share two channels with this process, given when each starts: a queue of events
    (ending with ``None`` per prompt, so events always precede the result) and a slot naming the
    prompt to interrupt.
    """

    def __init__(self, configuration: Mapping[str, Any]):
        # The child is a plain kernel with this configuration; it must not become a frontend itself.
        self._configuration = {**configuration, "distributed_queue_frontend": False, "distributed_queue_worker": False}
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.SimpleQueue()
        self._interrupt_slot = self._context.Array("c", 64)
        self._emits: dict[str, tuple[Emit, threading.Event]] = {}
        self._pool = self._new_pool()
        self._pump = threading.Thread(target=self._pump_events, name="comfyui-worker-child-events", daemon=True)
        self._pump.start()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # One prompt per child; Python 3.11 starts the next child as soon as one exits. On 3.10 a
        # new pool per prompt does the same, without the head start.
        per_child = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=self._context, initializer=_child_start,
            initargs=(self._configuration, self._events, self._interrupt_slot), **per_child)

    def _pump_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            prompt_id, outgoing = item
            target = self._emits.get(prompt_id)
            if target is None:
                continue
            emit, finished = target
            if outgoing is None:
                finished.set()
            else:
                emit(outgoing)

    async def run(self, job: PromptJob, emit: Emit) -> RunResult:
        finished = threading.Event()
        self._emits[job.prompt_id] = (emit, finished)
        self._interrupt_slot.value = b""
        try:
            future = self._pool.submit(_child_run, job)
            try:
                result = await asyncio.wrap_future(future)
            except BrokenProcessPool as error:
                logger.error("The child process running prompt %s exited before it finished", job.prompt_id)
                self._pool = self._new_pool()
                payload = error_payload(job.prompt_id, full_type_name(type(error)),
                                        "The process running the prompt exited before it finished (killed, or out "
                                        "of memory?)")
                emit(encode_event(job.prompt_id, "execution_error", payload))
                return RunResult(PromptReply(job.prompt_id, "error", error=payload,
                                             messages=[["execution_error", payload]]))
            # The result came on another pipe than the events: wait for the child's end-of-events mark.
            await asyncio.to_thread(finished.wait, 30)
            return result
        finally:
            self._emits.pop(job.prompt_id, None)
            if sys.version_info < (3, 11):
                self._pool.shutdown(wait=True)
                self._pool = self._new_pool()

    def interrupt(self, prompt_id: str) -> None:
        self._interrupt_slot.value = _digest(prompt_id)

    def close(self) -> None:
        for prompt_id in list(self._emits):
            self.interrupt(prompt_id)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._events.put(None)
        self._pump.join(timeout=5)


@dataclass
class _Child:
    """The kernel of one child process and the prompt it runs."""
    registry: NodeRegistry
    transport: InProcessTransport
    events: Any
    interrupt_slot: Any
    current: Optional[bytes] = None

    def watch_interrupts(self) -> None:
        # A shared slot read a few times a second: cheap, and no signal handling across platforms.
        while True:
            time.sleep(0.05)
            current = self.current
            if current is not None and self.interrupt_slot.value == current:
                self.transport.interrupt()


_child: Optional[_Child] = None


def _child_start(configuration: dict[str, Any], events: Any, interrupt_slot: Any) -> None:
    """Runs in each new child: load the kernel, its plugins and nodes, before a prompt arrives."""
    global _child
    from comfy.cli_args_types import Configuration
    from comfy.cmd.main import configure_logging
    from comfy.plugins import create_plugin_manager
    from comfy.runtime import Runtime

    options = Configuration(configuration)
    configure_logging(options)
    runtime = Runtime.start(options, create_plugin_manager(options.get("disable_plugins") or []))
    _child = _Child(runtime.registry, runtime.transport, events, interrupt_slot)
    threading.Thread(target=_child.watch_interrupts, name="comfyui-child-interrupts", daemon=True).start()


def _child_run(job: PromptJob) -> RunResult:
    child = _child
    assert child is not None, "_child_start runs first in every child"
    child.current = _digest(job.prompt_id)
    try:
        return run_prompt(child.registry, child.transport, job,
                          lambda outgoing: child.events.put((job.prompt_id, outgoing)))
    finally:
        child.current = None
        child.events.put((job.prompt_id, None))


def make_runner(configuration: Any, registry: Optional[NodeRegistry] = None,
                transport: Optional[InProcessTransport] = None,
                on_close: Optional[Callable[[], None]] = None) -> Runner:
    """The runner ``--executor-factory`` names; the thread runner uses ``registry`` and ``transport``."""
    factory = configuration.get("executor_factory") or "ThreadPoolExecutor"
    if factory == "ProcessPoolExecutor":
        return ProcessRunner(configuration)
    if factory != "ThreadPoolExecutor":
        raise ValueError(f"--executor-factory {factory!r}: choose ThreadPoolExecutor or ProcessPoolExecutor")
    if registry is None or transport is None:
        raise ValueError("the thread runner needs this process's node registry and in-process transport")
    return ThreadRunner(registry, transport, on_close)


__all__ = ["Emit", "ProcessRunner", "RunResult", "Runner", "ThreadRunner", "make_runner", "run_prompt"]
