"""The graph executor: runs what output nodes need, in dependency order, reusing cached results.

Everything here is iterative (explicit stacks), so graph depth is bounded by memory, not by
Python's recursion limit.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import logging
import math
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from comfy.execution_context import (Emit, ExecutionContext, InterruptProcessingException, enter_execution,
                                     leave_execution)
from comfy.graph import Prompt, full_type_name, is_link, normalize_link
from comfy.nodes.registry import NodeRegistry
from comfy_execution.graph_utils import ExecutionBlocker, GraphBuilder

logger = logging.getLogger(__name__)

CACHE_CLASSIC = "classic"
CACHE_LRU = "lru"
CACHE_NONE = "none"

# Hidden input kinds filled by the executor, besides the ones read from extra_data below.
_EXTRA_DATA_HIDDEN = {"EXTRA_PNGINFO": "extra_pnginfo", "AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org",
                      "API_KEY_COMFY_ORG": "api_key_comfy_org"}


def now_ms() -> int:
    return int(time.time() * 1000)


class DependencyCycleError(Exception):
    """Raised when node expansion creates a cycle that validation could not see."""


class DuplicateNodeError(Exception):
    """Raised when an expanded graph reuses an id already in the prompt."""


@dataclass
class CachedNode:
    outputs: list[list[Any]]
    ui: Optional[dict[str, Any]]


class OutputCache:
    """Node results keyed by input signature.

    ``classic`` keeps what the latest prompt used, ``lru`` also keeps up to ``size`` other results,
    ``none`` keeps nothing between prompts.
    """

    def __init__(self, mode: str = CACHE_CLASSIC, size: int = 0):
        self.mode = mode
        self.size = size
        self.entries: OrderedDict[bytes, CachedNode] = OrderedDict()

    def get(self, key: bytes) -> Optional[CachedNode]:
        entry = self.entries.get(key)
        if entry is not None and self.mode == CACHE_LRU:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: CachedNode) -> None:
        self.entries[key] = entry
        if self.mode == CACHE_LRU:
            self.entries.move_to_end(key)

    def end_prompt(self, used: set[bytes]) -> None:
        if self.mode == CACHE_NONE:
            self.entries.clear()
        elif self.mode == CACHE_CLASSIC:
            for key in [key for key in self.entries if key not in used]:
                del self.entries[key]
        else:
            excess = len(self.entries) - max(self.size, len(used))
            for key in list(self.entries):
                if excess <= 0:
                    break
                if key not in used:
                    del self.entries[key]
                    excess -= 1

    def clear(self) -> None:
        self.entries.clear()


class _ClassPlan:
    """How to call one node class, derived once from its declaration."""
    __slots__ = ("declared", "hidden", "lazy", "input_is_list", "output_is_list", "output_count", "function",
                 "is_output",
                 "not_idempotent", "has_is_changed", "has_lazy_check")

    def __init__(self, node_class: type):
        declared = node_class.INPUT_TYPES()
        self.declared: set[str] = set()
        self.lazy: set[str] = set()
        for section in ("required", "optional"):
            for name, spec in (declared.get(section) or {}).items():
                self.declared.add(name)
                if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) \
                        and spec[1].get("lazy"):
                    self.lazy.add(name)
        self.hidden: dict[str, str] = dict(declared.get("hidden") or {})
        self.input_is_list = bool(getattr(node_class, "INPUT_IS_LIST", False))
        self.output_is_list = tuple(getattr(node_class, "OUTPUT_IS_LIST", ()) or ())
        self.output_count = len(getattr(node_class, "RETURN_TYPES", ()) or ())
        self.function: str = node_class.FUNCTION
        self.is_output = getattr(node_class, "OUTPUT_NODE", False) is True
        self.not_idempotent = bool(getattr(node_class, "NOT_IDEMPOTENT", False))
        self.has_is_changed = hasattr(node_class, "IS_CHANGED")
        self.has_lazy_check = hasattr(node_class, "check_lazy_status")


@dataclass
class ExecutionOutcome:
    """What one prompt's run produced, in the shapes ComfyUI's history uses."""
    status: str  # "success", "error" or "interrupted"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: Optional[dict[str, Any]] = None


class _ExecutionError(Exception):
    def __init__(self, node_id: str, exception: BaseException, inputs: Optional[dict[str, list]]):
        super().__init__(str(exception))
        self.node_id = node_id
        self.exception = exception
        self.inputs = inputs


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class PromptExecutor:
    """Runs validated prompts one at a time against a node registry, caching between runs."""

    def __init__(self, registry: NodeRegistry, cache_mode: str = CACHE_CLASSIC, cache_size: int = 0):
        self.registry = registry
        self.cache = OutputCache(cache_mode, cache_size)
        # Node instances persist between prompts for the same id and class, as in ComfyUI.
        self.instances: dict[tuple[str, str], Any] = {}
        self._plans: dict[type, _ClassPlan] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.context: Optional[ExecutionContext] = None

    def interrupt(self) -> None:
        context = self.context
        if context is not None:
            context.interrupted.set()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self.instances.clear()
        self.cache.clear()

    def _plan(self, node_class: type) -> _ClassPlan:
        plan = self._plans.get(node_class)
        if plan is None:
            plan = self._plans[node_class] = _ClassPlan(node_class)
        return plan

    def execute(self, prompt: Prompt, prompt_id: str, extra_data: Optional[dict[str, Any]],
                execute_outputs: list[str], emit: Emit) -> ExecutionOutcome:
        run = _Run(self, dict(prompt), prompt_id, extra_data or {}, emit)
        self.context = run.context
        token = enter_execution(run.context)
        try:
            return run.execute(execute_outputs)
        finally:
            leave_execution(run.context, token)
            self.context = None
            # Like ComfyUI's object cache, keep the instances of this prompt's nodes only.
            if len(self.instances) > len(run.prompt):
                self.instances = {key: instance for key, instance in self.instances.items() if key[0] in run.prompt}

    def run_coroutine(self, awaitable: Any) -> Any:
        """Async node functions run to completion on this executor's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


