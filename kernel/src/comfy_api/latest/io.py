"""The schema node API: nodes declared by ``define_schema()`` and run through ``execute()``.

Every ``ComfyNode`` subclass also shows the classic interface (``INPUT_TYPES``, ``RETURN_TYPES``,
``FUNCTION``...) derived from its schema, so the executor needs to know only one kind of node.
Names, parameters and the ``/object_info`` shape follow ComfyUI's ``comfy_api.latest.io``.
"""
from __future__ import annotations

import contextvars
import inspect
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, Iterable, Literal, Optional, TypeVar, Union

from comfy_execution.graph_utils import ExecutionBlocker


def _pruned(values: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI leaves unset options out of input specs rather than sending nulls."""
    return {key: value for key, value in values.items() if value is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    """Which upload widget a combo gets; the value is the spec key the frontend looks for."""
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    """Options of a combo whose choices the frontend fetches from ``route``."""

    def __init__(self, route: str, refresh_button: bool,
                 control_after_refresh: Literal["first", "last"] = "first", timeout: Optional[int] = None,
                 max_retries: Optional[int] = None, refresh: Optional[int] = None):
        self.route = route
        self.refresh_button = refresh_button
        self.control_after_refresh = control_after_refresh
        self.timeout = timeout
        self.max_retries = max_retries
        self.refresh = refresh

    def as_dict(self) -> dict[str, Any]:
        return _pruned({"route": self.route, "refresh_button": self.refresh_button,
                        "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                        "max_retries": self.max_retries, "refresh": self.refresh})


# -- inputs and outputs ----------------------------------------------------------------------------

class Input:
    """One input socket of a node; ``io_type`` comes from the type class it belongs to."""
    io_type: ClassVar[str] = "*"
    Parent: ClassVar[Optional[type]] = None

    def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                 tooltip: Optional[str] = None, lazy: Optional[bool] = None, extra_dict: Optional[dict] = None,
                 raw_link: Optional[bool] = None, advanced: Optional[bool] = None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}
        self.raw_link = raw_link
        self.advanced = advanced

    def spec_items(self) -> list[tuple[str, Any]]:
        """The spec's options in order; subclasses add theirs. A later non-None value wins a repeated key."""
        return [("display_name", self.display_name), ("optional", self.optional), ("tooltip", self.tooltip),
                ("lazy", self.lazy), ("rawLink", self.raw_link), ("advanced", self.advanced),
                *self.extra_dict.items()]

    def as_dict(self) -> dict[str, Any]:
        # One pass over flat pairs: /object_info builds thousands of these per request.
        return {key: value for key, value in self.spec_items() if value is not None}

    def get_io_type(self) -> str:
        return self.io_type

    def get_all(self) -> list[Input]:
        return [self]


class WidgetInput(Input):
    """An input that may also be a widget holding a constant."""

    def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                 tooltip: Optional[str] = None, lazy: Optional[bool] = None, default: Any = None,
                 socketless: Optional[bool] = None, widget_type: Optional[str] = None,
                 force_input: Optional[bool] = None, extra_dict: Optional[dict] = None,
                 raw_link: Optional[bool] = None, advanced: Optional[bool] = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def spec_items(self) -> list[tuple[str, Any]]:
        return super().spec_items() + [("default", self.default), ("socketless", self.socketless),
                                       ("widgetType", self.widget_type), ("forceInput", self.force_input)]

    def get_io_type(self) -> str:
        return self.widget_type if self.widget_type is not None else self.io_type


class Output:
    """One output socket of a node."""
    io_type: ClassVar[str] = "*"
    Parent: ClassVar[Optional[type]] = None

    def __init__(self, id: Optional[str] = None, display_name: Optional[str] = None,
                 tooltip: Optional[str] = None, is_output_list: bool = False):
        self.id = id
        self.display_name = display_name if display_name else id
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self) -> dict[str, Any]:
        return _pruned({"display_name": self.display_name or self.id, "tooltip": self.tooltip,
                        "is_output_list": self.is_output_list})

    def get_io_type(self) -> str:
        return self.io_type


