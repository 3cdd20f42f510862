"""What a running node can reach: its prompt and node ids, progress reporting and interruption."""
from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

Emit = Callable[[str, dict[str, Any]], None]


class InterruptProcessingException(Exception):
    """Raised inside a node when the user interrupts the prompt it belongs to."""


@dataclass
class ExecutionContext:
    """One prompt's run; ``node_id`` follows the node executing now."""
    prompt_id: str
    emit: Emit
    interrupted: threading.Event = field(default_factory=threading.Event)
    node_id: Optional[str] = None
    display_node_id: Optional[str] = None


_current: ContextVar[Optional[ExecutionContext]] = ContextVar("comfy_execution_context", default=None)
# Prompts running now in any executor of this process, for the legacy process-wide interrupt.
_running_contexts: dict[int, ExecutionContext] = {}
_running_lock = threading.Lock()


def current_execution() -> Optional[ExecutionContext]:
    return _current.get()


def enter_execution(context: ExecutionContext) -> Any:
    """Make ``context`` current in this thread and reachable by ``interrupt_current_processing``."""
    with _running_lock:
        _running_contexts[id(context)] = context
    return _current.set(context)


def leave_execution(context: ExecutionContext, token: Any) -> None:
    with _running_lock:
        _running_contexts.pop(id(context), None)
    _current.reset(token)


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt (or clear the interruption of) every prompt running in this process."""
    with _running_lock:
        contexts = list(_running_contexts.values())
    for context in contexts:
        if value:
            context.interrupted.set()
        else:
            context.interrupted.clear()


def processing_interrupted() -> bool:
    context = _current.get()
    return context is not None and context.interrupted.is_set()


def throw_exception_if_processing_interrupted() -> None:
    """Long-running nodes call this between steps so an interrupt takes effect promptly."""
    context = _current.get()
    if context is not None and context.interrupted.is_set():
        raise InterruptProcessingException()
