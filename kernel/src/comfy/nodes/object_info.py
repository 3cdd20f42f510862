"""``/object_info``: how the frontend learns each node type's inputs, outputs and labels.

The shape is ComfyUI's, key for key, for classic nodes and for schema (``io.ComfyNode``) nodes.
"""
from __future__ import annotations

import itertools
import logging
import marshal
from enum import Enum
from typing import Any, Callable, Iterator, Optional, TypedDict, TypeVar

from typing_extensions import NotRequired

from comfy.nodes.registry import NodeRegistry
from comfy_api.latest.io import ComfyNode, Hidden, Schema, schema_info_v1

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


# What one node type's entry is made from, read fresh: ("classic", INPUT_TYPES(), display name, module,
# RETURN_TYPES, then _OPTIONAL_ATTRIBUTES with ... for an absent one) or ("schema", name, module, registered display
# name, the schema as the node returned it). ``declaration_key`` fingerprints classic ones with marshal, and a schema
# by its objects' classes and attribute values, so an unchanged schema costs no conversion to the classic shape.
Declaration = tuple

_OPTIONAL_ATTRIBUTES = ("INPUT_IS_LIST", "OUTPUT_IS_LIST", "RETURN_NAMES", "DESCRIPTION", "CATEGORY", "OUTPUT_NODE",
                        "OUTPUT_TOOLTIPS", "DEPRECATED", "EXPERIMENTAL", "DEV_ONLY", "API_NODE", "SEARCH_ALIASES",
                        "ESSENTIALS_CATEGORY")
# Version 2 writes every value in full (no back-references, no interning flags), so that equal values always
# give equal keys whatever their reference counts.
_MARSHAL_VERSION = 2
# Version 4 skips an encoding step per string, a third of a schema fingerprint's cost; it marks objects shared
# (reference count above one) and refers back to them, so equal schemas may give unequal keys and miss the cache,
# but equal keys still always mean equal values. Schemas are fresh objects, so misses are rare.
_SCHEMA_MARSHAL_VERSION = 4
# Classic flags ComfyUI only writes when they are set.
_FLAGS = (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"), ("DEV_ONLY", "dev_only"))


def declare(name: str, node_class: type, registry: NodeRegistry) -> Declaration:
    """Read what ``name``'s entry is made from; this calls the node's INPUT_TYPES (or its schema), which may
    list model folders, so it is read again for every ``/object_info``."""
    python_module = registry.modules.get(name) or "nodes"
    if issubclass(node_class, ComfyNode):
        # GET_SCHEMA finalizes and validates too; ``info_from`` does that, on a cache miss only.
        own_schema = node_class.GET_SCHEMA.__func__ is ComfyNode.GET_SCHEMA.__func__
        schema = node_class.define_schema() if own_schema else node_class.GET_SCHEMA()
        return "schema", name, python_module, registry.display_names.get(name), schema
    return ("classic", node_class.INPUT_TYPES(), registry.display_names.get(name, name), python_module,
            node_class.RETURN_TYPES, *[getattr(node_class, attribute, ...) for attribute in _OPTIONAL_ATTRIBUTES])


def info_from(name: str, declaration: Declaration) -> NodeInfo:
    """The ``/object_info`` entry made from a ``declare`` result."""
    if declaration[0] == "schema":
        _kind, _name, python_module, display_name, schema = declaration
        info = schema_info_v1(schema, python_module)
        info["name"] = name
        if info["display_name"] is None:
            info["display_name"] = display_name
        return info
    _kind, declared, display_name, python_module, return_types, *values = declaration
    optional = dict(zip(_OPTIONAL_ATTRIBUTES, values))
    # ComfyUI writes an output typed by an empty choice list as "*" (any type).
    output = [("*" if isinstance(kind, list) and not kind else kind) for kind in return_types]
    info = {
        "input": declared,
        "input_order": {section: list(specs) for section, specs in declared.items()},
        "is_input_list": _given(optional["INPUT_IS_LIST"], False),
        "output": output,
        "output_is_list": _given(optional["OUTPUT_IS_LIST"], [False] * len(output)),
        "output_name": _given(optional["RETURN_NAMES"], output),
        "name": name,
        "display_name": display_name,
        "description": _given(optional["DESCRIPTION"], ""),
        "python_module": python_module,
        "category": _given(optional["CATEGORY"], "sd"),
        "output_node": optional["OUTPUT_NODE"] is True,
    }
    if optional["OUTPUT_TOOLTIPS"] is not ...:
        info["output_tooltips"] = optional["OUTPUT_TOOLTIPS"]
    for attribute, key in _FLAGS:
        if optional[attribute] is not ... and optional[attribute]:
            info[key] = True
    if optional["API_NODE"] is not ...:
        info["api_node"] = optional["API_NODE"]
    info["search_aliases"] = _given(optional["SEARCH_ALIASES"], [])
    if optional["ESSENTIALS_CATEGORY"] is not ...:
        info["essentials_category"] = optional["ESSENTIALS_CATEGORY"]
    return info


def _given(value: Any, default: Any) -> Any:
    return default if value is ... else value


def declaration_key(declaration: Declaration) -> Optional[bytes]:
    """Bytes that are equal for two declarations only when their entries encode to the same JSON (types, values
    and key order count), for caching the encoding; None when a value is not a plain one (a str or dict subclass,
    an object), and then the entry must be encoded afresh."""
    if declaration[0] == "schema":
        return _schema_key(declaration)
    try:
        return marshal.dumps(declaration, _MARSHAL_VERSION)
    except ValueError:
        return None


def _schema_key(declaration: Declaration) -> Optional[bytes]:
    """A schema's fingerprint, taken before ``info_from`` finalizes it. The entry is a function of the schema's
    fields and of each input's and output's class and instance attributes, so those are what is fingerprinted
    (a class by a token never reused; its class attributes, such as ``io_type``, are taken as fixed)."""
    schema = declaration[4]
    if schema.__class__ is not Schema:
        return None  # a subclass may convert differently
    fields = dict(schema.__dict__)
    try:
        fields["inputs"] = [(_class_token(item.__class__), item.__dict__) for item in fields["inputs"] or ()]
        fields["outputs"] = [(_class_token(item.__class__), item.__dict__) for item in fields["outputs"] or ()]
        # Hidden.prompt and "PROMPT" finalize to the same member.
        fields["hidden"] = [value._value_ if value.__class__ is Hidden else value for value in fields["hidden"] or ()]
    except (AttributeError, TypeError):
        return None  # an object without attributes of its own, or a class that takes no token
    try:
        return marshal.dumps((True, declaration[1:4], fields), _SCHEMA_MARSHAL_VERSION)
    except ValueError:
        pass  # an Enum or an object among the attributes: the slower, tagged walk below
    try:
        return marshal.dumps((False, declaration[1:4], _tagged(schema)), _MARSHAL_VERSION)
    except (AttributeError, TypeError, ValueError):
        return None


def _tagged(value: Any) -> Any:
    """``value`` as marshal-able plain values: every tuple it yields starts with a tag saying what it stands for,
    so that distinct values (an object, a user's tuple that looks like one) never give equal bytes."""
    kind = value.__class__
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_tagged(item) for item in value]
    if kind is tuple:
        return (0, *[_tagged(item) for item in value])
    if kind is dict:
        return (1, [(_tagged(key), _tagged(item)) for key, item in value.items()])
    if isinstance(value, Enum):
        return 2, _class_token(kind), _tagged(value._value_)
    if isinstance(value, (str, int, float, bytes, list, tuple, dict)) or hasattr(kind, "__slots__"):
        raise TypeError(f"{kind.__name__} holds state outside its attribute dict")
    return 3, _class_token(kind), _tagged(value.__dict__)