# -- types -------------------------------------------------------------------------------------------

class _ComfyType:
    io_type: ClassVar[str] = "*"
    Type: ClassVar[Any] = Any


class ComfyTypeI(_ComfyType):
    """A type with only an input class."""
    Input: ClassVar[type[Input]] = Input


class ComfyTypeIO(ComfyTypeI):
    """A type with input and output classes."""
    Output: ClassVar[type[Output]] = Output


T = TypeVar("T", bound=type)


def comfytype(io_type: str, **kwargs: Any) -> Callable[[T], T]:
    """Class decorator binding ``io_type`` to a type class and to its ``Input`` / ``Output`` classes."""
    def decorate(cls: T) -> T:
        if not issubclass(cls, _ComfyType):
            cls = type(cls.__name__, (cls, ComfyTypeIO),
                       {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
        cls.io_type = io_type
        for role in ("Input", "Output"):
            io_class = getattr(cls, role, None)
            if io_class is None:
                continue
            if role not in cls.__dict__:
                # An inherited Input/Output still belongs to the parent type; bind a copy instead.
                io_class = type(role, (io_class,), {"__module__": cls.__module__,
                                                     "__qualname__": f"{cls.__qualname__}.{role}"})
                setattr(cls, role, io_class)
            io_class.io_type = io_type
            io_class.Parent = cls
        return cls
    return decorate


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A type for a ``io_type`` this module does not name, such as a package's own ``"MY_TYPE"``."""
    return comfytype(io_type)(type(f"Custom[{io_type}]", (ComfyTypeIO,), {"__module__": __name__}))


def _plain_type(name: str, io_type: str) -> type[ComfyTypeIO]:
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__, "__qualname__": name}))


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                     tooltip: Optional[str] = None, lazy: Optional[bool] = None, default: Optional[bool] = None,
                     label_on: Optional[str] = None, label_off: Optional[str] = None,
                     socketless: Optional[bool] = None, force_input: Optional[bool] = None,
                     extra_dict: Optional[dict] = None, raw_link: Optional[bool] = None,
                     advanced: Optional[bool] = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.label_on = label_on
            self.label_off = label_off

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [("label_on", self.label_on), ("label_off", self.label_off)]


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                     tooltip: Optional[str] = None, lazy: Optional[bool] = None, default: Optional[int] = None,
                     min: Optional[int] = None, max: Optional[int] = None, step: Optional[int] = None,
                     control_after_generate: Optional[bool] = None, display_mode: Optional[NumberDisplay] = None,
                     socketless: Optional[bool] = None, force_input: Optional[bool] = None,
                     extra_dict: Optional[dict] = None, raw_link: Optional[bool] = None,
                     advanced: Optional[bool] = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min = min
            self.max = max
            self.step = step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [
                ("min", self.min), ("max", self.max), ("step", self.step),
                ("control_after_generate", self.control_after_generate),
                ("display", NumberDisplay(self.display_mode).value if self.display_mode else None)]


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                     tooltip: Optional[str] = None, lazy: Optional[bool] = None, default: Optional[float] = None,
                     min: Optional[float] = None, max: Optional[float] = None, step: Optional[float] = None,
                     round: Optional[float] = None, display_mode: Optional[NumberDisplay] = None,
                     socketless: Optional[bool] = None, force_input: Optional[bool] = None,
                     extra_dict: Optional[dict] = None, raw_link: Optional[bool] = None,
                     advanced: Optional[bool] = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min = min
            self.max = max
            self.step = step
            self.round = round
            self.display_mode = display_mode

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [
                ("min", self.min), ("max", self.max), ("step", self.step), ("round", self.round),
                ("display", NumberDisplay(self.display_mode).value if self.display_mode else None)]


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                     tooltip: Optional[str] = None, lazy: Optional[bool] = None, multiline: bool = False,
                     placeholder: Optional[str] = None, default: Optional[str] = None,
                     dynamic_prompts: Optional[bool] = None, socketless: Optional[bool] = None,
                     force_input: Optional[bool] = None, extra_dict: Optional[dict] = None,
                     raw_link: Optional[bool] = None, advanced: Optional[bool] = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [("multiline", self.multiline), ("placeholder", self.placeholder),
                                           ("dynamicPrompts", self.dynamic_prompts)]


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        """A choice among ``options`` (a list, or an Enum whose values become the list)."""

        def __init__(self, id: str, options: Union[list[str], list[int], type[Enum], None] = None,
                     display_name: Optional[str] = None, optional: bool = False, tooltip: Optional[str] = None,
                     lazy: Optional[bool] = None, default: Union[str, int, Enum, None] = None,
                     control_after_generate: Optional[bool] = None, upload: Optional[UploadType] = None,
                     image_folder: Optional[FolderType] = None, remote: Optional[RemoteOptions] = None,
                     socketless: Optional[bool] = None, extra_dict: Optional[dict] = None,
                     raw_link: Optional[bool] = None, advanced: Optional[bool] = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                             extra_dict, raw_link, advanced)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder
            self.remote = remote

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [
                ("multiselect", self.multiselect), ("options", self.options),
                ("control_after_generate", self.control_after_generate),
                *([(UploadType(self.upload).value, True)] if self.upload is not None else []),
                ("image_folder", FolderType(self.image_folder).value if self.image_folder else None),
                ("remote", self.remote.as_dict() if self.remote else None)]

    class Output(Output):
        def __init__(self, id: Optional[str] = None, display_name: Optional[str] = None,
                     options: Optional[list[str]] = None, tooltip: Optional[str] = None,
                     is_output_list: bool = False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    """A choice of several among ``options``."""
    Type = list

    class Input(Combo.Input):
        def __init__(self, id: str, options: list[str], display_name: Optional[str] = None, optional: bool = False,
                     tooltip: Optional[str] = None, lazy: Optional[bool] = None,
                     default: Optional[list[str]] = None, placeholder: Optional[str] = None,
                     chip: Optional[bool] = None, control_after_generate: Optional[bool] = None,
                     socketless: Optional[bool] = None, extra_dict: Optional[dict] = None,
                     raw_link: Optional[bool] = None, advanced: Optional[bool] = None):
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless, extra_dict=extra_dict, raw_link=raw_link, advanced=advanced)
            self.multiselect = True
            self.placeholder = placeholder
            self.chip = chip

        def spec_items(self) -> list[tuple[str, Any]]:
            return super().spec_items() + [("multi_select", self.multiselect), ("placeholder", self.placeholder),
                                           ("chip", self.chip)]


