"""Workers: take prompts from the work queue one at a time, run them, send events and the result back.

A prompt is acknowledged only after its result is confirmed by the broker, so a worker that dies
mid-prompt gives it back to the queue for another worker. ``comfyui-worker`` runs one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from comfy.graph import full_type_name
from comfy.transport import TransportClosedError

from comfyui_distributed.connection import (BackoffConnection, Layout, LayoutMismatchError, dead_letter,
                                            declare_layout, message, publish_until_sent, redact, robust_connection,
                                            settle)
from comfyui_distributed.executors import Runner, RunResult, make_runner
from comfyui_distributed.plugin import Settings
from comfyui_distributed.protocol import (WORKER_HEADER, AbandonedPromptError, ControlMessage, MalformedMessage,
                                          Outgoing, PromptJob, PromptReply, Topology, decode_control, decode_prompt,
                                          encode_event, error_payload)

logger = logging.getLogger(__name__)

# A prompt delivered this often without a result has taken down every worker that ran it: refuse it.
MAX_DELIVERIES = 5
# Prompt ids a worker remembers as finished or dropped, to skip their redelivered copies.
REMEMBERED_PROMPTS = 10000


class RecentIds:
    """A bounded set: the newest ``size`` ids."""

    def __init__(self, size: int):
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, prompt_id: str) -> None:
        self._ids[prompt_id] = None
        self._ids.move_to_end(prompt_id)
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._ids


@dataclass
class _Running:
    job: PromptJob
    # The deliveries of this prompt to acknowledge once its result is out: the first, and a copy the
    # broker gave back to us after our connection dropped while it ran.
    deliveries: list[AbstractIncomingMessage]
    events: list[asyncio.Task] = field(default_factory=list)


class Worker:
    """One worker: a connection, a consumer of the work queue (prefetch 1) and of control messages."""

    def __init__(self, settings: Settings, runner: Runner, worker_id: Optional[str] = None):
        self.settings = settings
        self.runner = runner
        self.topology = Topology(settings.queue_name)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.exit_code = 0
        # Set when the worker must exit: a prompt failed with an exception named in --panic-when.
        self.panicked = asyncio.Event()
        self._forgotten = RecentIds(REMEMBERED_PROMPTS)
        self._running: Optional[_Running] = None
        self._run_lock = asyncio.Lock()
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._connection: Optional[BackoffConnection] = None
        self._channel: Optional[AbstractRobustChannel] = None
        self._layout: Optional[Layout] = None
        self._consumer_tag: Optional[str] = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Connect (waiting for the broker as long as it takes) and start taking prompts."""
        self._loop = asyncio.get_running_loop()
        self._connection = robust_connection(self.settings.connection_uri,
                                             f"comfyui worker {self.worker_id} ({self.topology.name})")
        await self._connection.connect()
        channel = self._channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1)
        layout = self._layout = await declare_layout(channel, self.topology)
        control = await channel.declare_queue(self.topology.worker_queue(self.worker_id), exclusive=True,
                                              auto_delete=True)
        await control.bind(layout.control)
        await control.consume(self._on_control, no_ack=True)
        self._consumer_tag = await layout.work_queue.consume(self._on_prompt)
        logger.info("Worker %s takes prompts from queue %s at %s", self.worker_id, self.topology.work_queue,
                    redact(self.settings.connection_uri))

    async def stop(self) -> None:
        """Stop at once: a prompt still running goes back to the queue for another worker."""
        self._stopping = True
        if self._connection is not None:
            # Closing first returns the unacknowledged prompt to the queue before anything else is sent.
            await self._connection.close()
        running = self._running
        if running is not None:
            self.runner.interrupt(running.job.prompt_id)

    # -- prompts --------------------------------------------------------------------------------------

    async def _on_prompt(self, incoming: AbstractIncomingMessage) -> None:
        # aio-pika cancels consumer callbacks when the channel closes; a prompt must outlive a dropped
        # connection (its result is sent after reconnecting), so it is handled in a task of its own.
        task = asyncio.ensure_future(self._take(incoming))
        self._tasks.add(task)
        task.add_done_callback(self._taken)

    def _taken(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Handling a prompt failed", exc_info=task.exception())

    async def _take(self, incoming: AbstractIncomingMessage) -> None:
        try:
            job = decode_prompt(incoming.body, incoming.reply_to, incoming.headers)
        except MalformedMessage as error:
            await self._refuse(incoming, error, incoming.correlation_id)
            return
        if job.prompt_id in self._forgotten:
            logger.info("Skipping prompt %s: it has finished already or nobody waits for it", job.prompt_id)
            await settle(incoming)
            return
        running = self._running
        if running is not None and running.job.prompt_id == job.prompt_id:
            # Our connection dropped while it ran, so the broker gave it back, to us: one run, two deliveries.
            logger.info("Prompt %s, which runs here, was delivered again after a reconnection", job.prompt_id)
            running.deliveries.append(incoming)
            return
        if job.deliveries >= MAX_DELIVERIES:
            await self._refuse(incoming, AbandonedPromptError(
                f"the prompt was delivered {job.deliveries} times before and no worker finished it; it may be "
                f"crashing workers"), job.prompt_id)
            return
        async with self._run_lock:
            if job.prompt_id in self._forgotten or self._stopping:
                if not self._stopping:
                    await settle(incoming)
                return
            await self._run(_Running(job, [incoming]))

    async def _run(self, running: _Running) -> None:
        job = running.job
        self._running = running
        logger.info("Running prompt %s (delivery %d)", job.prompt_id, job.deliveries + 1)
        try:
            result = await self.runner.run(job, lambda outgoing: self._emit(running, outgoing))
        except TransportClosedError:
            result = None  # stopping: the prompt goes back to the queue
        except Exception as error:  # a fault of the runner, not of a node: report it and keep serving
            logger.exception("Prompt %s could not be run", job.prompt_id)
            payload = error_payload(job.prompt_id, full_type_name(type(error)), str(error))
            self._send_event(running, encode_event(job.prompt_id, "execution_error", payload))
            result = RunResult(PromptReply(job.prompt_id, "error", error=payload,
                                           messages=[["execution_error", payload]]))
        finally:
            self._running = None
        if result is None or self._stopping:
            return
        if result.rejection is not None:
            try:
                await dead_letter(self._channel, self.topology, running.deliveries[0], result.rejection,
                                  self.worker_id)
            except CONNECTION_EXCEPTIONS as error:
                logger.warning("Could not dead-letter prompt %s (%s): %s", job.prompt_id, result.rejection, error)
        await self._finish(running, result.reply)

    def _emit(self, running: _Running, outgoing: Outgoing) -> None:
        """Called from the executor's thread: publish on the event loop, in order."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._send_event, running, outgoing)

    def _send_event(self, running: _Running, outgoing: Outgoing) -> None:
        layout = self._layout
        if layout is None or self._stopping:
            return
        built = message(outgoing, headers={WORKER_HEADER: self.worker_id})
        # Progress is best effort: not waited for, not retried; the result waits for these before it goes.
        running.events.append(asyncio.ensure_future(self._publish_event(layout, running.job.route, built)))

    async def _publish_event(self, layout: Layout, route: str, built: aio_pika.Message) -> None:
        try:
            await layout.progress.publish(built, routing_key=route, mandatory=False)
        except CONNECTION_EXCEPTIONS as error:
            logger.debug("An event was lost with the connection: %s", error)

    async def _finish(self, running: _Running, reply: PromptReply) -> None:
        job = running.job
        if running.events:
            await asyncio.gather(*running.events)
        reply.worker = self.worker_id
        sent = await publish_until_sent(
            lambda: self._channel.default_exchange, job.reply_to,
            message(reply.encode(), persistent=True, correlation_id=job.prompt_id,
                    headers={WORKER_HEADER: self.worker_id}),
            lambda: not self._stopping)
        if not sent:
            return  # stopping: not acknowledged, so the prompt goes back to the queue
        self._forgotten.add(job.prompt_id)
        panic = reply.status == "error" and self.settings.panics_on((reply.error or {}).get("exception_type"))
        if panic:
            await self._stop_consuming()
        acknowledged = [await settle(delivery) for delivery in running.deliveries]
        if job.deliveries > 0 or not all(acknowledged):
            # Another copy may be queued or running elsewhere (we were thought dead, or it was returned).
            await self._broadcast(ControlMessage("drop", [job.prompt_id], job.frontend))
        logger.info("Prompt %s finished: %s", job.prompt_id, reply.status)
        if panic:
            logger.error("Prompt %s failed with %s, named in --panic-when: exiting", job.prompt_id,
                         (reply.error or {}).get("exception_type"))
            self.exit_code = 1
            self.panicked.set()

    async def _stop_consuming(self) -> None:
        if self._layout is not None and self._consumer_tag is not None:
            try:
                await self._layout.work_queue.cancel(self._consumer_tag)
            except CONNECTION_EXCEPTIONS as error:
                logger.debug("Could not cancel the consumer: %s", error)

    async def _refuse(self, incoming: AbstractIncomingMessage, error: Exception, prompt_id: Optional[str]) -> None:
        """Answer the sender (when it can be reached) with an error, dead-letter the message, acknowledge it."""
        reason = str(error)
        if incoming.reply_to and prompt_id:
            payload = error_payload(prompt_id, full_type_name(type(error)), reason)
            reply = PromptReply(prompt_id, "error", error=payload, messages=[["execution_error", payload]],
                                worker=self.worker_id)
            try:
                await self._channel.default_exchange.publish(
                    message(reply.encode(), persistent=True, correlation_id=prompt_id), routing_key=incoming.reply_to,
                    mandatory=False)
            except CONNECTION_EXCEPTIONS as failure:
                logger.warning("Could not tell %s that prompt %s was refused: %s", incoming.reply_to, prompt_id,
                               failure)
        try:
            await dead_letter(self._channel, self.topology, incoming, reason, self.worker_id)
        except CONNECTION_EXCEPTIONS as failure:
            logger.warning("Could not dead-letter a refused message: %s", failure)
            return  # unacknowledged: it comes back and is refused again
        await settle(incoming)

    # -- control --------------------------------------------------------------------------------------

    async def _on_control(self, incoming: AbstractIncomingMessage) -> None:
        try:
            control = decode_control(incoming.body)
        except MalformedMessage as error:
            logger.warning("Ignoring a malformed control message: %s", error)
            return
        running = self._running
        ids = control.prompt_ids
        if control.action == "drop":
            for prompt_id in ids or ():
                self._forgotten.add(prompt_id)
        elif control.action != "interrupt":
            logger.warning("Ignoring control message with unknown action %r", control.action)
            return
        if running is None:
            return
        if ids is None and control.action == "interrupt":
            targeted = running.job.frontend == control.frontend
        else:
            targeted = running.job.prompt_id in (ids or ())
        if targeted:
            logger.info("%s of prompt %s", "Interruption" if control.action == "interrupt" else "Dropping",
                        running.job.prompt_id)
            self.runner.interrupt(running.job.prompt_id)

    async def _broadcast(self, control: ControlMessage) -> None:
        if self._layout is None:
            return
        try:
            await self._layout.control.publish(message(control.encode()), routing_key="", mandatory=False)
        except CONNECTION_EXCEPTIONS as error:
            logger.debug("Could not broadcast %s: %s", control, error)


async def serve_worker(configuration: Any, plugin_manager: Any = None) -> int:
    """Run a worker until SIGINT/SIGTERM (exit 0) or a --panic-when exception (exit 1)."""
    from comfy.runtime import Runtime, stop_on_signals

    settings = Settings.from_configuration(configuration)
    if settings.executor_factory == "ProcessPoolExecutor":
        # Nodes load in the children only: this process stays small and never touches the GPU.
        runner = make_runner(configuration)
    else:
        runtime = await asyncio.to_thread(Runtime.start, configuration, plugin_manager)
        runner = make_runner(runtime.configuration, runtime.registry, runtime.transport, runtime.close)
    worker = Worker(settings, runner)
    stopping = stop_on_signals()
    try:
        starting = asyncio.ensure_future(worker.start())
        waiters = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(worker.panicked.wait())]
        done, _ = await asyncio.wait([starting, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            try:
                starting.result()
            except LayoutMismatchError as error:
                logger.error("%s", error)
                return 1
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        else:
            starting.cancel()
        for waiter in waiters:
            waiter.cancel()
        logger.info("Worker %s stopping", worker.worker_id)
    finally:
        await worker.stop()
        await asyncio.to_thread(runner.close)
    return worker.exit_code


def run_worker(configuration: Any, plugin_manager: Any = None) -> int:
    return asyncio.run(serve_worker(configuration, plugin_manager))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``comfyui-worker [options]``: every ``comfyui`` option applies; ``--distributed-queue-worker`` is implied."""
    from comfy import cli_args
    from comfy.cmd.main import configure_logging
    from comfy.configuration import disabled_plugins, parse_configuration
    from comfy.plugins import create_plugin_manager, set_plugin_manager

    arguments = list(sys.argv[1:] if argv is None else argv)
    pm = create_plugin_manager(disabled_plugins(arguments))
    if pm.get_plugin("distributed") is None:
        print("comfyui-worker needs the distributed plugin, which is disabled (--disable-plugins)", file=sys.stderr)
        return 2
    set_plugin_manager(pm)
    configuration = parse_configuration(arguments, pm)
    configuration["distributed_queue_worker"] = True
    cli_args.set_configuration(configuration)
    configure_logging(configuration)
    return run_worker(configuration, pm)


def entrypoint() -> None:
    sys.exit(main())


__all__ = ["MAX_DELIVERIES", "RecentIds", "Worker", "entrypoint", "main", "run_worker", "serve_worker"]
