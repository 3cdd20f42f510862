"""``/object_info``: how the frontend learns each node type's inputs, outputs and labels.

The shape is ComfyUI's, key for key, for classic nodes and for schema (``io.ComfyNode``) nodes.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, TypedDict

from typing_extensions import NotRequired

from comfy.nodes.registry import NodeRegistry
from comfy_api.latest.io import ComfyNode, node_info_v1

logger = logging.getLogger(__name__)


class NodeInfo(TypedDict):
    """One node type's entry in ``/object_info``."""
    input: dict[str, dict[str, Any]]
    input_order: dict[str, list[str]]
    is_input_list: bool
    output: list[Any]
    output_is_list: list[bool]
    output_name: list[str]
    name: str
    display_name: Optional[str]
    description: str
    python_module: str
    category: str
    output_node: bool
    search_aliases: Optional[list[str]]
    output_tooltips: NotRequired[list[Optional[str]]]
    output_matchtypes: NotRequired[Optional[list[str]]]
    deprecated: NotRequired[bool]
    experimental: NotRequired[bool]
    dev_only: NotRequired[bool]
    api_node: NotRequired[bool]
    price_badge: NotRequired[Optional[dict]]
    essentials_category: NotRequired[Optional[str]]


def node_info(name: str, node_class: type, registry: NodeRegistry) -> NodeInfo:
    """The ``/object_info`` entry of the node type registered as ``name``."""
    python_module = registry.modules.get(name) or "nodes"
    if issubclass(node_class, ComfyNode):
        info = node_info_v1(node_class, python_module)
        info["name"] = name
        if info["display_name"] is None:
            info["display_name"] = registry.display_names.get(name)
        return info

    declared = node_class.INPUT_TYPES()
    # ComfyUI writes an output typed by an empty choice list as "*" (any type).
    output = [("*" if isinstance(kind, list) and not kind else kind) for kind in node_class.RETURN_TYPES]
    info = {
        "input": declared,
        "input_order": {section: list(specs) for section, specs in declared.items()},
        "is_input_list": getattr(node_class, "INPUT_IS_LIST", False),
        "output": output,
        "output_is_list": node_class.OUTPUT_IS_LIST if hasattr(node_class, "OUTPUT_IS_LIST") else [False] * len(output),
        "output_name": node_class.RETURN_NAMES if hasattr(node_class, "RETURN_NAMES") else output,
        "name": name,
        "display_name": registry.display_names.get(name, name),
        "description": getattr(node_class, "DESCRIPTION", ""),
        "python_module": python_module,
        "category": getattr(node_class, "CATEGORY", "sd"),
        "output_node": getattr(node_class, "OUTPUT_NODE", False) is True,
    }
    if hasattr(node_class, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = node_class.OUTPUT_TOOLTIPS
    for attribute, key in _FLAGS:
        if getattr(node_class, attribute, False):
            info[key] = True
    if hasattr(node_class, "API_NODE"):
        info["api_node"] = node_class.API_NODE
    info["search_aliases"] = getattr(node_class, "SEARCH_ALIASES", [])
    if hasattr(node_class, "ESSENTIALS_CATEGORY"):
        info["essentials_category"] = node_class.ESSENTIALS_CATEGORY
    return info


# Classic flags ComfyUI only writes when they are set.
_FLAGS = (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"), ("DEV_ONLY", "dev_only"))


def object_info(registry: NodeRegistry) -> dict[str, NodeInfo]:
    """Every registered node type's entry; a node whose declaration fails is left out and logged."""
    out: dict[str, NodeInfo] = {}
    for name, node_class in registry.classes.items():
        try:
            out[name] = node_info(name, node_class, registry)
        except Exception:  # one broken declaration must not hide every other node from the frontend
            logger.exception("node %r (from %s) failed to describe itself for /object_info", name,
                             registry.sources.get(name, "an unknown source"))
    return out


__all__ = ["NodeInfo", "node_info", "object_info"]