# Types that are sockets only: no widget options, just the name the frontend matches links by.
Image = _plain_type("Image", "IMAGE")
Mask = _plain_type("Mask", "MASK")
Latent = _plain_type("Latent", "LATENT")
Conditioning = _plain_type("Conditioning", "CONDITIONING")
Model = _plain_type("Model", "MODEL")
Vae = _plain_type("Vae", "VAE")
Clip = _plain_type("Clip", "CLIP")
ClipVision = _plain_type("ClipVision", "CLIP_VISION")
ClipVisionOutput = _plain_type("ClipVisionOutput", "CLIP_VISION_OUTPUT")
ControlNet = _plain_type("ControlNet", "CONTROL_NET")
StyleModel = _plain_type("StyleModel", "STYLE_MODEL")
Gligen = _plain_type("Gligen", "GLIGEN")
UpscaleModel = _plain_type("UpscaleModel", "UPSCALE_MODEL")
LatentUpscaleModel = _plain_type("LatentUpscaleModel", "LATENT_UPSCALE_MODEL")
Sigmas = _plain_type("Sigmas", "SIGMAS")
Noise = _plain_type("Noise", "NOISE")
Sampler = _plain_type("Sampler", "SAMPLER")
Guider = _plain_type("Guider", "GUIDER")
Audio = _plain_type("Audio", "AUDIO")
Video = _plain_type("Video", "VIDEO")
SVG = _plain_type("SVG", "SVG")
LoraModel = _plain_type("LoraModel", "LORA_MODEL")
LossMap = _plain_type("LossMap", "LOSS_MAP")
Voxel = _plain_type("Voxel", "VOXEL")
Mesh = _plain_type("Mesh", "MESH")
Hooks = _plain_type("Hooks", "HOOKS")
HookKeyframes = _plain_type("HookKeyframes", "HOOK_KEYFRAMES")
TimestepsRange = _plain_type("TimestepsRange", "TIMESTEPS_RANGE")
LatentOperation = _plain_type("LatentOperation", "LATENT_OPERATION")
ModelPatch = _plain_type("ModelPatch", "MODEL_PATCH")
AudioEncoder = _plain_type("AudioEncoder", "AUDIO_ENCODER")
AudioEncoderOutput = _plain_type("AudioEncoderOutput", "AUDIO_ENCODER_OUTPUT")
Photomaker = _plain_type("Photomaker", "PHOTOMAKER")
AnyType = _plain_type("AnyType", "*")


