"""Validation of API-format prompts, with ComfyUI's error shapes; iterative so any depth works."""
from __future__ import annotations

import inspect
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, TypedDict, Union

from comfy.nodes.registry import NodeRegistry

Prompt = dict[str, dict[str, Any]]


class ErrorItem(TypedDict):
    type: str
    message: str
    details: str
    extra_info: dict[str, Any]


class NodeErrors(TypedDict):
    errors: list[ErrorItem]
    dependent_outputs: list[str]
    class_type: str


class ValidationErrorBody(TypedDict):
    """The body ComfyUI answers an invalid prompt with (HTTP 400 on ``POST /prompt``)."""
    error: ErrorItem
    node_errors: dict[str, NodeErrors]


class PromptValidationError(Exception):
    """A prompt that cannot run; ``body`` is ComfyUI's ``{"error": ..., "node_errors": ...}``."""

    def __init__(self, body: ValidationErrorBody):
        self.body = body
        message = body["error"]["message"]
        details = body["error"].get("details")
        super().__init__(f"{message}: {details}" if details else message)


@dataclass
class ValidatedPrompt:
    """A prompt that passed validation: the outputs to execute and errors of the outputs left out."""
    prompt: Prompt
    outputs: list[str]
    node_errors: dict[str, NodeErrors] = field(default_factory=dict)


def error_item(type_: str, message: str, details: str = "", **extra_info: Any) -> ErrorItem:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def is_link(value: Any) -> bool:
    """A ``["node_id", output_index]`` pair, the way API-format prompts link nodes.

    The id is a string, as in ComfyUI, so that a list constant such as ``[1, 2]`` (a widget value the
    frontend sent as ``{"__value__": [1, 2]}``) is never taken for a link; ``parse_prompt`` turns
    numeric ids into strings.
    """
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def normalize_link(value: Any) -> Any:
    """``[1, 0]`` becomes ``["1", 0]``: some clients give node ids as numbers."""
    if isinstance(value, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return [str(value[0]), value[1]]
    return value


def parse_prompt(prompt: Union[str, bytes, Mapping[str, Any]]) -> Prompt:
    """Accept the API-format JSON text or an already decoded dict; node ids become strings."""
    if isinstance(prompt, (str, bytes)):
        try:
            prompt = json.loads(prompt)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
            raise PromptValidationError({
                "error": error_item("invalid_prompt", "Invalid prompt: the text is not JSON", str(exc)),
                "node_errors": {}}) from exc
    if not isinstance(prompt, Mapping):
        raise PromptValidationError({
            "error": error_item("invalid_prompt", "Invalid prompt: expected an object of nodes",
                                f"got {type(prompt).__name__}"),
            "node_errors": {}})
    parsed: Prompt = {}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping):
            raise PromptValidationError({
                "error": error_item("invalid_prompt", "Invalid prompt: a node is not an object",
                                    f"Node ID '#{node_id}'"),
                "node_errors": {}})
        node = dict(node)
        inputs = node.get("inputs")
        node["inputs"] = {name: normalize_link(value) for name, value in inputs.items()} \
            if isinstance(inputs, Mapping) else {}
        parsed[str(node_id)] = node
    return parsed


def input_type_name(spec_type: Any) -> str:
    """A declared input or output type as a comparable name; a list of choices is a COMBO."""
    if isinstance(spec_type, (list, tuple)):
        return "COMBO"
    return str(spec_type)


def types_compatible(received: str, expected: str) -> bool:
    """ComfyUI's rule: ``*`` on either side matches anything; comma unions match when they share a name."""
    if received == expected or received == "*" or expected == "*":
        return True
    if "," not in received and "," not in expected:
        return False
    received_set = {name.strip() for name in received.split(",")}
    expected_set = {name.strip() for name in expected.split(",")}
    return not received_set.isdisjoint(expected_set)


class _ClassInfo:
    """What validation needs from a node class, computed once per class per validation run."""
    __slots__ = ("inputs", "return_types", "validate_params", "validate_takes_kwargs")

    def __init__(self, node_class: type):
        declared = node_class.INPUT_TYPES()
        self.inputs: dict[str, tuple[bool, Any]] = {}
        for name, spec in (declared.get("required") or {}).items():
            self.inputs[name] = (True, spec)
        for name, spec in (declared.get("optional") or {}).items():
            self.inputs[name] = (False, spec)
        self.return_types = tuple(input_type_name(t) for t in getattr(node_class, "RETURN_TYPES", ()))
        validator = getattr(node_class, "VALIDATE_INPUTS", None)
        self.validate_params: Optional[set[str]] = None
        self.validate_takes_kwargs = False
        if validator is not None:
            parameters = inspect.signature(validator).parameters.values()
            self.validate_params = {p.name for p in parameters if p.kind != p.VAR_KEYWORD}
            self.validate_takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters)


