"""Build API-format graphs from node code, for nodes that expand into subgraphs.

A node returns ``{"result": ..., "expand": builder.finalize()}``; the executor splices the graph in.
Names and id formats follow ComfyUI's ``comfy_execution.graph_utils`` so vanilla nodes work unchanged.
"""
from __future__ import annotations

from typing import Any, Optional


def is_link(obj: Any) -> bool:
    """Whether ``obj`` is an input link: ``[source_node_id: str, output_index: int]``."""
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], (int, float)))


class ExecutionBlocker:
    """Return this in place of an output to stop every node that consumes it.

    ``message`` is reported as the error of the blocked consumers; None blocks them silently.
    """

    def __init__(self, message: Optional[str]):
        self.message = message


class Node:
    """One node of a graph under construction."""

    def __init__(self, id: str, class_type: str, inputs: dict[str, Any]):
        self.id = id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id: Optional[str] = None

    def out(self, index: int) -> list:
        """A link to this node's output ``index``, to pass as another node's input."""
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        """Set an input; None removes it."""
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        """Report progress of this node under another node's id in the user interface."""
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        data: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            data["override_display_id"] = self.override_display_id
        return data


class GraphBuilder:
    """Collects nodes under one id prefix and serializes them as an API-format prompt.

    Without an explicit prefix each builder takes ``"<root>.<call index>.<graph index>."``, where the
    executor sets root and call index (``set_default_prefix``) before calling a node, so graphs built
    by different nodes, calls and builders never share ids.
    """

    _default_prefix_root = ""
    _default_prefix_call_index = 0
    _default_prefix_graph_index = 0

    def __init__(self, prefix: Optional[str] = None):
        self.prefix = GraphBuilder.alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        GraphBuilder._default_prefix_root = prefix_root
        GraphBuilder._default_prefix_call_index = call_index
        GraphBuilder._default_prefix_graph_index = graph_index

    @classmethod
    def alloc_prefix(cls, root: Optional[str] = None, call_index: Optional[int] = None,
                     graph_index: Optional[int] = None) -> str:
        root = GraphBuilder._default_prefix_root if root is None else root
        call_index = GraphBuilder._default_prefix_call_index if call_index is None else call_index
        graph_index = GraphBuilder._default_prefix_graph_index if graph_index is None else graph_index
        GraphBuilder._default_prefix_graph_index += 1
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: Optional[str] = None, **inputs: Any) -> Node:
        """Add a node (or return the one already under this id); ids count up from "1"."""
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        full_id = self.prefix + id
        existing = self.nodes.get(full_id)
        if existing is not None:
            return existing
        node = Node(full_id, class_type, inputs)
        self.nodes[full_id] = node
        return node

    def lookup_node(self, id: str) -> Optional[Node]:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, dict[str, Any]]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Point every link to ``node_id``'s output ``index`` at ``new_value``; None removes those inputs."""
        target = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == target and value[1] == index:
                    node.set_input(key, new_value)

    def remove_node(self, id: str) -> None:
        del self.nodes[self.prefix + id]


def add_graph_prefix(graph: dict[str, dict[str, Any]], outputs: tuple | list,
                     prefix: str) -> tuple[dict[str, dict[str, Any]], tuple]:
    """Prefix every node id of ``graph`` and every link in it and in ``outputs``."""
    def relink(value: Any) -> Any:
        return [prefix + value[0], value[1]] if is_link(value) else value

    new_graph = {
        prefix + node_id: {"class_type": node["class_type"],
                           "inputs": {name: relink(value) for name, value in node.get("inputs", {}).items()}}
        for node_id, node in graph.items()
    }
    return new_graph, tuple(relink(output) for output in outputs)


__all__ = ["ExecutionBlocker", "GraphBuilder", "Node", "add_graph_prefix", "is_link"]