# -- hidden inputs ------------------------------------------------------------------------------------

class Hidden(str, Enum):
    """Values the executor supplies rather than the graph; request them in ``Schema.hidden``."""
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """The hidden values of the running call, as ``cls.hidden.prompt`` etc.; unset ones read as None."""

    def __init__(self, unique_id: Optional[str] = None, prompt: Any = None, extra_pnginfo: Any = None,
                 dynprompt: Any = None, auth_token_comfy_org: Optional[str] = None,
                 api_key_comfy_org: Optional[str] = None, **kwargs: Any):
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        self.auth_token_comfy_org = auth_token_comfy_org
        self.api_key_comfy_org = api_key_comfy_org

    def __getattr__(self, key: str) -> None:
        return None

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> HiddenHolder:
        """From a dict keyed by ``Hidden`` members (or their values, such as ``"PROMPT"``)."""
        return cls(**{Hidden(key).name: value for key, value in (values or {}).items()})


_API_NODE_HIDDEN = (Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org)
_OUTPUT_NODE_HIDDEN = (Hidden.prompt, Hidden.extra_pnginfo)
# Enum attribute access is slow; /object_info reads these for every output node.
_HIDDEN_V1_SPEC = {hidden: (hidden.name, (hidden.value,)) for hidden in Hidden}

_current_hidden: contextvars.ContextVar[HiddenHolder] = contextvars.ContextVar("comfy_hidden",
                                                                                 default=HiddenHolder())


# -- schema ---------------------------------------------------------------------------------------------

@dataclass
class Schema:
    """What a node is: its id, how the frontend shows it, its inputs and outputs and flags."""
    node_id: str
    display_name: Optional[str] = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    """Receive every input as a whole list in one call (classic ``INPUT_IS_LIST``)."""
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    price_badge: Optional[dict] = None
    not_idempotent: bool = False
    """Never reuse another node's cached result for identical inputs."""
    enable_expand: bool = False
    """Allow ``NodeOutput(expand=...)``: the node returns a subgraph to run in its place."""
    essentials_category: Optional[str] = None

    def validate(self) -> None:
        problems = []
        for kind, ids in (("Input", [i.id for item in self.inputs for i in item.get_all()]),
                          ("Output", [o.id for o in self.outputs])):
            if len(set(ids)) == len(ids):
                continue
            repeated = [name for name, count in Counter(ids).items() if count > 1]
            problems.append(f"{kind} ids must be unique, but {repeated} are not.")
        if problems:
            raise ValueError(f"node {self.node_id!r}: " + " ".join(problems))

    def finalize(self) -> None:
        """Add the hidden values output and API nodes need, and ids for outputs without one."""
        self.inputs = self.inputs or []
        self.outputs = self.outputs or []
        hidden = [value if value.__class__ is Hidden else Hidden(value) for value in self.hidden or ()]
        if self.is_api_node:
            hidden += [value for value in _API_NODE_HIDDEN if value not in hidden]
        if self.is_output_node:
            hidden += [value for value in _OUTPUT_NODE_HIDDEN if value not in hidden]
        self.hidden = hidden
        for index, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"