_PLAIN = frozenset((str, int, float, bool, bytes, type(None)))
_TOKENS = itertools.count()


def _class_token(kind: type) -> int:
    """A number for ``kind``, kept on the class itself so that a class created later never gets it."""
    token = kind.__dict__.get("_comfy_object_info_token")
    if token is None:
        token = next(_TOKENS)
        setattr(kind, "_comfy_object_info_token", token)  # TypeError for built-in types: no fingerprint then
    return token


def node_info(name: str, node_class: type, registry: NodeRegistry) -> NodeInfo:
    """The ``/object_info`` entry of the node type registered as ``name``."""
    return info_from(name, declare(name, node_class, registry))


def each_node(registry: NodeRegistry, describe: Callable[[str, Declaration], T]) -> Iterator[tuple[str, T]]:
    """``(name, describe(name, its declaration))`` for every registered node type, in registration order; a node
    whose declaration or description fails is left out and logged."""
    for name, node_class in registry.classes.items():
        try:
            described = describe(name, declare(name, node_class, registry))
        except Exception:  # one broken declaration must not hide every other node from the frontend
            logger.exception("node %r (from %s) failed to describe itself for /object_info", name,
                             registry.sources.get(name, "an unknown source"))
            continue
        yield name, described


def object_info(registry: NodeRegistry) -> dict[str, NodeInfo]:
    """Every registered node type's entry; a node whose declaration fails is left out and logged."""
    return dict(each_node(registry, info_from))


__all__ = ["Declaration", "NodeInfo", "declaration_key", "declare", "each_node", "info_from", "node_info",
           "object_info"]