def _spec_options(spec: Any) -> dict[str, Any]:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def _spec_type(spec: Any) -> Any:
    return spec[0] if isinstance(spec, (list, tuple)) and spec else spec


def _input_config(spec: Any) -> list[Any]:
    """The ``[type, options]`` pair ComfyUI reports as ``input_config`` (a list, as JSON has it)."""
    spec_type = _spec_type(spec)
    return [list(spec_type) if isinstance(spec_type, tuple) else spec_type, _spec_options(spec)]


def _combo_choices(spec: Any) -> Optional[list[Any]]:
    spec_type = _spec_type(spec)
    if isinstance(spec_type, (list, tuple)):
        return list(spec_type)
    if spec_type == "COMBO":
        return list(_spec_options(spec).get("options", []))
    return None


_CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_constant(name: str, value: Any, spec: Any, skip_builtin: bool,
                    inputs: dict[str, Any]) -> list[ErrorItem]:
    if isinstance(value, dict) and "__value__" in value:
        # The frontend wraps list-valued widgets this way, since a bare list would read as a link.
        inputs[name] = value = value["__value__"]
    spec_type = _spec_type(spec)
    converter = _CONVERTERS.get(spec_type) if isinstance(spec_type, str) else None
    if converter is not None:
        try:
            # A JSON float for an INT input is accepted as ComfyUI does, by conversion.
            converted = converter(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return [error_item("invalid_input_type", f"Failed to convert an input value to a {spec_type} value",
                               f"{name}, {value}, {exc}", input_name=name, input_config=_input_config(spec),
                               received_value=value, exception_message=str(exc))]
        inputs[name] = value = converted
    if skip_builtin:
        return []
    options = _spec_options(spec)
    if spec_type in ("INT", "FLOAT"):
        minimum, maximum = options.get("min"), options.get("max")
        if minimum is not None and value < minimum:
            return [error_item("value_smaller_than_min", f"Value {value} smaller than min of {minimum}", name,
                               input_name=name, input_config=_input_config(spec), received_value=value)]
        if maximum is not None and value > maximum:
            return [error_item("value_bigger_than_max", f"Value {value} bigger than max of {maximum}", name,
                               input_name=name, input_config=_input_config(spec), received_value=value)]
    choices = _combo_choices(spec)
    if choices is not None and value not in choices:
        # Like ComfyUI, long lists (model folders) are summarised rather than sent back whole.
        if len(choices) > 20:
            shown, config = f"(list of length {len(choices)})", None
        else:
            shown, config = str(choices), _input_config(spec)
        return [error_item("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                           input_name=name, input_config=config, received_value=value)]
    return []


class Validator:
    """Validates prompts against one node registry; reusable across prompts."""

    def __init__(self, registry: NodeRegistry):
        self.registry = registry

    def validate(self, prompt: Prompt, partial_execution_targets: Optional[list[str]] = None) -> ValidatedPrompt:
        classes = self.registry.classes
        targets = set(map(str, partial_execution_targets)) if partial_execution_targets is not None else None
        outputs: list[str] = []
        for node_id, node in prompt.items():
            class_type = node.get("class_type")
            if class_type is None:
                raise PromptValidationError({
                    "error": error_item("invalid_prompt",
                                        "Cannot execute because a node is missing the class_type property.",
                                        f"Node ID '#{node_id}'"),
                    "node_errors": {}})
            node_class = classes.get(class_type) if isinstance(class_type, str) else None
            if node_class is None:
                raise PromptValidationError({
                    "error": error_item("invalid_prompt",
                                        f"Cannot execute because node {class_type} does not exist.",
                                        f"Node ID '#{node_id}'"),
                    "node_errors": {}})
            if getattr(node_class, "OUTPUT_NODE", False) is True and (targets is None or node_id in targets):
                outputs.append(node_id)
        if not outputs:
            raise PromptValidationError({"error": error_item("prompt_no_outputs", "Prompt has no outputs"),
                                         "node_errors": {}})

        order = self._reachable_in_order(prompt, outputs)
        own_errors: dict[str, list[ErrorItem]] = {}
        infos: dict[type, _ClassInfo] = {}
        for node_id in order:
            errors = self._validate_node(prompt, node_id, infos)
            if errors:
                own_errors[node_id] = errors
        sources = {node_id: [source for source in self._links(prompt[node_id]) if source in prompt]
                   for node_id in order}
        topological, stuck = _topological_order(sources)
        for node_id, errors in _cycle_errors(sources, stuck).items():
            own_errors.setdefault(node_id, []).extend(errors)
        if not own_errors:
            return ValidatedPrompt(prompt, outputs)

        # A node downstream of an error fails too, but only nodes with errors of their own are reported.
        failing = set(own_errors) | stuck
        for node_id in topological:
            if node_id not in failing and not failing.isdisjoint(sources[node_id]):
                failing.add(node_id)
        node_errors: dict[str, NodeErrors] = {}
        good_outputs = []
        for output_id in outputs:
            if output_id not in failing:
                good_outputs.append(output_id)
                continue
            seen = {output_id}
            stack = [output_id]
            while stack:
                node_id = stack.pop()
                if node_id in own_errors:
                    entry = node_errors.setdefault(node_id, {"errors": own_errors[node_id], "dependent_outputs": [],
                                                             "class_type": prompt[node_id]["class_type"]})
                    entry["dependent_outputs"].append(output_id)
                for source in sources[node_id]:
                    if source in failing and source not in seen:
                        seen.add(source)
                        stack.append(source)
        if not good_outputs:
            details = "\n".join(f"{e['message']}: {e['details']}" for entry in node_errors.values()
                                for e in entry["errors"])
            raise PromptValidationError({
                "error": error_item("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
                "node_errors": node_errors})
        return ValidatedPrompt(prompt, good_outputs, node_errors)

    @staticmethod
    def _links(node: dict[str, Any]):
        for value in node["inputs"].values():
            if is_link(value):
                yield str(value[0])

    def _reachable_in_order(self, prompt: Prompt, roots: list[str]) -> list[str]:
        """Nodes the roots depend on, each once, found with an explicit stack (no recursion limit)."""
        seen = set(roots)
        order = list(roots)
        stack = list(roots)
        while stack:
            node = prompt.get(stack.pop())
            if node is None:
                continue
            for source in self._links(node):
                if source not in seen and source in prompt:
                    seen.add(source)
                    order.append(source)
                    stack.append(source)
        return order

    def _validate_node(self, prompt: Prompt, node_id: str, infos: dict[type, _ClassInfo]) -> list[ErrorItem]:
        node = prompt[node_id]
        node_class = self.registry.classes[node["class_type"]]
        info = infos.get(node_class)
        if info is None:
            try:
                info = infos[node_class] = _ClassInfo(node_class)
            except Exception as exc:  # a broken INPUT_TYPES is the node's error, reported as such
                return [error_item("exception_during_validation", "Exception when validating node", str(exc),
                                   exception_type=full_type_name(type(exc)),
                                   traceback=traceback.format_tb(exc.__traceback__))]
        inputs = node["inputs"]
        errors: list[ErrorItem] = []
        received_types: dict[str, str] = {}
        validate_params = info.validate_params
        # A validator that asks for input_types judges link types itself, as in ComfyUI.
        check_types = validate_params is None or "input_types" not in validate_params
        for name, (required, spec) in info.inputs.items():
            if name not in inputs:
                if required:
                    errors.append(error_item("required_input_missing", "Required input is missing", name,
                                             input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                errors.extend(self._check_link(prompt, name, value, spec, received_types, infos, check_types))
                continue
            skip_builtin = validate_params is not None and name in validate_params
            errors.extend(_check_constant(name, value, spec, skip_builtin, inputs))
        if validate_params is not None and not errors:
            errors.extend(self._custom_validation(node_class, info, inputs, received_types))
        return errors

    def _check_link(self, prompt: Prompt, name: str, value: list, spec: Any, received_types: dict[str, str],
                    infos: dict[type, _ClassInfo], check_types: bool) -> list[ErrorItem]:
        if not is_link(value):
            return [error_item("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                               name, input_name=name, input_config=_input_config(spec), received_value=value)]
        source_id, slot = str(value[0]), value[1]
        source = prompt.get(source_id)
        if source is None:
            return [error_item("bad_linked_input", f"Linked node '{source_id}' does not exist in the prompt", name,
                               input_name=name, input_config=_input_config(spec), received_value=value)]
        source_class = self.registry.classes[source["class_type"]]
        return_types = infos[source_class].return_types if source_class in infos else tuple(
            input_type_name(t) for t in getattr(source_class, "RETURN_TYPES", ()))
        if not 0 <= slot < len(return_types):
            return [error_item("bad_linked_input",
                               f"Linked output slot {slot} does not exist: node '{source_id}' "
                               f"({source['class_type']}) has {len(return_types)} outputs",
                               name, input_name=name, input_config=_input_config(spec), received_value=value)]
        received = return_types[slot]
        received_types[name] = received
        expected = input_type_name(_spec_type(spec))
        if check_types and not types_compatible(received, expected):
            return [error_item("return_type_mismatch", "Return type mismatch between linked nodes",
                               f"{name}, {received} != {expected}", input_name=name, input_config=_input_config(spec),
                               received_type=received, linked_node=[source_id, slot])]
        return []

    @staticmethod
    def _custom_validation(node_class: type, info: _ClassInfo, inputs: dict[str, Any],
                           received_types: dict[str, str]) -> list[ErrorItem]:
        # Linked inputs are not known before running: like ComfyUI, the validator gets None for them.
        arguments = {name: None if isinstance(value, list) else value for name, value in inputs.items()
                     if name in info.inputs and (info.validate_takes_kwargs or name in info.validate_params)}
        if "input_types" in info.validate_params:
            arguments["input_types"] = received_types
        try:
            result = node_class.VALIDATE_INPUTS(**arguments)
            if inspect.isawaitable(result):
                result = _run_to_completion(result)
        except Exception as exc:  # the node's own validator failing is reported against the node
            return [error_item("exception_during_validation", "Exception when validating node", str(exc),
                               exception_type=full_type_name(type(exc)),
                               traceback=traceback.format_tb(exc.__traceback__))]
        if result is True:
            return []
        suffix = "" if result is False else f" - {result}"
        # One error per argument, as ComfyUI reports it, so each named widget is highlighted.
        return [error_item("custom_validation_failed", "Custom validation failed for node", f"{name}{suffix}",
                           input_name=name) for name in arguments or [""]]


def _topological_order(sources: dict[str, list[str]]) -> tuple[list[str], set[str]]:
    """Kahn's algorithm: the nodes sources first, and the ones that never become free (on or behind a cycle)."""
    waiting = {node_id: len(node_sources) for node_id, node_sources in sources.items()}
    dependents: dict[str, list[str]] = {}
    for node_id, node_sources in sources.items():
        for source in node_sources:
            dependents.setdefault(source, []).append(node_id)
    free = [node_id for node_id, count in waiting.items() if count == 0]
    order = []
    while free:
        node_id = free.pop()
        order.append(node_id)
        for dependent in dependents.get(node_id, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                free.append(dependent)
    return order, {node_id for node_id, count in waiting.items() if count > 0}


def _cycle_errors(sources: dict[str, list[str]], stuck: set[str]) -> dict[str, list[ErrorItem]]:
    """Errors for the nodes on a cycle; nodes merely downstream of one fail without their own error."""
    if not stuck:
        return {}
    # Peel stuck nodes no other stuck node depends on: they are behind a cycle, not on one.
    dependents_left = dict.fromkeys(stuck, 0)
    for node_id in stuck:
        for source in sources[node_id]:
            if source in stuck:
                dependents_left[source] += 1
    peel = [node_id for node_id, count in dependents_left.items() if count == 0]
    on_cycle = set(stuck)
    while peel:
        node_id = peel.pop()
        on_cycle.discard(node_id)
        for source in sources[node_id]:
            if source in stuck:
                dependents_left[source] -= 1
                if dependents_left[source] == 0:
                    peel.append(source)
    members = sorted(on_cycle)
    details = f"Nodes in a cycle: {', '.join(members[:50])}"
    return {node_id: [error_item("dependency_cycle", "Dependency cycle detected", details, node_ids=members[:50])]
            for node_id in members}


def _run_to_completion(awaitable: Any) -> Any:
    """The result of an async validator, whether or not this thread is running an event loop."""
    # Imported here: asyncio is heavy and few validators are coroutines.
    import asyncio
    import concurrent.futures

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # Called from a coroutine (a server validating on its loop): that loop is busy, so use another thread's.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="comfy-validate") as pool:
        return pool.submit(asyncio.run, wait()).result()


def full_type_name(cls: type) -> str:
    """An exception's type the way ComfyUI reports it: ``module.Qualname``, bare for builtins."""
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"