def _v1_inputs(inputs: Iterable[Input]) -> dict[str, dict[str, tuple]]:
    sections: dict[str, dict[str, tuple]] = {"required": {}}
    for item in inputs:
        spec = item.as_dict()
        spec.pop("optional", None)
        sections.setdefault("optional" if item.optional else "required", {})[item.id] = (item.get_io_type(), spec)
    return sections


def _hidden_keys(schema: Schema) -> dict[str, Hidden]:
    """Names under which the executor passes hidden values, clear of the node's own input ids."""
    taken = {item.id for item in schema.inputs}
    return {(f"hidden_{hidden.name}" if hidden.name in taken else hidden.name): hidden
            for hidden in schema.hidden}


class NodeOutput:
    """What ``execute`` returns: output values in order, plus optional ``ui`` and ``expand``."""

    def __init__(self, *args: Any, ui: Union[_UIOutput, dict, None] = None, expand: Optional[dict] = None,
                 block_execution: Optional[str] = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> Optional[tuple]:
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeOutput:
        result = data.get("result") or ()
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*result, ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class _UIOutput:
    """Something a node shows in the frontend; ``as_dict`` gives the ``ui`` payload."""

    def as_dict(self) -> dict:
        raise NotImplementedError


# -- nodes ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ClassicView:
    """A schema node's classic attributes, computed once from its schema."""
    schema: Schema
    return_types: tuple[str, ...]
    return_names: tuple[str, ...]
    output_is_list: tuple[bool, ...]
    output_tooltips: tuple[Optional[str], ...]
    hidden_keys: dict[str, Hidden]


def _classic_view(cls: type[ComfyNode]) -> _ClassicView:
    view = cls.__dict__.get("_comfy_classic_view")
    if view is None:
        schema = cls.GET_SCHEMA()
        outputs = schema.outputs
        view = _ClassicView(schema=schema,
                            return_types=tuple(o.io_type for o in outputs),
                            return_names=tuple(o.display_name or o.io_type for o in outputs),
                            output_is_list=tuple(o.is_output_list for o in outputs),
                            output_tooltips=tuple(o.tooltip or None for o in outputs),
                            hidden_keys=_hidden_keys(schema))
        cls._comfy_classic_view = view
    return view


class _FromSchema:
    """A classic class attribute read off the node's schema on first use."""

    def __init__(self, read: Callable[[_ClassicView], Any]):
        self.read = read

    def __get__(self, instance: Any, owner: type) -> Any:
        if owner.define_schema.__func__ is ComfyNode.define_schema.__func__:
            return self  # the abstract base (or a class without a schema) has no value to show
        return self.read(_classic_view(owner))


class _HiddenOfCurrentCall:
    def __get__(self, instance: Any, owner: type) -> HiddenHolder:
        return _current_hidden.get()


def _enter_call(cls: type, kwargs: dict[str, Any]) -> contextvars.Token:
    """Take the hidden values out of ``kwargs`` and make them this call's ``cls.hidden``."""
    hidden_keys = _classic_view(cls).hidden_keys
    values = {hidden.name: kwargs.pop(key) for key, hidden in hidden_keys.items() if key in kwargs}
    return _current_hidden.set(HiddenHolder(**values))


def _as_classic_hook(raw: Any) -> Any:
    """Wrap a schema node's optional hook so the executor's hidden values reach ``cls.hidden``.

    The wrapper keeps the hook's signature: callers pick which inputs to pass by its argument names.
    """
    is_classmethod = isinstance(raw, classmethod)
    function = raw.__func__ if is_classmethod else raw

    def hook(owner: Any, **kwargs: Any) -> Any:
        token = _enter_call(owner if isinstance(owner, type) else type(owner), kwargs)
        try:
            return function(owner, **kwargs)
        finally:
            _current_hidden.reset(token)

    hook.__name__ = function.__name__
    hook.__qualname__ = function.__qualname__
    hook.__doc__ = function.__doc__
    hook.__signature__ = inspect.signature(function)
    return classmethod(hook) if is_classmethod else hook


# Schema-API hook -> the classic attribute the executor looks for.
_CLASSIC_HOOKS = (("validate_inputs", "VALIDATE_INPUTS"),
                  ("fingerprint_inputs", "IS_CHANGED"),
                  ("check_lazy_status", "check_lazy_status"))


class ComfyNode:
    """Base of schema nodes: override ``define_schema`` and ``execute`` (both classmethods).

    Optional classmethods: ``validate_inputs`` (classic ``VALIDATE_INPUTS``), ``fingerprint_inputs``
    (``IS_CHANGED``) and ``check_lazy_status``. Inside them and ``execute``, ``cls.hidden`` holds the
    hidden values the schema asked for.
    """
    RELATIVE_PYTHON_MODULE: ClassVar[Optional[str]] = None
    FUNCTION: ClassVar[str] = "EXECUTE_NORMALIZED"
    hidden = _HiddenOfCurrentCall()

    RETURN_TYPES = _FromSchema(lambda view: view.return_types)
    RETURN_NAMES = _FromSchema(lambda view: view.return_names)
    OUTPUT_IS_LIST = _FromSchema(lambda view: view.output_is_list)
    OUTPUT_TOOLTIPS = _FromSchema(lambda view: view.output_tooltips)
    INPUT_IS_LIST = _FromSchema(lambda view: view.schema.is_input_list)
    OUTPUT_NODE = _FromSchema(lambda view: view.schema.is_output_node)
    NOT_IDEMPOTENT = _FromSchema(lambda view: view.schema.not_idempotent)
    CATEGORY = _FromSchema(lambda view: view.schema.category)
    DESCRIPTION = _FromSchema(lambda view: view.schema.description)
    DEPRECATED = _FromSchema(lambda view: view.schema.is_deprecated)
    EXPERIMENTAL = _FromSchema(lambda view: view.schema.is_experimental)
    DEV_ONLY = _FromSchema(lambda view: view.schema.is_dev_only)
    API_NODE = _FromSchema(lambda view: view.schema.is_api_node)
    SEARCH_ALIASES = _FromSchema(lambda view: view.schema.search_aliases)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.FUNCTION = "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute) \
            else "EXECUTE_NORMALIZED"
        for schema_name, classic_name in _CLASSIC_HOOKS:
            raw = cls.__dict__.get(schema_name)
            if raw is not None:
                setattr(cls, classic_name, _as_classic_hook(raw))

    @classmethod
    def define_schema(cls) -> Schema:
        """Return this node's ``Schema``."""
        raise NotImplementedError(f"{cls.__name__} defines no define_schema()")

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        """Run the node on its inputs (by input id); return a ``NodeOutput``. May be ``async``."""
        raise NotImplementedError(f"{cls.__name__} defines no execute()")

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        """A fresh, finalized and validated schema."""
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, Any]]:
        """Classic input declaration, from a fresh schema so choice lists stay current."""
        schema = cls.define_schema()
        schema.finalize()
        declared: dict[str, dict[str, Any]] = _v1_inputs(schema.inputs)
        if schema.hidden:
            declared["hidden"] = {key: hidden.value for key, hidden in _hidden_keys(schema).items()}
        return declared

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict[str, Any]:
        return node_info_v1(cls)

    @classmethod
    def EXECUTE_NORMALIZED(cls, **kwargs: Any) -> dict[str, Any]:
        token = _enter_call(cls, kwargs)
        try:
            returned = cls.execute(**kwargs)
        finally:
            _current_hidden.reset(token)
        return _classic_result(cls, returned)

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, **kwargs: Any) -> dict[str, Any]:
        token = _enter_call(cls, kwargs)
        try:
            returned = await cls.execute(**kwargs)
        finally:
            _current_hidden.reset(token)
        return _classic_result(cls, returned)


