"""Type hints for the classic node API: what a node class declares and what its function returns.

Subclass ``CustomNode`` (or just match it) to have an editor check a node against the protocol::

    class Invert(CustomNode):
        @classmethod
        def INPUT_TYPES(cls) -> InputTypes:
            return {"required": {"image": ("IMAGE",)}}
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "invert"
        CATEGORY = "image"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, MutableMapping, Protocol, Sequence, Union

from typing_extensions import NotRequired, TypedDict


class IntSpecOptions(TypedDict):
    """Options of an ``("INT", {...})`` input."""
    default: NotRequired[int]
    min: NotRequired[int]
    max: NotRequired[int]
    step: NotRequired[int]
    display: NotRequired[Literal["number", "slider"]]
    control_after_generate: NotRequired[bool]
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]
    forceInput: NotRequired[bool]


class FloatSpecOptions(TypedDict):
    """Options of a ``("FLOAT", {...})`` input; ``round`` is the precision values snap to."""
    default: NotRequired[float]
    min: NotRequired[float]
    max: NotRequired[float]
    step: NotRequired[float]
    round: NotRequired[Union[float, Literal[False]]]
    display: NotRequired[Literal["number", "slider"]]
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]
    forceInput: NotRequired[bool]


class StringSpecOptions(TypedDict):
    """Options of a ``("STRING", {...})`` input; ``dynamicPrompts`` lets the frontend expand ``{a|b}``."""
    default: NotRequired[str]
    multiline: NotRequired[bool]
    placeholder: NotRequired[str]
    dynamicPrompts: NotRequired[bool]
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]
    forceInput: NotRequired[bool]


class BoolSpecOptions(TypedDict):
    """Options of a ``("BOOLEAN", {...})`` input."""
    default: NotRequired[bool]
    label_on: NotRequired[str]
    label_off: NotRequired[str]
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]
    forceInput: NotRequired[bool]


class ComboSpecOptions(TypedDict):
    """Options of a choice input, spelled ``([choices...], {...})`` or ``("COMBO", {"options": [...]})``."""
    options: NotRequired[list[Union[str, int, float]]]
    default: NotRequired[Union[str, int, float]]
    image_upload: NotRequired[bool]
    control_after_generate: NotRequired[bool]
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]


class DefaultSpecOptions(TypedDict):
    """Options any socket input (``"IMAGE"``, ``"MODEL"``...) may carry."""
    tooltip: NotRequired[str]
    lazy: NotRequired[bool]
    rawLink: NotRequired[bool]


IntSpec = tuple[Literal["INT"], IntSpecOptions]
FloatSpec = tuple[Literal["FLOAT"], FloatSpecOptions]
StringSpec = tuple[Literal["STRING"], StringSpecOptions]
BooleanSpec = tuple[Literal["BOOLEAN"], BoolSpecOptions]
ChoiceSpec = Union[tuple[Sequence[Union[str, int, float]]], tuple[Sequence[Union[str, int, float]], ComboSpecOptions],
                   tuple[Literal["COMBO"], ComboSpecOptions]]
SocketSpec = Union[tuple[str], tuple[str, DefaultSpecOptions]]
InputTypeSpec = Union[IntSpec, FloatSpec, StringSpec, BooleanSpec, ChoiceSpec, SocketSpec]

HiddenKind = Literal["PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG",
                     "API_KEY_COMFY_ORG"]


class InputTypes(TypedDict):
    """What ``INPUT_TYPES()`` returns. ``hidden`` maps an argument name to the value the executor fills in."""
    required: NotRequired[dict[str, InputTypeSpec]]
    optional: NotRequired[dict[str, InputTypeSpec]]
    hidden: NotRequired[dict[str, HiddenKind]]


class SaveNodeResult(TypedDict):
    """One file a node wrote, as the ``/view`` route addresses it."""
    filename: str
    subfolder: str
    type: Literal["output", "input", "temp"]


class NodeResult(TypedDict):
    """The dict form of a node function's return value.

    ``result`` is the output tuple; ``ui`` is shown in the frontend and stored in history; ``expand``
    is an API-format graph the executor runs in the node's place (see ``comfy_execution.graph_utils``).
    """
    result: NotRequired[Sequence[Any]]
    ui: NotRequired[dict[str, Any]]
    expand: NotRequired[dict[str, Any]]


ValidateInputsMethod = Callable[..., Union[bool, str]]
IsChangedMethod = Callable[..., Any]


class CustomNode(Protocol):
    """The classic node interface. Only ``INPUT_TYPES``, ``RETURN_TYPES`` and ``FUNCTION`` are required.

    Optional members, looked up with ``getattr`` so that not declaring them means "not used":
    ``RETURN_NAMES``, ``OUTPUT_IS_LIST``, ``INPUT_IS_LIST``, ``OUTPUT_NODE``, ``OUTPUT_TOOLTIPS``,
    ``CATEGORY``, ``DESCRIPTION``, ``DEPRECATED``, ``EXPERIMENTAL``, ``NOT_IDEMPOTENT``,
    ``SEARCH_ALIASES``, and the hooks ``VALIDATE_INPUTS`` (classmethod returning True or an error
    message), ``IS_CHANGED`` (classmethod whose answer changing forces a re-run) and
    ``check_lazy_status`` (method naming the lazy inputs still needed). The optional hooks are
    deliberately not defined here: a subclass must not appear to have them.
    """
    RETURN_TYPES: ClassVar[tuple[Union[str, list], ...]]
    FUNCTION: ClassVar[str]
    RETURN_NAMES: ClassVar[tuple[str, ...]]
    OUTPUT_IS_LIST: ClassVar[tuple[bool, ...]]
    INPUT_IS_LIST: ClassVar[bool]
    OUTPUT_NODE: ClassVar[bool]
    OUTPUT_TOOLTIPS: ClassVar[tuple[str, ...]]
    CATEGORY: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    DEPRECATED: ClassVar[bool]
    EXPERIMENTAL: ClassVar[bool]
    NOT_IDEMPOTENT: ClassVar[bool]
    SEARCH_ALIASES: ClassVar[list[str]]
    VALIDATE_INPUTS: ClassVar[ValidateInputsMethod]
    IS_CHANGED: ClassVar[IsChangedMethod]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes: ...


@dataclass
class ExportedNodes:
    """What one custom node module exports, in ComfyUI's variable names."""
    NODE_CLASS_MAPPINGS: MutableMapping[str, type] = field(default_factory=dict)
    NODE_DISPLAY_NAME_MAPPINGS: MutableMapping[str, str] = field(default_factory=dict)
    # Package name -> absolute folder of the frontend extensions it serves.
    EXTENSION_WEB_DIRS: MutableMapping[str, str] = field(default_factory=dict)

    def update(self, other: ExportedNodes) -> ExportedNodes:
        self.NODE_CLASS_MAPPINGS.update(other.NODE_CLASS_MAPPINGS)
        self.NODE_DISPLAY_NAME_MAPPINGS.update(other.NODE_DISPLAY_NAME_MAPPINGS)
        self.EXTENSION_WEB_DIRS.update(other.EXTENSION_WEB_DIRS)
        return self

    def __len__(self) -> int:
        return len(self.NODE_CLASS_MAPPINGS)


__all__ = [
    "IntSpecOptions", "FloatSpecOptions", "StringSpecOptions", "BoolSpecOptions", "ComboSpecOptions",
    "DefaultSpecOptions", "IntSpec", "FloatSpec", "StringSpec", "BooleanSpec", "ChoiceSpec", "SocketSpec",
    "InputTypeSpec", "HiddenKind", "InputTypes", "SaveNodeResult", "NodeResult", "ValidateInputsMethod",
    "IsChangedMethod", "CustomNode", "ExportedNodes",
]
