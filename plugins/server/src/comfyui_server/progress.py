"""``progress_state`` messages, derived from the kernel's execution events.

The frontend draws per-node progress from ``progress_state``: every node that has started, with its
value, maximum and state (running, finished or error). Pending nodes are left out.
"""
from __future__ import annotations

import threading
from typing import Any, Optional, TypedDict


class NodeProgress(TypedDict):
    value: float
    max: float
    state: str
    node_id: str
    prompt_id: str
    display_node_id: str
    parent_node_id: Optional[str]
    real_node_id: str


class ProgressStateMessage(TypedDict):
    prompt_id: str
    nodes: dict[str, NodeProgress]


class ProgressTracker:
    """Follows each running prompt's nodes; ``update`` returns the message an event calls for."""

    def __init__(self) -> None:
        self._prompts: dict[str, dict[str, NodeProgress]] = {}
        self._lock = threading.Lock()

    def update(self, event: str, data: dict[str, Any]) -> Optional[ProgressStateMessage]:
        prompt_id = data.get("prompt_id")
        if prompt_id is None:
            return None
        with self._lock:
            if event == "execution_start":
                self._prompts[prompt_id] = {}
                return None
            nodes = self._prompts.get(prompt_id)
            if nodes is None:
                return None
            if event == "execution_cached":
                for node_id in data.get("nodes") or []:
                    nodes[str(node_id)] = _node(prompt_id, str(node_id), None, "finished", 1, 1)
            elif event == "executing":
                if data.get("node") is None:
                    return None
                self._finish_running(nodes)
                node_id = str(data["node"])
                nodes[node_id] = _node(prompt_id, node_id, data.get("display_node"), "running", 0, 1)
            elif event == "progress":
                node_id = str(data.get("node"))
                previous = nodes.get(node_id)
                display = previous["display_node_id"] if previous else None
                nodes[node_id] = _node(prompt_id, node_id, display, "running", data.get("value", 0),
                                       data.get("max", 1))
            elif event == "executed":
                node = nodes.get(str(data.get("node")))
                if node is None or node["state"] != "running":
                    return None
                node["state"], node["value"] = "finished", node["max"]
            elif event in ("execution_success", "execution_interrupted", "execution_error"):
                failed = str(data.get("node_id")) if event == "execution_error" else None
                self._finish_running(nodes, failed)
                del self._prompts[prompt_id]
            else:
                return None
            return {"prompt_id": prompt_id, "nodes": {key: dict(value) for key, value in nodes.items()}}

    @staticmethod
    def _finish_running(nodes: dict[str, NodeProgress], failed: Optional[str] = None) -> None:
        for node_id, node in nodes.items():
            if node_id == failed:
                node["state"] = "error"
            elif node["state"] == "running":
                node["state"], node["value"] = "finished", node["max"]


def _node(prompt_id: str, node_id: str, display_node_id: Optional[str], state: str, value: float,
          maximum: float) -> NodeProgress:
    return {"value": value, "max": maximum, "state": state, "node_id": node_id, "prompt_id": prompt_id,
            "display_node_id": str(display_node_id or node_id), "parent_node_id": None, "real_node_id": node_id}


__all__ = ["NodeProgress", "ProgressStateMessage", "ProgressTracker"]
