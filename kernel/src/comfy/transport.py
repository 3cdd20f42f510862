"""How prompts reach an executor and how results and events come back.

The kernel's default runs prompts in-process on one worker thread. A plugin may return another
``Transport`` from ``comfyui_make_transport`` (a message broker, say); clients and the server only
use the interface below.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import traceback
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from comfy.execution import CACHE_CLASSIC, CACHE_LRU, CACHE_NONE, ExecutionOutcome, PromptExecutor, now_ms
from comfy.graph import PromptValidationError, ValidatedPrompt, Validator, full_type_name, parse_prompt
from comfy.nodes.registry import NodeRegistry
from comfy.queue import HistoryStatus, PromptQueue, QueueItem

logger = logging.getLogger(__name__)

# (event, data, client_id): client_id is extra_data["client_id"] of the prompt, or None.
Listener = Callable[[str, dict[str, Any], Optional[str]], None]

# Events that go into a history entry's status messages, as ComfyUI records them.
STATUS_EVENTS = frozenset({"execution_start", "execution_cached", "execution_success", "execution_error",
                           "execution_interrupted"})
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


class PromptExecutionError(Exception):
    """A prompt failed while running; ``payload`` is ComfyUI's ``execution_error`` data."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        super().__init__(f"{payload.get('exception_type')}: {payload.get('exception_message')} "
                         f"(node {payload.get('node_id')}, {payload.get('node_type')})")


class TransportClosedError(Exception):
    """The transport was closed before the prompt ran."""


class PromptInterruptedError(PromptExecutionError):
    """The prompt was interrupted; ``payload`` is ComfyUI's ``execution_interrupted`` data."""

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload
        Exception.__init__(self, f"Prompt {payload.get('prompt_id')} was interrupted at node {payload.get('node_id')}")


