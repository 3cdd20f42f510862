"""The prompt queue and its history, shared by every transport (embedded, server, distributed)."""
from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypedDict

logger = logging.getLogger(__name__)

# Keys of extra_data that carry credentials: kept out of everything /queue and /history return.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAXIMUM_HISTORY_SIZE = 10000


class HistoryStatus(TypedDict):
    status_str: str
    completed: bool
    messages: list[list[Any]]


class HistoryEntry(TypedDict):
    prompt: list[Any]
    outputs: dict[str, Any]
    status: HistoryStatus
    meta: dict[str, Any]


@dataclass(order=True)
class QueueItem:
    """One queued prompt. Ordered by ``number`` (lower runs first), then by arrival."""
    number: float
    sequence: int
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs_to_execute: list[str] = field(compare=False)
    sensitive: dict[str, Any] = field(compare=False, default_factory=dict)

    def as_tuple(self) -> list[Any]:
        """ComfyUI's 5-item queue/history form: number, id, prompt, extra_data, outputs."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def full_extra_data(self) -> dict[str, Any]:
        """extra_data with credentials put back, for the executor only."""
        return {**self.extra_data, **self.sensitive} if self.sensitive else self.extra_data


class QueueFullError(Exception):
    """The queue already holds ``max_size`` pending prompts."""


class PromptQueue:
    """A priority queue of prompts, the prompts running now, and the history of finished ones.

    Thread-safe: the executor's worker thread takes items while API handlers add and inspect them.
    ``on_change`` callbacks run after every change (a server broadcasts the queue size from there).
    """

    def __init__(self, max_size: int = 0, max_history: int = MAXIMUM_HISTORY_SIZE):
        self.max_size = max_size
        self.max_history = max_history
        self._pending: list[QueueItem] = []
        self._running: dict[str, QueueItem] = {}
        self._history: OrderedDict[str, HistoryEntry] = OrderedDict()
        self._lock = threading.Condition()
        self._counter = itertools.count()
        self._next_number = itertools.count()
        self.on_change: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:  # a listener's fault must not fail the put, get or task_done that triggered it
                logger.exception("Queue change callback %r failed", callback)

    def next_number(self, front: bool = False) -> int:
        """The number a new prompt gets when the client gives none; ``front`` puts it first."""
        number = next(self._next_number)
        return -number if front else number

    def put(self, prompt_id: str, prompt: dict[str, Any], extra_data: Optional[dict[str, Any]] = None,
            outputs_to_execute: Optional[list[str]] = None, number: Optional[float] = None,
            front: bool = False) -> QueueItem:
        extra_data = dict(extra_data or {})
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        # Milliseconds since the epoch, as the fork records it: the jobs API sorts and times jobs by it.
        extra_data.setdefault("create_time", int(time.time() * 1000))
        with self._lock:
            if self.max_size and len(self._pending) >= self.max_size:
                raise QueueFullError(f"The queue is full: {len(self._pending)} prompts are waiting "
                                     f"(--max-queue-size {self.max_size})")
            item = QueueItem(number if number is not None else self.next_number(front), next(self._counter),
                             prompt_id, prompt, extra_data, list(outputs_to_execute or []), sensitive)
            heapq.heappush(self._pending, item)
            self._lock.notify()
        self._changed()
        return item

    def get(self, timeout: Optional[float] = None) -> Optional[QueueItem]:
        """Take the next prompt and mark it running; None if none came within ``timeout``."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._pending, timeout):
                return None
            item = heapq.heappop(self._pending)
            self._running[item.prompt_id] = item
        self._changed()
        return item

    def take(self, prompt_id: str) -> Optional[QueueItem]:
        """Mark one chosen pending prompt running (a remote worker began it); None if it is not pending."""
        with self._lock:
            for index, item in enumerate(self._pending):
                if item.prompt_id == prompt_id:
                    break
            else:
                return None
            self._pending.pop(index)
            heapq.heapify(self._pending)
            self._running[prompt_id] = item
        self._changed()
        return item

    def task_done(self, item: QueueItem, outputs: dict[str, Any], status: HistoryStatus,
                  meta: Optional[dict[str, Any]] = None, on_recorded: Optional[Callable[[], None]] = None) -> None:
        """Record a finished prompt in history; ``on_recorded`` runs after that, before change callbacks."""
        with self._lock:
            self._running.pop(item.prompt_id, None)
            if len(self._history) >= self.max_history:
                self._history.popitem(last=False)
            self._history[item.prompt_id] = {"prompt": item.as_tuple(), "outputs": outputs, "status": status,
                                             "meta": meta or {}}
        if on_recorded is not None:
            on_recorded()
        self._changed()

    def get_current_queue(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) in ComfyUI's tuple form, pending in the order they will run."""
        with self._lock:
            running = [item.as_tuple() for item in self._running.values()]
            pending = [item.as_tuple() for item in sorted(self._pending)]
        return running, pending

    def get_tasks_remaining(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._running)

    def is_running(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self._running

    def delete_queue_item(self, prompt_id: str) -> bool:
        """Remove a pending prompt; False if it is not pending (running prompts are interrupted instead)."""
        with self._lock:
            for index, item in enumerate(self._pending):
                if item.prompt_id == prompt_id:
                    self._pending.pop(index)
                    heapq.heapify(self._pending)
                    break
            else:
                return False
        self._changed()
        return True

    def wipe_queue(self) -> list[str]:
        """Remove every pending prompt; their ids."""
        with self._lock:
            removed = [item.prompt_id for item in self._pending]
            self._pending.clear()
        self._changed()
        return removed

    def get_history(self, prompt_id: Optional[str] = None, max_items: Optional[int] = None,
                    offset: int = -1) -> dict[str, HistoryEntry]:
        """History as ``/history`` returns it: one prompt, or the newest ``max_items`` from ``offset``.

        One prompt's entry is a copy; listings share the stored entries (read them, do not change them),
        since copying thousands of prompts under the lock would stall the worker, as ComfyUI avoids too.
        """
        with self._lock:
            if prompt_id is not None:
                entry = self._history.get(prompt_id)
                return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
            ids = list(self._history)
            if offset < 0 and max_items is not None:
                offset = max(len(ids) - max_items, 0)
            offset = max(offset, 0)
            end = len(ids) if max_items is None else offset + max_items
            return {key: self._history[key] for key in ids[offset:end]}

    def delete_history_item(self, prompt_id: str) -> None:
        with self._lock:
            self._history.pop(prompt_id, None)

    def wipe_history(self) -> None:
        with self._lock:
            self._history.clear()