def _classic_result(cls: type[ComfyNode], returned: Any) -> dict[str, Any]:
    """A classic node's return dict (``result``, ``ui``, ``expand``) for what ``execute`` returned."""
    if returned is None:
        output = NodeOutput()
    elif isinstance(returned, NodeOutput):
        output = returned
    elif isinstance(returned, tuple):
        output = NodeOutput(*returned)
    elif isinstance(returned, dict):
        output = NodeOutput.from_dict(returned)
    elif isinstance(returned, ExecutionBlocker):
        output = NodeOutput(block_execution=returned.message)
    else:
        raise TypeError(f"{cls.__name__}.execute returned {type(returned).__name__}; expected io.NodeOutput")
    classic: dict[str, Any] = {}
    if output.block_execution is not None:
        classic["result"] = (ExecutionBlocker(output.block_execution),) * len(cls.RETURN_TYPES)
    elif output.args:
        classic["result"] = output.args
    if output.ui is not None:
        classic["ui"] = output.ui if isinstance(output.ui, dict) else output.ui.as_dict()
    if output.expand is not None:
        if not _classic_view(cls).schema.enable_expand:
            raise ValueError(f"{cls.__name__} returned expand= but its Schema does not set enable_expand=True")
        classic["expand"] = output.expand
    return classic


