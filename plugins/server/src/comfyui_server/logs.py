"""Recent log lines kept in memory for ``/internal/logs`` and the frontend's terminal panel."""
from __future__ import annotations

import datetime
import logging
import shutil
import threading
from collections import deque
from typing import Callable, Optional, TypedDict

MAX_ENTRIES = 1000


class LogEntry(TypedDict):
    t: str  # ISO time
    m: str  # the formatted message, ending in a newline


class TerminalSize(TypedDict):
    cols: int
    rows: int


class LogBuffer(logging.Handler):
    """A logging handler that keeps the last ``MAX_ENTRIES`` records and tells listeners of new ones."""

    def __init__(self, capacity: int = MAX_ENTRIES):
        super().__init__()
        self.entries: deque[LogEntry] = deque(maxlen=capacity)
        self.listeners: list[Callable[[LogEntry], None]] = []
        self._emitting = threading.local()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # A listener that logs would otherwise feed itself forever.
        if getattr(self._emitting, "active", False):
            return
        self._emitting.active = True
        try:
            entry: LogEntry = {"t": datetime.datetime.fromtimestamp(record.created).isoformat(),
                               "m": self.format(record) + "\n"}
            self.entries.append(entry)
            for listener in list(self.listeners):
                listener(entry)
        finally:
            self._emitting.active = False

    def text(self) -> str:
        return "".join(f"{entry['t']} - {entry['m']}" for entry in list(self.entries))


def terminal_size() -> TerminalSize:
    size = shutil.get_terminal_size()
    return {"cols": size.columns, "rows": size.lines}


_buffer: Optional[LogBuffer] = None


def install_log_buffer() -> LogBuffer:
    """The process's log buffer, attached to the root logger on first use."""
    global _buffer
    if _buffer is None:
        _buffer = LogBuffer()
        logging.getLogger().addHandler(_buffer)
    return _buffer


__all__ = ["LogBuffer", "LogEntry", "TerminalSize", "install_log_buffer", "terminal_size"]
