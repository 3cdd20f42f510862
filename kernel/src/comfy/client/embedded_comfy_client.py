"""Run workflows in this process: ``async with Comfy() as client: await client.queue_prompt(prompt)``."""
from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Generator, Mapping, Optional, Union

import pluggy

from comfy.cli_args_types import Configuration
from comfy.execution import ExecutionOutcome
from comfy.runtime import Runtime
from comfy.transport import raise_for_outcome, validate

PromptLike = Union[Mapping[str, Any], str, bytes]


@dataclass(frozen=True)
class ProgressNotification:
    """One execution event of a prompt, as ComfyUI names it (``executing``, ``progress``...)."""
    event: str
    data: dict[str, Any]
    prompt_id: str


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    outputs: dict[str, Any]
    status: str


class ProgressStream:
    """A prompt's events as an async iterator; producers put None after the last one."""

    def __init__(self, prompt_id: str):
        self.prompt_id = prompt_id
        self._events: asyncio.Queue[Optional[ProgressNotification]] = asyncio.Queue()

    async def progress(self) -> AsyncIterator[ProgressNotification]:
        """This prompt's events in order, ending after its last one."""
        while True:
            notification = await self._events.get()
            if notification is None:
                return
            yield notification


class TaskWithProgress(ProgressStream):
    """A queued prompt: iterate ``progress()`` for its events, await it for its outputs."""

    def __init__(self, client: "Comfy", prompt: PromptLike, prompt_id: str, client_id: Optional[str],
                 partial_execution_targets: Optional[list[str]]):
        super().__init__(prompt_id)
        loop = asyncio.get_running_loop()

        def listener(event: str, data: dict[str, Any], _client_id: Optional[str]) -> None:
            if data.get("prompt_id") == prompt_id:
                loop.call_soon_threadsafe(self._events.put_nowait, ProgressNotification(event, data, prompt_id))

        self._task = asyncio.ensure_future(self._run(client, prompt, client_id, partial_execution_targets, listener))

    async def _run(self, client: "Comfy", prompt: PromptLike, client_id: Optional[str],
                   partial_execution_targets: Optional[list[str]], listener: Any) -> PromptResult:
        transport = client.runtime.transport
        transport.add_listener(listener)
        try:
            outcome = await client._submit(prompt, self.prompt_id, client_id, partial_execution_targets)
        finally:
            transport.remove_listener(listener)
            # Events already scheduled from the worker thread run before this sentinel.
            asyncio.get_running_loop().call_soon(self._events.put_nowait, None)
        return PromptResult(self.prompt_id, client.outputs_with_paths(outcome.outputs), outcome.status)

    async def get(self) -> PromptResult:
        return await self._task

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self._outputs().__await__()

    async def _outputs(self) -> dict[str, Any]:
        return (await self._task).outputs


class Comfy:
    """An embedded comfyui: the kernel, its plugins and nodes, and an in-process (or plugin) queue.

    Entering the context starts it; leaving frees the executor, its caches and worker thread.
    """

    def __init__(self, configuration: Optional[Configuration] = None,
                 plugin_manager: Optional[pluggy.PluginManager] = None):
        self._configuration = configuration
        self._plugin_manager = plugin_manager
        self._runtime: Optional[Runtime] = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("Comfy is not started: use 'async with Comfy() as client:'")
        return self._runtime

    async def __aenter__(self) -> "Comfy":
        # Loading plugins and custom nodes imports modules; keep that off the event loop.
        self._runtime = await asyncio.to_thread(Runtime.start, self._configuration, self._plugin_manager)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await asyncio.to_thread(runtime.close)

    async def _submit(self, prompt: PromptLike, prompt_id: str, client_id: Optional[str],
                      partial_execution_targets: Optional[list[str]]) -> ExecutionOutcome:
        runtime = self.runtime
        # Validation calls nodes' VALIDATE_INPUTS (which may touch files) and walks big graphs: off the loop.
        validated = await asyncio.to_thread(validate, runtime.registry, prompt, partial_execution_targets)
        extra_data = {"client_id": client_id} if client_id is not None else {}
        transport = runtime.transport
        future = transport.submit(prompt_id, validated, extra_data)
        try:
            # shield: cancelling this call must not cancel the future the worker thread completes.
            outcome = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            # Nobody waits for the prompt any more: drop it if it is still queued, else stop it.
            if not transport.delete(prompt_id):
                transport.interrupt(prompt_id)
            raise
        raise_for_outcome(outcome)
        return outcome

    async def queue_prompt(self, prompt: PromptLike, prompt_id: Optional[str] = None,
                           client_id: Optional[str] = None,
                           partial_execution_targets: Optional[list[str]] = None) -> dict[str, Any]:
        """Run a prompt (dict or API-format JSON text) and return its outputs per output node.

        Raises ``PromptValidationError`` (ComfyUI's error body in ``.body``) for an invalid prompt
        and ``PromptExecutionError`` (the ``execution_error`` payload in ``.payload``) when a node fails.
        """
        outcome = await self._submit(prompt, prompt_id or str(uuid.uuid4()), client_id, partial_execution_targets)
        return self.outputs_with_paths(outcome.outputs)

    def queue_with_progress(self, prompt: PromptLike, prompt_id: Optional[str] = None,
                            client_id: Optional[str] = None,
                            partial_execution_targets: Optional[list[str]] = None) -> TaskWithProgress:
        """Queue a prompt and follow its events: ``async for n in task.progress()``, then ``await task``."""
        self.runtime  # fail now, not inside the task, when not started
        return TaskWithProgress(self, prompt, prompt_id or str(uuid.uuid4()), client_id, partial_execution_targets)

    @property
    def history(self) -> Any:
        return self.runtime.transport.queue

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        self.runtime.transport.interrupt(prompt_id)

    @staticmethod
    def outputs_with_paths(outputs: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``outputs`` where every saved file (filename, subfolder, type) also has ``abs_path``.

        A copy, because the originals are shared with the history and the cache, which keep ComfyUI's shape.
        """
        from comfy import paths

        def with_path(entry: Any) -> Any:
            if not isinstance(entry, dict) or "filename" not in entry or "abs_path" in entry:
                return entry
            directory = paths.get_directory_by_type(entry.get("type", "output"))
            if directory is None:
                return entry
            return {**entry, "abs_path": os.path.join(directory, entry.get("subfolder", ""), entry["filename"])}

        return {node_id: {key: [with_path(entry) for entry in value] if isinstance(value, list) else value
                          for key, value in node_outputs.items()}
                for node_id, node_outputs in outputs.items()}


__all__ = ["Comfy", "ProgressNotification", "ProgressStream", "PromptResult", "TaskWithProgress"]