def node_info_v1(cls: type[ComfyNode], python_module: Optional[str] = None) -> dict[str, Any]:
    """The node's ``/object_info`` entry, as ComfyUI gives it for schema nodes."""
    return schema_info_v1(cls.GET_SCHEMA(), python_module or cls.RELATIVE_PYTHON_MODULE or "nodes")


def schema_info_v1(schema: Schema, python_module: str) -> dict[str, Any]:
    """The ``/object_info`` entry of a node with this schema (finalized and validated here, in place)."""
    schema.finalize()
    schema.validate()
    declared = _v1_inputs(schema.inputs)
    if schema.hidden:
        declared["hidden"] = dict(_HIDDEN_V1_SPEC[hidden] for hidden in schema.hidden)
    outputs = schema.outputs
    return {
        "input": declared,
        "input_order": {section: list(specs) for section, specs in declared.items()},
        "is_input_list": schema.is_input_list,
        "output": [o.io_type for o in outputs],
        "output_is_list": [o.is_output_list for o in outputs],
        "output_name": [o.display_name or o.io_type for o in outputs],
        "output_tooltips": [o.tooltip or None for o in outputs],
        "output_matchtypes": None,
        "name": schema.node_id,
        "display_name": schema.display_name,
        "description": schema.description,
        "python_module": python_module,
        "category": schema.category,
        "output_node": schema.is_output_node,
        "deprecated": schema.is_deprecated,
        "experimental": schema.is_experimental,
        "dev_only": schema.is_dev_only,
        "api_node": schema.is_api_node,
        "price_badge": schema.price_badge,
        "search_aliases": schema.search_aliases or None,
        "essentials_category": schema.essentials_category,
    }


__all__ = [
    "FolderType", "UploadType", "NumberDisplay", "RemoteOptions",
    "comfytype", "Custom", "Input", "WidgetInput", "Output", "ComfyTypeI", "ComfyTypeIO",
    "Boolean", "Int", "Float", "String", "Combo", "MultiCombo",
    "Image", "Mask", "Latent", "Conditioning", "Model", "Vae", "Clip", "ClipVision", "ClipVisionOutput",
    "ControlNet", "StyleModel", "Gligen", "UpscaleModel", "LatentUpscaleModel", "Sigmas", "Noise", "Sampler",
    "Guider", "Audio", "Video", "SVG", "LoraModel", "LossMap", "Voxel", "Mesh", "Hooks", "HookKeyframes",
    "TimestepsRange", "LatentOperation", "ModelPatch", "AudioEncoder", "AudioEncoderOutput", "Photomaker",
    "AnyType",
    "Hidden", "HiddenHolder", "Schema", "ComfyNode", "NodeOutput", "node_info_v1", "schema_info_v1",
]