class _Run:
    """The state of one prompt's execution."""

    def __init__(self, executor: PromptExecutor, prompt: Prompt, prompt_id: str, extra_data: dict[str, Any],
                 emit: Emit):
        self.executor = executor
        self.classes = executor.registry.classes
        self.prompt = prompt
        self.original_prompt = dict(prompt)
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.emit = emit
        self.context = ExecutionContext(prompt_id, emit)
        self.signatures: dict[str, bytes] = {}
        self.results: dict[str, list[list[Any]]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        # Expanded nodes: their parent, the node the UI shows them as, and the prompt node they came from.
        self.parents: dict[str, str] = {}
        self.display: dict[str, str] = {}
        self.real: dict[str, str] = {}
        # Nodes that returned an expansion, with their raw per-call results awaiting resolution.
        self.pending_expansions: dict[str, tuple[list[tuple], list[dict]]] = {}
        # Nodes already looked up in the cache during this run.
        self.checked: set[str] = set()
        # Lazy links a node has asked for so far.
        self.requested_lazy: dict[str, set[str]] = {}

    # -- signatures -------------------------------------------------------------------------------
    def _compute_signatures(self, roots: list[str]) -> None:
        """Digest each node's class, constants, IS_CHANGED and upstream digests, upstream first."""
        prompt = self.prompt
        signatures = self.signatures
        stack = [(root, False) for root in roots if root not in signatures]
        while stack:
            node_id, sources_done = stack.pop()
            if node_id in signatures:
                continue
            node = prompt[node_id]
            if not sources_done:
                stack.append((node_id, True))
                for value in node["inputs"].values():
                    if is_link(value):
                        source = str(value[0])
                        if source not in signatures:
                            if source not in prompt:
                                raise KeyError(f"node {node_id} links to missing node {source}")
                            stack.append((source, False))
                continue
            signatures[node_id] = self._signature(node_id, node)

    def _signature(self, node_id: str, node: dict[str, Any]) -> bytes:
        class_type = node["class_type"]
        node_class = self.classes[class_type]
        plan = self.executor._plan(node_class)
        parts: list[Any] = [class_type]
        for name, value in node["inputs"].items():
            if is_link(value):
                parts.append((name, self.signatures[str(value[0])], value[1]))
            elif _is_plain(value):
                parts.append((name, value))
            else:
                # An object constant (a tensor an expansion passed on, say) may repr like another one:
                # as in ComfyUI, a node given one is never served from the cache.
                return _unique_signature()
        if plan.not_idempotent:
            parts.append(("#node", node_id))
        if plan.has_is_changed:
            changed = self._is_changed(node_id, node, node_class, plan)
            if changed is None:
                return _unique_signature()
            parts.append(("#is_changed", changed))
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()

    def _is_changed(self, node_id: str, node: dict[str, Any], node_class: type, plan: _ClassPlan) -> Any:
        """IS_CHANGED's answer over the constant inputs; None means 'always run'."""
        # Only constants count: like ComfyUI, linked inputs are passed as None.
        arguments = {name: [None] if is_link(value) else [value] for name, value in node["inputs"].items()
                     if name in plan.declared}
        arguments.update(self._hidden_inputs(node_id, plan))
        try:
            answers = _map_over_lists(node_class, "IS_CHANGED", arguments, plan.input_is_list, self.executor)
        except Exception:  # a failing IS_CHANGED means the node cannot be trusted from cache
            logger.warning("IS_CHANGED of node %s (%s) failed; running it", node_id, node["class_type"],
                           exc_info=True)
            return None
        if any(isinstance(answer, float) and math.isnan(answer) for answer in answers):
            return None
        return answers

    # -- inputs -----------------------------------------------------------------------------------
    def _hidden_inputs(self, node_id: str, plan: _ClassPlan) -> dict[str, list[Any]]:
        hidden: dict[str, list[Any]] = {}
        for name, kind in plan.hidden.items():
            if kind == "PROMPT":
                hidden[name] = [self.original_prompt]
            elif kind == "UNIQUE_ID":
                hidden[name] = [node_id]
            elif kind == "DYNPROMPT":
                hidden[name] = [self.prompt]
            elif kind in _EXTRA_DATA_HIDDEN:
                hidden[name] = [self.extra_data.get(_EXTRA_DATA_HIDDEN[kind])]
        return hidden

    def _input_data(self, node_id: str, node: dict[str, Any], plan: _ClassPlan) -> dict[str, list[Any]]:
        results = self.results
        data: dict[str, list[Any]] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                source = results.get(str(value[0]))
                # A missing result (a lazy input not asked for, a node that returned no such output) is None.
                data[name] = source[value[1]] if source is not None and value[1] < len(source) else [None]
            elif name in plan.declared:
                data[name] = [value]
        if plan.hidden:
            data.update(self._hidden_inputs(node_id, plan))
        return data

    # -- scheduling -------------------------------------------------------------------------------
    def execute(self, execute_outputs: list[str]) -> ExecutionOutcome:
        emit = self.emit
        prompt_id = self.prompt_id
        emit("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()})
        try:
            self._compute_signatures(execute_outputs)
            cached = self._stage_from_cache(execute_outputs)
            emit("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": now_ms()})
            for node_id in cached:
                self._report_cached_ui(node_id)
            self._run_graph(execute_outputs)
        except _ExecutionError as failure:
            return self._finish_with_error(failure)
        except Exception as exc:
            # A node's malformed result (or a fault of ours) still ends the prompt the way clients expect.
            return self._finish_with_error(_ExecutionError(self.context.node_id, exc, None))
        finally:
            self.executor.cache.end_prompt(set(self.signatures.values()))
        emit("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()})
        return ExecutionOutcome("success", self.ui_outputs, self.meta)

    def _stage_from_cache(self, roots: list[str]) -> list[str]:
        """Fill results from the cache for every needed node whose signature is cached; list them.

        Nodes behind a cached node are listed too when cached, as ComfyUI's ``execution_cached`` does.
        """
        cached = []
        seen = self.checked
        seen.update(roots)
        stack = list(roots)
        while stack:
            node_id = stack.pop()
            if self._take_from_cache(node_id):
                cached.append(node_id)
            for value in self.prompt[node_id]["inputs"].values():
                if is_link(value):
                    source = str(value[0])
                    if source not in seen:
                        seen.add(source)
                        stack.append(source)
        return cached

    def _take_from_cache(self, node_id: str) -> bool:
        entry = self.executor.cache.get(self.signatures[node_id])
        if entry is None:
            return False
        self.results[node_id] = entry.outputs
        if entry.ui is not None:
            self.ui_outputs[node_id] = entry.ui
        return True

    def _report_cached_ui(self, node_id: str) -> None:
        ui = self.ui_outputs.get(node_id)
        if ui is not None:
            self._record_meta(node_id)
            self.emit("executed", {"node": node_id, "display_node": self.display.get(node_id, node_id),
                                   "output": ui, "prompt_id": self.prompt_id})

    def _record_meta(self, node_id: str) -> None:
        """History's ``meta`` entry, kept (as in ComfyUI) for the nodes that have UI output."""
        self.meta[node_id] = {"node_id": node_id, "display_node": self.display.get(node_id, node_id),
                              "parent_node": self.parents.get(node_id),
                              "real_node_id": self.real.get(node_id, node_id)}

    def _blocking_sources(self, node_id: str, plan: Optional[_ClassPlan]) -> list[str]:
        node = self.prompt[node_id]
        requested = self.requested_lazy.get(node_id, ())
        lazy = plan.lazy if plan is not None else ()
        blockers = []
        for name, value in node["inputs"].items():
            if is_link(value) and (name not in lazy or name in requested):
                source = str(value[0])
                if source not in self.results:
                    blockers.append(source)
        return blockers

    def _run_graph(self, roots: list[str]) -> None:
        """Depth-first over the needed nodes: a node runs once everything it waits for has run."""
        results = self.results
        prompt = self.prompt
        classes = self.classes
        interrupted = self.context.interrupted
        plan_of = self.executor._plan
        checked = self.checked
        # Roots in reverse so the first output's branch completes first.
        stack = [root for root in reversed(roots) if root not in results]
        on_stack: set[str] = set()
        while stack:
            node_id = stack[-1]
            if node_id in results:
                stack.pop()
                continue
            if node_id not in checked:
                # Reached only now (a lazy input, an expansion): its result may still be cached.
                checked.add(node_id)
                if self._take_from_cache(node_id):
                    self._report_cached_ui(node_id)
                    stack.pop()
                    continue
            plan = plan_of(classes[prompt[node_id]["class_type"]])
            if node_id in self.pending_expansions:
                blockers = self._expansion_blockers(node_id)
            else:
                blockers = self._blocking_sources(node_id, plan)
            if blockers:
                if node_id in on_stack:
                    # Revisited with sources still missing: they are waiting on this node.
                    raise _ExecutionError(node_id, DependencyCycleError(
                        f"Dependency cycle detected at node {node_id}"), None)
                on_stack.add(node_id)
                stack.extend(blockers)
                continue
            on_stack.discard(node_id)
            if interrupted.is_set():
                raise _ExecutionError(node_id, InterruptProcessingException(), None)
            if node_id in self.pending_expansions:
                self._resolve_expansion(node_id, plan)
                stack.pop()
                continue
            if plan.lazy and plan.has_lazy_check and self._request_lazy(node_id, plan):
                continue
            new_nodes = self._execute_node(node_id, plan)
            if new_nodes:
                stack.extend(new_nodes)
            else:
                stack.pop()

    def _request_lazy(self, node_id: str, plan: _ClassPlan) -> bool:
        """Ask the node which lazy inputs it needs now; True if some still have to be evaluated."""
        node = self.prompt[node_id]
        instance = self._instance(node_id, node["class_type"])
        data = self._input_data(node_id, node, plan)
        try:
            needed = _map_over_lists(instance, "check_lazy_status", data, plan.input_is_list, self.executor)
        except Exception as exc:
            raise _ExecutionError(node_id, exc, data) from exc
        names = {name for answer in needed if answer for name in answer}
        requested = self.requested_lazy.setdefault(node_id, set())
        new = {name for name in names if name in plan.lazy and name not in requested
               and is_link(node["inputs"].get(name))}
        if not new:
            return False
        requested.update(new)
        self._compute_signatures([str(node["inputs"][name][0]) for name in new])
        return bool(self._blocking_sources(node_id, plan))

    def _instance(self, node_id: str, class_type: str) -> Any:
        key = (node_id, class_type)
        instance = self.executor.instances.get(key)
        if instance is None:
            instance = self.executor.instances[key] = self.classes[class_type]()
        return instance

    def _execute_node(self, node_id: str, plan: _ClassPlan) -> list[str]:
        """Run one node; returns the ids of nodes an expansion added that must run first."""
        node = self.prompt[node_id]
        class_type = node["class_type"]
        display_node = self.display.get(node_id, node_id)
        context = self.context
        context.node_id = node_id
        context.display_node_id = display_node
        self.emit("executing", {"node": node_id, "display_node": display_node, "prompt_id": self.prompt_id})
        data = None
        try:
            instance = self._instance(node_id, class_type)
            data = self._input_data(node_id, node, plan)
            # The node id also marks this as the node's own function: blockers and GraphBuilder ids apply.
            returned = _map_over_lists(instance, plan.function, data, plan.input_is_list, self.executor, node_id)
        except InterruptProcessingException as exc:
            raise _ExecutionError(node_id, exc, None) from exc
        except Exception as exc:
            raise _ExecutionError(node_id, exc, data) from exc

        values: list[tuple] = []
        uis: list[dict] = []
        expansions: list[dict] = []
        for item in returned:
            if isinstance(item, ExecutionBlocker):
                # A blocked call passes the blocker on through every output to the consumers.
                if item.message is not None and plan.is_output:
                    self._report_blocked(node_id, class_type, item.message)
                    item = ExecutionBlocker(None)
                values.append((item,) * plan.output_count)
            elif isinstance(item, dict):
                if item.get("ui") is not None:
                    uis.append(item["ui"])
                if "expand" in item:
                    expansions.append(item["expand"])
                if "result" in item:
                    values.append(tuple(item["result"]))
            else:
                values.append(tuple(item) if item is not None else ())
        ui = _merge_ui(uis) if uis else None
        if ui is not None:
            self.ui_outputs[node_id] = ui
            self._record_meta(node_id)
        self.executed.append(node_id)
        if expansions:
            self.pending_expansions[node_id] = (values, uis)
            try:
                return self._expand(node_id, expansions)
            except Exception as exc:
                raise _ExecutionError(node_id, exc, data) from exc
        self._store(node_id, plan, _merge_outputs(values, plan.output_is_list), ui)
        return []

    def _report_blocked(self, node_id: str, class_type: str, message: str) -> None:
        """ComfyUI tells the client about an output node blocked with a message, and carries on."""
        self.emit("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": class_type, "executed": [],
            "exception_message": f"Execution Blocked: {message}", "exception_type": "ExecutionBlocked",
            "traceback": [], "current_inputs": [], "current_outputs": [], "timestamp": now_ms()})

    def _store(self, node_id: str, plan: _ClassPlan, outputs: list[list[Any]], ui: Optional[dict]) -> None:
        self.results[node_id] = outputs
        self.executor.cache.put(self.signatures[node_id], CachedNode(outputs, ui))
        if ui is not None:
            self.emit("executed", {"node": node_id, "display_node": self.display.get(node_id, node_id),
                                   "output": ui, "prompt_id": self.prompt_id})

    # -- node expansion ---------------------------------------------------------------------------
    def _expand(self, parent_id: str, expansions: list[dict]) -> list[str]:
        """Add an expanded graph's nodes to this run; return the ones the parent must wait for."""
        display = self.display.get(parent_id, parent_id)
        new_ids = []
        for graph in expansions:
            for new_id, new_node in graph.items():
                new_id = str(new_id)
                if new_id in self.prompt:
                    raise DuplicateNodeError(f"Expanded node id {new_id} already exists in the prompt")
                node = dict(new_node)
                node["inputs"] = {name: normalize_link(value)
                                  for name, value in (node.get("inputs") or {}).items()}
                if node.get("class_type") not in self.classes:
                    raise KeyError(f"Expanded node {new_id} has unknown class_type {node.get('class_type')!r}")
                self.prompt[new_id] = node
                self.parents[new_id] = parent_id
                self.display[new_id] = node.get("override_display_id") or display
                self.real[new_id] = self.real.get(parent_id, parent_id)
                new_ids.append(new_id)
        self._compute_signatures(new_ids)
        outputs = [node_id for node_id in new_ids
                   if self.executor._plan(self.classes[self.prompt[node_id]["class_type"]]).is_output]
        blockers = self._expansion_blockers(parent_id) + [node_id for node_id in outputs
                                                          if node_id not in self.results]
        # The parent stays on the stack below its blockers and resolves once they have run.
        return blockers or [parent_id]

    def _expansion_blockers(self, node_id: str) -> list[str]:
        values = self.pending_expansions[node_id][0]
        return [str(value[0]) for row in values for value in row
                if is_link(value) and str(value[0]) not in self.results]

    def _resolve_expansion(self, node_id: str, plan: _ClassPlan) -> None:
        values, uis = self.pending_expansions.pop(node_id)
        resolved_rows = []
        for row in values:
            resolved_rows.append(tuple(self.results[str(value[0])][value[1]] if is_link(value) else [value]
                                       for value in row))
        outputs: list[list[Any]] = []
        if resolved_rows:
            for slot in range(len(resolved_rows[0])):
                outputs.append([item for row in resolved_rows for item in row[slot]])
        self._store(node_id, plan, outputs, _merge_ui(uis) if uis else None)

    # -- errors -----------------------------------------------------------------------------------
    def _finish_with_error(self, failure: _ExecutionError) -> ExecutionOutcome:
        node_id = failure.node_id
        node_type = self.prompt.get(node_id, {}).get("class_type")
        exception = failure.exception
        if isinstance(exception, InterruptProcessingException):
            payload = {"prompt_id": self.prompt_id, "node_id": node_id, "node_type": node_type,
                       "executed": list(self.executed), "timestamp": now_ms()}
            self.emit("execution_interrupted", payload)
            status = "interrupted"
        else:
            logger.error("Error while running node %s (%s): %s", node_id, node_type, exception,
                         exc_info=(type(exception), exception, exception.__traceback__))
            inputs = {name: [_format_value(v) for v in values] for name, values in (failure.inputs or {}).items()}
            payload = {"prompt_id": self.prompt_id, "node_id": node_id, "node_type": node_type,
                       "executed": list(self.executed), "exception_message": str(exception),
                       "exception_type": full_type_name(type(exception)),
                       "traceback": traceback.format_tb(exception.__traceback__),
                       "current_inputs": inputs, "current_outputs": list(self.results), "timestamp": now_ms()}
            self.emit("execution_error", payload)
            status = "error"
        return ExecutionOutcome(status, self.ui_outputs, self.meta, payload)


# next() on a count is atomic, so executors on several threads never share a signature.
_unique_counter = itertools.count(1)


def _unique_signature() -> bytes:
    """A signature equal to nothing else, for nodes that must always run."""
    return b"#unique" + next(_unique_counter).to_bytes(8, "big")


_PLAIN_TYPES = (str, int, float, bool, type(None))


def _is_plain(value: Any) -> bool:
    """Whether ``repr`` tells this constant apart from every other (JSON-like data does; objects may not)."""
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def _map_over_lists(target: Any, function_name: str, data: dict[str, list[Any]], input_is_list: bool,
                    executor: PromptExecutor, expanding_node_id: Optional[str] = None) -> list[Any]:
    """Call a node function once per list index (the last item repeats), or once with whole lists.

    With ``expanding_node_id``, each call gets GraphBuilder ids prefixed by the node and call index,
    so graphs a node expands into have stable ids from run to run (and cache as such).
    """
    function: Callable[..., Any] = getattr(target, function_name)
    if input_is_list:
        calls = [data]
    else:
        length = max(map(len, data.values()), default=1)
        if length == 1:
            calls = [{name: values[0] for name, values in data.items()}]
        elif length == 0:
            calls = [{}]
        else:
            calls = [{name: values[index if index < len(values) else -1] for name, values in data.items() if values}
                     for index in range(length)]
    if expanding_node_id is None:
        results = [function(**arguments) for arguments in calls]
    else:
        results = []
        for index, arguments in enumerate(calls):
            blocker = _blocker_in(arguments, input_is_list)
            if blocker is not None:
                results.append(blocker)
                continue
            GraphBuilder.set_default_prefix(expanding_node_id, index)
            results.append(function(**arguments))
    if any(inspect.isawaitable(result) for result in results):
        results = executor.run_coroutine(_await_all(results))
    return results


async def _await_all(results: list[Any]) -> list[Any]:
    """Await a node's coroutines concurrently, keeping call order.

    If one fails the others are cancelled: left on the executor's loop they would wake up during a later prompt.
    """
    tasks = {index: asyncio.ensure_future(result) for index, result in enumerate(results)
             if inspect.isawaitable(result)}
    try:
        await asyncio.gather(*tasks.values())
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise
    return [tasks[index].result() if index in tasks else result for index, result in enumerate(results)]


def _blocker_in(arguments: dict[str, Any], input_is_list: bool) -> Optional[ExecutionBlocker]:
    for value in arguments.values():
        if isinstance(value, ExecutionBlocker):
            return value
        if input_is_list:
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None


def _merge_outputs(values: list[tuple], output_is_list: tuple) -> list[list[Any]]:
    if not values:
        return []
    outputs = []
    for slot in range(len(values[0])):
        if slot < len(output_is_list) and output_is_list[slot]:
            outputs.append([item for row in values for item in row[slot]])
        else:
            outputs.append([row[slot] for row in values])
    return outputs


def _merge_ui(uis: list[dict]) -> dict[str, Any]:
    if len(uis) == 1:
        return uis[0]
    merged: dict[str, Any] = {}
    for ui in uis:
        for key, value in ui.items():
            merged.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return merged
