"""The frontend's transport: prompts go to the work queue; events and results come back from workers.

Its ``queue`` is a ``PromptQueue`` whose pending prompts are those published and not yet started by a
worker, whose running prompts are those a worker runs, and whose history holds the results, so the
server's ``/queue``, ``/history``, ``/interrupt`` and websocket work as they do in-process.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from comfy.execution import ExecutionOutcome
from comfy.graph import ValidatedPrompt
from comfy.nodes.registry import NodeRegistry
from comfy.queue import HistoryStatus, PromptQueue, QueueItem
from comfy.transport import ListenerList, TransportClosedError

from comfyui_distributed.connection import (BackoffConnection, Layout, LayoutMismatchError, dead_letter,
                                            declare_layout, message, publish_until_sent, redact, robust_connection,
                                            settle)
from comfyui_distributed.plugin import Settings
from comfyui_distributed.protocol import (EVENT, FRONTEND_QUEUE_EXPIRES_MS, PREVIEW, RESULT, ControlMessage, Event,
                                          MalformedMessage, PromptJob, PromptReply, Topology, decode_event,
                                          decode_reply)

logger = logging.getLogger(__name__)

# Results and events a frontend takes from the broker ahead of handling them.
PREFETCH = 512
# A client's routing key stays bound this long after its last prompt, so its next prompt binds nothing.
IDLE_ROUTE_S = 120.0
CLOSE_TIMEOUT_S = 10.0


class FrontendQueue(PromptQueue):
    """Pending: published, no worker started it yet. Running: a worker runs it. History: results.

    Prompts removed while pending (``/queue`` delete or clear) are reported to ``on_removed``, so that
    workers skip them.
    """

    def __init__(self, max_size: int, on_removed: Callable[[list[str]], None]):
        super().__init__(max_size=max_size)
        self._on_removed = on_removed

    def start(self, prompt_id: str) -> bool:
        """Move a pending prompt to running (a worker began it); False when it is not pending."""
        return self.take(prompt_id) is not None

    def delete_queue_item(self, prompt_id: str) -> bool:
        removed = super().delete_queue_item(prompt_id)
        if removed:
            self._on_removed([prompt_id])
        return removed

    def wipe_queue(self) -> list[str]:
        removed = super().wipe_queue()
        if removed:
            self._on_removed(removed)
        return removed


@dataclass(eq=False)
class _Job:
    item: QueueItem
    future: concurrent.futures.Future
    client_id: Optional[str]
    route: str
    # The worker whose events count: the newest to start the prompt.
    worker: Optional[str] = None
    # Whether this job holds a reference on its route's binding.
    routed: bool = False
    # Whether the queue shows it running.
    started: bool = False


class DistributedFrontendTransport(ListenerList):
    """A ``comfy.transport.Transport`` whose prompts run on workers reached through the broker.

    Its own event loop runs on a thread, so the transport works the same under the server, the
    embedded client, or plain threads. With ``--distributed-queue-worker`` as well, that loop also
    runs a worker on this process's nodes.
    """

    def __init__(self, registry: NodeRegistry, configuration: Any, settings: Optional[Settings] = None):
        self.registry = registry
        self.configuration = configuration
        self.settings = settings or Settings.from_configuration(configuration)
        self.topology = Topology(self.settings.queue_name)
        self.frontend_id = uuid.uuid4().hex
        self.queue = FrontendQueue(int(configuration.get("max_queue_size") or 0), self._removed)
        self._own_route = self.topology.route(self.frontend_id)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._routes: dict[str, int] = {}
        self._idle_routes: dict[str, float] = {}
        self._route_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._failure: Optional[BaseException] = None
        self._connection: Optional[BackoffConnection] = None
        self._channel: Optional[AbstractRobustChannel] = None
        self._layout: Optional[Layout] = None
        self._reply_queue: Optional[AbstractQueue] = None
        self._consumer_tag: Optional[str] = None
        self._local_worker: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfyui-distributed-frontend",
                                        daemon=True)
        self._thread.start()
        self._started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)

    # -- the Transport interface ----------------------------------------------------------------------

    def submit(self, prompt_id: str, validated: ValidatedPrompt, extra_data: Optional[dict[str, Any]] = None,
               number: Optional[float] = None, front: bool = False) -> "concurrent.futures.Future[ExecutionOutcome]":
        """Queue the prompt for the workers. The broker's queue is first in, first out: ``number`` and
        ``front`` order the prompts /queue shows, not the order workers take them in."""
        if self._closed:
            raise TransportClosedError("the transport is closed")
        if self._failure is not None:
            raise TransportClosedError(f"the distributed queue cannot be used: {self._failure}")
        client_id = (extra_data or {}).get("client_id")
        route = self.topology.route(str(client_id)) if client_id else self._own_route
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if prompt_id in self._jobs:
                raise ValueError(f"prompt {prompt_id} is already queued")
            item = self.queue.put(prompt_id, validated.prompt, extra_data, validated.outputs, number, front)
            job = self._jobs[prompt_id] = _Job(item, future, client_id, route)
        asyncio.run_coroutine_threadsafe(self._publish(job), self._loop)
        return future

    def delete(self, prompt_id: str) -> bool:
        """Remove a pending prompt; workers skip it if they get it. False if it is not pending."""
        return self.queue.delete_queue_item(prompt_id)

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        """Interrupt ``prompt_id``, or every prompt of this frontend that a worker runs now."""
        if prompt_id is not None:
            with self._lock:
                if prompt_id not in self._jobs:
                    return
        self._control(ControlMessage("interrupt", [prompt_id] if prompt_id is not None else None, self.frontend_id))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(CLOSE_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            logger.warning("The distributed frontend did not close cleanly: %s", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(TransportClosedError("the transport closed before the prompt finished"))
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the transport's loop ----------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            # Made here, on the transport's loop, and kept before connecting, so close() can stop the attempts.
            self._connection = robust_connection(self.settings.connection_uri,
                                                 f"comfyui frontend {self.frontend_id} ({self.topology.name})")
            await self._connection.connect()
            channel = self._channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            layout = self._layout = await declare_layout(channel, self.topology)
            # Durable and not exclusive: it outlives a dropped connection or a broker restart, so no
            # result is lost meanwhile; it expires once nobody has used it for an hour.
            reply_queue = self._reply_queue = await channel.declare_queue(
                self.topology.frontend_queue(self.frontend_id), durable=True,
                arguments={"x-expires": FRONTEND_QUEUE_EXPIRES_MS})
            await reply_queue.bind(layout.progress, self._own_route)
            self._consumer_tag = await reply_queue.consume(self._on_message)
            if self.settings.worker:
                await self._start_local_worker()
        except LayoutMismatchError as error:
            logger.error("%s", error)
            self._failure = error
        except asyncio.CancelledError:
            raise
        else:
            logger.info("Distributed frontend %s sends prompts to queue %s at %s", self.frontend_id,
                        self.topology.work_queue, redact(self.settings.connection_uri))
        finally:
            self._ready.set()

    async def _start_local_worker(self) -> None:
        from comfy.transport import InProcessTransport

        from comfyui_distributed.executors import make_runner
        from comfyui_distributed.worker import Worker

        transport = InProcessTransport(self.registry, self.configuration) \
            if self.settings.executor_factory == "ThreadPoolExecutor" else None
        runner = make_runner(self.configuration, self.registry, transport)
        self._local_worker = Worker(self.settings, runner)
        await self._local_worker.start()

    async def _stop(self) -> None:
        self._started.cancel()
        worker = self._local_worker
        if worker is not None:
            await worker.stop()
            await asyncio.to_thread(worker.runner.close)
        if self._reply_queue is not None and self._connection.connected.is_set():
            try:
                await asyncio.wait_for(self._delete_reply_queue(), CLOSE_TIMEOUT_S / 2)
            except (asyncio.TimeoutError, *CONNECTION_EXCEPTIONS) as error:
                logger.info("Could not delete queue %s (it expires by itself): %s", self._reply_queue.name, error)
        if self._connection is not None:
            await self._connection.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _delete_reply_queue(self) -> None:
        # Consumer first: deleting the queue under it would make the broker cancel it, which aio-pika reports.
        if self._consumer_tag is not None:
            await self._reply_queue.cancel(self._consumer_tag)
        await self._reply_queue.delete(if_unused=False, if_empty=False)

    def _current(self, job: _Job) -> bool:
        with self._lock:
            return self._jobs.get(job.item.prompt_id) is job

    async def _publish(self, job: _Job) -> None:
        await self._ready.wait()
        if self._failure is not None:
            self._fail(job, self._failure)
            return
        if not self._current(job):
            return
        item = job.item
        outgoing = PromptJob(item.prompt_id, item.prompt, item.full_extra_data(), item.outputs_to_execute,
                             self.frontend_id, job.route, item.number).encode()
        built = message(outgoing, persistent=True, correlation_id=item.prompt_id, message_id=item.prompt_id,
                        reply_to=self._reply_queue.name)
        while True:
            try:
                # Bound before the prompt is out, so not one of its events is missed.
                await self._acquire_route(job)
                break
            except CONNECTION_EXCEPTIONS as error:
                logger.warning("Could not bind route %s (%s); trying again", job.route, error)
                await asyncio.sleep(1)
        if not self._current(job):
            self._release_route(job)  # deleted meanwhile: never sent
            return
        await publish_until_sent(lambda: self._channel.default_exchange, self.topology.work_queue, built,
                                 lambda: not self._closed and self._current(job))

    async def _acquire_route(self, job: _Job) -> None:
        if job.route != self._own_route:
            async with self._route_lock:
                count = self._routes.get(job.route)
                if count is None:
                    await self._reply_queue.bind(self._layout.progress, job.route)
                    count = 0
                self._routes[job.route] = count + 1
                self._idle_routes.pop(job.route, None)
        job.routed = True

    def _release_route(self, job: _Job) -> None:
        if not job.routed:
            return
        job.routed = False
        if job.route == self._own_route:
            return
        count = self._routes[job.route] - 1
        self._routes[job.route] = count
        if count == 0:
            self._idle_since(job.route, self._loop.time())

    def _idle_since(self, route: str, since: float) -> None:
        self._idle_routes[route] = since
        self._loop.call_later(IDLE_ROUTE_S, lambda: asyncio.ensure_future(self._unbind_if_idle(route, since)))

    def _release_routes(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self._release_route(job)

    async def _unbind_if_idle(self, route: str, since: float) -> None:
        async with self._route_lock:
            if self._idle_routes.get(route) != since:
                return  # used again since
            try:
                await self._reply_queue.unbind(self._layout.progress, route)
            except CONNECTION_EXCEPTIONS as error:
                logger.debug("Could not unbind %s now (%s); trying later", route, error)
                self._idle_since(route, self._loop.time())
                return
            del self._idle_routes[route], self._routes[route]

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        try:
            if incoming.type == RESULT:
                self._on_reply(decode_reply(incoming.body))
            elif incoming.type in (EVENT, PREVIEW):
                self._on_event(decode_event(incoming.type, incoming.body, incoming.headers))
            else:
                raise MalformedMessage(f"a frontend queue takes results and events, not {incoming.type!r}")
        except MalformedMessage as error:
            try:
                await dead_letter(self._channel, self.topology, incoming, str(error), f"frontend {self.frontend_id}")
            except CONNECTION_EXCEPTIONS as failure:
                logger.warning("Could not dead-letter a malformed message (%s): %s", error, failure)
                return
        await settle(incoming)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            job = self._jobs.get(event.prompt_id)
            if job is None:
                return  # finished, removed, or not ours (another frontend bound the same client)
            if event.event == "execution_start" or job.worker is None:
                job.worker = event.worker
            elif event.worker != job.worker:
                return  # a worker thought dead still runs it; the newest one's events count
            starting, job.started = not job.started, True
        if starting:
            self.queue.start(event.prompt_id)
        self._emit(event.event, event.data, job.client_id)

    def _on_reply(self, reply: PromptReply) -> None:
        with self._lock:
            job = self._jobs.pop(reply.prompt_id, None)
        if job is None:
            logger.debug("Ignoring a result of prompt %s: it has one already, or was removed", reply.prompt_id)
            return
        self._release_route(job)
        self.queue.start(reply.prompt_id)
        if job.worker is not None and reply.worker != job.worker and reply.messages:
            # The result of a run whose events were not followed (a newer copy of the prompt started
            # elsewhere, and is now stopped): give the client that run's end too.
            event, data = reply.messages[-1]
            self._emit(event, data, job.client_id)
        status: HistoryStatus = {"status_str": "success" if reply.status == "success" else "error",
                                 "completed": reply.status == "success", "messages": reply.messages}
        # As in-process: the "finished" signal once history holds the entry, before the queue's status.
        self.queue.task_done(job.item, reply.outputs, status, reply.meta, on_recorded=lambda: self._emit(
            "executing", {"node": None, "display_node": None, "prompt_id": reply.prompt_id}, job.client_id))
        if job.future.set_running_or_notify_cancel():
            job.future.set_result(ExecutionOutcome(reply.status, reply.outputs, reply.meta, reply.error))

    def _emit(self, event: str, data: dict[str, Any], client_id: Optional[str]) -> None:
        for listener in self._listeners:
            try:
                listener(event, data, client_id)
            except Exception:  # one broken listener must not starve the others or stop the consumer
                logger.exception("Listener %r failed on event %s of prompt %s", listener, event, data.get("prompt_id"))

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._lock:
            if self._jobs.get(job.item.prompt_id) is not job:
                return
            del self._jobs[job.item.prompt_id]
        self.queue.start(job.item.prompt_id)
        self.queue.task_done(job.item, {}, {"status_str": "error", "completed": False, "messages": []})
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(error)

    def _removed(self, prompt_ids: list[str]) -> None:
        """Pending prompts left the queue (caller's thread): cancel them, and tell workers to skip them."""
        removed = []
        with self._lock:
            for prompt_id in prompt_ids:
                job = self._jobs.pop(prompt_id, None)
                if job is not None:
                    removed.append(job)
        for job in removed:
            job.future.cancel()
        if removed and not self._closed:
            self._loop.call_soon_threadsafe(self._release_routes, removed)
            self._control(ControlMessage("drop", [job.item.prompt_id for job in removed], self.frontend_id))

    def _control(self, control: ControlMessage) -> None:
        if self._closed:
            return
        asyncio.run_coroutine_threadsafe(self._send_control(control), self._loop)

    async def _send_control(self, control: ControlMessage) -> None:
        await self._ready.wait()
        if self._layout is None:
            return
        try:
            await self._layout.control.publish(message(control.encode()), routing_key="", mandatory=False)
        except CONNECTION_EXCEPTIONS as error:
            logger.warning("Could not send %s to the workers: %s", control, error)


__all__ = ["DistributedFrontendTransport", "FrontendQueue"]