@runtime_checkable
class Transport(Protocol):
    """Queues validated prompts and reports their events and outcomes."""

    queue: PromptQueue

    def submit(self, prompt_id: str, validated: ValidatedPrompt, extra_data: Optional[dict[str, Any]] = None,
               number: Optional[float] = None, front: bool = False) -> "concurrent.futures.Future[ExecutionOutcome]":
        """Queue a prompt; the future completes with its outcome (success, error or interrupted)."""

    def add_listener(self, listener: Listener) -> None:
        """Receive every event of every prompt."""

    def remove_listener(self, listener: Listener) -> None:
        ...

    def delete(self, prompt_id: str) -> bool:
        """Remove a pending prompt (its future is cancelled); False if it is not pending."""

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given)."""

    def close(self) -> None:
        """Stop taking work and free what the transport holds."""


def cache_settings(configuration: Any) -> tuple[str, int]:
    """The cache mode and size that ``--cache-lru``, ``--cache-none`` and ``--cache-classic`` select."""
    lru = getattr(configuration, "cache_lru", 0) or 0
    if lru > 0:
        return CACHE_LRU, lru
    if getattr(configuration, "cache_none", False):
        return CACHE_NONE, 0
    return CACHE_CLASSIC, 0


def validate(registry: NodeRegistry, prompt: Any,
             partial_execution_targets: Optional[list[str]] = None) -> ValidatedPrompt:
    """Parse (dict or JSON text) and validate a prompt; raises ``PromptValidationError``."""
    return Validator(registry).validate(parse_prompt(prompt), partial_execution_targets)


class ListenerList:
    """The listeners of a transport: replaced, never mutated, so emitting threads iterate a stable list."""

    _listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = [existing for existing in self._listeners if existing is not listener]


class InProcessTransport(ListenerList):
    """The default transport: a PromptQueue served by one executor on a worker thread."""

    def __init__(self, registry: NodeRegistry, configuration: Any = None):
        mode, size = cache_settings(configuration)
        self.registry = registry
        self.queue = PromptQueue(max_size=getattr(configuration, "max_queue_size", 0) or 0)
        self.executor = PromptExecutor(registry, mode, size)
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._futures_lock = threading.Lock()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="comfyui-prompt-worker", daemon=True)
        self._worker.start()

    def submit(self, prompt_id: str, validated: ValidatedPrompt, extra_data: Optional[dict[str, Any]] = None,
               number: Optional[float] = None, front: bool = False) -> "concurrent.futures.Future[ExecutionOutcome]":
        if self._stopping.is_set():
            raise TransportClosedError("the transport is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._futures_lock:
            # One future per prompt id: a second submission would leave the first waiting forever.
            if prompt_id in self._futures:
                raise ValueError(f"prompt {prompt_id} is already queued")
            self._futures[prompt_id] = future
        try:
            self.queue.put(prompt_id, validated.prompt, extra_data, validated.outputs, number, front)
        except Exception:
            with self._futures_lock:
                self._futures.pop(prompt_id, None)
            raise
        return future

    def delete(self, prompt_id: str) -> bool:
        """Remove a pending prompt; its future is cancelled."""
        removed = self.queue.delete_queue_item(prompt_id)
        if removed:
            with self._futures_lock:
                future = self._futures.pop(prompt_id, None)
            if future is not None:
                future.cancel()
        return removed

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        context = self.executor.context
        if context is not None and (prompt_id is None or context.prompt_id == prompt_id):
            context.interrupted.set()

    def close(self) -> None:
        self._stopping.set()
        self.interrupt()
        self._worker.join(timeout=30)
        if self._worker.is_alive():
            logger.warning("A node ignores interruption; the prompt worker will stop once it returns")
        with self._futures_lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_exception(TransportClosedError("the transport closed before the prompt ran"))

    def _work(self) -> None:
        try:
            while not self._stopping.is_set():
                item = self.queue.get(timeout=0.2)
                if item is None:
                    continue
                try:
                    self._run(item)
                except Exception as exc:  # e.g. a queue callback failing: fail this prompt, keep serving
                    logger.exception("The prompt worker failed on prompt %s", item.prompt_id)
                    self._fail(item.prompt_id, exc)
        finally:
            # The worker owns the executor (its event loop and caches): it frees them, even after a late stop.
            self.executor.close()

    def _fail(self, prompt_id: str, exc: BaseException) -> None:
        with self._futures_lock:
            future = self._futures.pop(prompt_id, None)
        if future is not None and future.set_running_or_notify_cancel():
            future.set_exception(exc)

    def _run(self, item: QueueItem) -> None:
        client_id = item.extra_data.get("client_id")
        messages: list[list[Any]] = []
        listeners = self._listeners

        def emit(event: str, data: dict[str, Any]) -> None:
            if event in STATUS_EVENTS:
                messages.append([event, data])
            for listener in listeners:
                try:
                    listener(event, data, client_id)
                except Exception:  # one broken listener must not fail the prompt or starve the others
                    logger.exception("Listener %r failed on event %s of prompt %s", listener, event, item.prompt_id)

        try:
            outcome = self.executor.execute(item.prompt, item.prompt_id, item.full_extra_data(),
                                            item.outputs_to_execute, emit)
        except BaseException as exc:  # the executor itself broke: fail this prompt, keep the worker alive
            logger.exception("The executor failed on prompt %s", item.prompt_id)
            outcome = ExecutionOutcome("error", error={
                "prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": str(exc), "exception_type": full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": {}, "current_outputs": [],
                "timestamp": now_ms()})
        status: HistoryStatus = {"status_str": "success" if outcome.status == "success" else "error",
                                 "completed": outcome.status == "success", "messages": messages}
        # ComfyUI's "prompt finished" signal comes once history holds the entry clients then read,
        # and before the queue-changed status.
        self.queue.task_done(item, outcome.outputs, status, outcome.meta, on_recorded=lambda: emit(
            "executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id}))
        with self._futures_lock:
            future = self._futures.pop(item.prompt_id, None)
        if future is not None and future.set_running_or_notify_cancel():
            future.set_result(outcome)


def raise_for_outcome(outcome: ExecutionOutcome) -> None:
    """Turn a failed or interrupted outcome into the matching exception."""
    if outcome.status == "error":
        raise PromptExecutionError(outcome.error or {})
    if outcome.status == "interrupted":
        raise PromptInterruptedError(outcome.error or {})


__all__ = ["InProcessTransport", "Listener", "ListenerList", "PromptExecutionError", "PromptInterruptedError",
           "PromptValidationError", "Transport", "TransportClosedError", "cache_settings", "raise_for_outcome",
           "validate"]
