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
    """A ``[node_id, output_index]`` pair, the way API-format prompts link nodes."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) \
        and not isinstance(value[1], bool) and isinstance(value[0], (str, int))


def parse_prompt(prompt: Union[str, bytes, Mapping[str, Any]]) -> Prompt:
    """Accept the API-format JSON text or an already decoded dict; node ids become strings."""
    if isinstance(prompt, (str, bytes)):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError as exc:
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
        node["inputs"] = dict(inputs) if isinstance(inputs, Mapping) else {}
        parsed[str(node_id)] = node
    return parsed


def input_type_name(spec_type: Any) -> str:
    """A declared input or output type as a comparable name; a list of choices is a COMBO."""
    if isinstance(spec_type, (list, tuple)):
        return "COMBO"
    return str(spec_type)


def types_compatible(received: str, expected: str) -> bool:
    """ComfyUI's rule: ``*`` matches anything, comma-separated names are alternatives."""
    if received == expected or received == "*" or expected == "*":
        return True
    if "," not in received and "," not in expected:
        return False
    received_set = {name.strip() for name in received.split(",")}
    expected_set = {name.strip() for name in expected.split(",")}
    return bool(received_set & expected_set) and (received_set <= expected_set or expected_set <= received_set)


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


def _combo_choices(spec: Any) -> Optional[list[Any]]:
    spec_type = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if isinstance(spec_type, (list, tuple)):
        return list(spec_type)
    if spec_type == "COMBO":
        return list(_spec_options(spec).get("options", []))
    return None


_CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_constant(name: str, value: Any, spec: Any, skip_builtin: bool,
                    inputs: dict[str, Any]) -> list[ErrorItem]:
    spec_type = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = _spec_options(spec)
    errors: list[ErrorItem] = []
    converter = _CONVERTERS.get(spec_type) if isinstance(spec_type, str) else None
    if converter is not None:
        try:
            # A JSON float for an INT input is accepted as ComfyUI does, by conversion.
            converted = converter(value)
        except (TypeError, ValueError) as exc:
            return [error_item("invalid_input_type", f"Failed to convert an input value to a {spec_type} value",
                               f"{name}, {value}, {exc}", input_name=name, input_config=spec,
                               received_value=value, exception_message=str(exc))]
        inputs[name] = value = converted
    if skip_builtin:
        return errors
    if converter is not None and spec_type in ("INT", "FLOAT"):
        minimum, maximum = options.get("min"), options.get("max")
        if minimum is not None and value < minimum:
            errors.append(error_item("value_smaller_than_min", f"Value {value} smaller than min of {minimum}", name,
                                     input_name=name, input_config=spec, received_value=value))
        if maximum is not None and value > maximum:
            errors.append(error_item("value_bigger_than_max", f"Value {value} bigger than max of {maximum}", name,
                                     input_name=name, input_config=spec, received_value=value))
    choices = _combo_choices(spec)
    if choices is not None and value not in choices:
        shown = choices if len(choices) <= 20 else choices[:20] + ["..."]
        errors.append(error_item("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                                 input_name=name, input_config=spec, received_value=value))
    return errors


class Validator:
    """Validates prompts against one node registry; reusable across prompts."""

    def __init__(self, registry: NodeRegistry):
        self.registry = registry

    def validate(self, prompt: Prompt, partial_execution_targets: Optional[list[str]] = None) -> ValidatedPrompt:
        classes = self.registry.classes
        outputs: list[str] = []
        for node_id, node in prompt.items():
            class_type = node.get("class_type")
            if class_type is None:
                raise PromptValidationError({
                    "error": error_item("invalid_prompt",
                                        "Cannot execute because a node is missing the class_type property.",
                                        f"Node ID '#{node_id}'"),
                    "node_errors": {}})
            node_class = classes.get(class_type)
            if node_class is None:
                raise PromptValidationError({
                    "error": error_item("invalid_prompt",
                                        f"Cannot execute because node {class_type} does not exist.",
                                        f"Node ID '#{node_id}'", node_id=node_id, class_type=class_type),
                    "node_errors": {}})
            if getattr(node_class, "OUTPUT_NODE", False) is True and (
                    partial_execution_targets is None or node_id in partial_execution_targets):
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
        for node_id, errors in self._cycle_errors(prompt, order).items():
            own_errors.setdefault(node_id, []).extend(errors)

        node_errors: dict[str, NodeErrors] = {}
        good_outputs = []
        for output_id in outputs:
            failing = [n for n in self._upstream(prompt, output_id) if n in own_errors] if own_errors else []
            if not failing:
                good_outputs.append(output_id)
                continue
            for node_id in failing:
                entry = node_errors.setdefault(node_id, {"errors": own_errors[node_id], "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output_id)
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

    def _upstream(self, prompt: Prompt, root: str) -> list[str]:
        return self._reachable_in_order(prompt, [root])

    def _cycle_errors(self, prompt: Prompt, nodes: list[str]) -> dict[str, list[ErrorItem]]:
        """Kahn's algorithm over the reachable nodes: whatever never becomes free is on or behind a cycle."""
        waiting = {node_id: 0 for node_id in nodes}
        dependents: dict[str, list[str]] = {}
        for node_id in nodes:
            for source in self._links(prompt[node_id]):
                if source in waiting:
                    waiting[node_id] += 1
                    dependents.setdefault(source, []).append(node_id)
        free = [node_id for node_id, count in waiting.items() if count == 0]
        while free:
            for dependent in dependents.get(free.pop(), ()):
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    free.append(dependent)
        stuck = sorted(node_id for node_id, count in waiting.items() if count > 0)
        if not stuck:
            return {}
        details = f"Nodes in or behind a cycle: {', '.join(stuck[:50])}"
        return {node_id: [error_item("dependency_cycle", "Dependency cycle detected", details, node_ids=stuck[:50])]
                for node_id in stuck}

    def _validate_node(self, prompt: Prompt, node_id: str, infos: dict[type, _ClassInfo]) -> list[ErrorItem]:
        node = prompt[node_id]
        node_class = self.registry.classes[node["class_type"]]
        info = infos.get(node_class)
        if info is None:
            try:
                info = infos[node_class] = _ClassInfo(node_class)
            except Exception as exc:  # a broken INPUT_TYPES is the node's error, reported as such
                return [error_item("exception_during_validation", "Exception when validating node", str(exc),
                                   exception_type=_full_type_name(type(exc)),
                                   traceback=traceback.format_tb(exc.__traceback__))]
        inputs = node["inputs"]
        errors: list[ErrorItem] = []
        received_types: dict[str, str] = {}
        validate_params = info.validate_params
        for name, (required, spec) in info.inputs.items():
            if name not in inputs:
                if required:
                    errors.append(error_item("required_input_missing", "Required input is missing", name,
                                             input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                errors.extend(self._check_link(prompt, name, value, spec, received_types, infos))
                continue
            skip_builtin = validate_params is not None and (name in validate_params or info.validate_takes_kwargs)
            errors.extend(_check_constant(name, value, spec, skip_builtin, inputs))
        if validate_params is not None and not errors:
            errors.extend(self._custom_validation(node_class, info, inputs, received_types))
        return errors

    def _check_link(self, prompt: Prompt, name: str, value: list, spec: Any, received_types: dict[str, str],
                    infos: dict[type, _ClassInfo]) -> list[ErrorItem]:
        if not is_link(value):
            return [error_item("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                               name, input_name=name, input_config=spec, received_value=value)]
        source_id, slot = str(value[0]), value[1]
        source = prompt.get(source_id)
        if source is None:
            return [error_item("bad_linked_input", f"Linked node '{source_id}' does not exist in the prompt", name,
                               input_name=name, input_config=spec, received_value=value)]
        source_class = self.registry.classes[source["class_type"]]
        return_types = infos[source_class].return_types if source_class in infos else tuple(
            input_type_name(t) for t in getattr(source_class, "RETURN_TYPES", ()))
        if not 0 <= slot < len(return_types):
            return [error_item("bad_linked_input",
                               f"Linked output slot {slot} does not exist: node '{source_id}' "
                               f"({source['class_type']}) has {len(return_types)} outputs",
                               name, input_name=name, input_config=spec, received_value=value)]
        received = return_types[slot]
        received_types[name] = received
        expected = input_type_name(spec[0] if isinstance(spec, (list, tuple)) and spec else spec)
        if not types_compatible(received, expected):
            return [error_item("return_type_mismatch", "Return type mismatch between linked nodes",
                               f"{name}, {received} != {expected}", input_name=name, input_config=spec,
                               received_type=received, linked_node=[source_id, slot])]
        return []

    @staticmethod
    def _custom_validation(node_class: type, info: _ClassInfo, inputs: dict[str, Any],
                           received_types: dict[str, str]) -> list[ErrorItem]:
        arguments = {name: value for name, value in inputs.items()
                     if not isinstance(value, list) and (info.validate_takes_kwargs or name in info.validate_params)}
        if "input_types" in info.validate_params:
            arguments["input_types"] = received_types
        try:
            result = node_class.VALIDATE_INPUTS(**arguments)
        except Exception as exc:  # the node's own validator failing is reported against the node
            return [error_item("exception_during_validation", "Exception when validating node", str(exc),
                               exception_type=_full_type_name(type(exc)),
                               traceback=traceback.format_tb(exc.__traceback__))]
        if result is True:
            return []
        names = ", ".join(arguments) or "inputs"
        details = f"{names} - {result}" if isinstance(result, str) else names
        return [error_item("custom_validation_failed", "Custom validation failed for node", details,
                           input_name=next(iter(arguments), ""))]


def _full_type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"
