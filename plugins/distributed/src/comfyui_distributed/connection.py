"""The broker connection frontends and workers share: connect_robust with growing waits, the common
queues and exchanges, publishing and dead-lettering."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelPreconditionFailed
from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection

from comfyui_distributed.protocol import REASON_HEADER, WORKER_HEADER, Outgoing, Topology

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


class LayoutMismatchError(Exception):
    """A queue or exchange of ours exists on the broker with other settings."""


def redact(uri: str) -> str:
    """The URI without its password, for logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class BackoffConnection(RobustConnection):
    """connect_robust's connection, waiting longer between attempts the longer the broker has been gone.

    aio-pika sleeps ``reconnect_interval`` after each attempt; here that is half the time since the
    connection was lost (or first tried), from ``FIRST_RETRY_S`` up to ``MAX_RETRY_S``, so a broker
    restart is noticed within a second or two and a long outage costs few attempts.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._first_interval = FIRST_RETRY_S
        self._lost_at: Optional[float] = time.monotonic()  # not yet connected counts as lost
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def reconnect_interval(self) -> float:
        if self._lost_at is None:
            return self._first_interval
        return min(MAX_RETRY_S, max(self._first_interval, (time.monotonic() - self._lost_at) / 2))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._first_interval = float(value)

    async def _on_connection_close(self, closing: asyncio.Future) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._lost_at = None


def robust_connection(uri: str, connection_name: str) -> BackoffConnection:
    """A connection to ``uri``, not yet connected: ``await connection.connect()`` returns once the broker
    answers, attempts going on with growing waits until then; ``close()`` stops them at any time.

    Once connected it reconnects by itself and restores channels, queues, bindings and consumers.
    """
    return BackoffConnection(make_url(uri), fail_fast=False, reconnect_interval=FIRST_RETRY_S,
                             client_properties={"connection_name": connection_name})


@dataclass
class Layout:
    """The queues and exchanges every frontend and worker declares (identically)."""
    work_queue: AbstractQueue
    progress: AbstractExchange
    control: AbstractExchange


async def declare_layout(channel: AbstractChannel, topology: Topology) -> Layout:
    try:
        work_queue = await channel.declare_queue(topology.work_queue, durable=True,
                                                 arguments=topology.work_queue_arguments)
        await channel.declare_queue(topology.dead_letters, durable=True)
        progress = await channel.declare_exchange(topology.progress_exchange, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        control = await channel.declare_exchange(topology.control_exchange, aio_pika.ExchangeType.FANOUT,
                                                 durable=True)
    except ChannelPreconditionFailed as error:
        raise LayoutMismatchError(
            f"A queue or exchange named {topology.name} or {topology.name}.* exists on the broker with other "
            f"settings (another program or version made it): {error}. Delete it, or choose another "
            f"--distributed-queue-name.") from None
    return Layout(work_queue, progress, control)


def message(outgoing: Outgoing, persistent: bool = False, headers: Optional[dict[str, Any]] = None,
            **properties: Any) -> aio_pika.Message:
    """``outgoing`` as an aio-pika message, with more ``headers`` and properties."""
    return aio_pika.Message(outgoing.body, type=outgoing.type, headers={**outgoing.headers, **(headers or {})},
                            content_type=outgoing.content_type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persistent else
                            aio_pika.DeliveryMode.NOT_PERSISTENT, **properties)


async def publish_until_sent(exchange_of: Any, routing_key: str, built: aio_pika.Message,
                             keep_trying: Any) -> bool:
    """Publish and wait for the broker's confirmation, trying again across reconnections.

    ``exchange_of()`` gives the exchange to use (channels are replaced on reconnection);
    ``keep_trying()`` says whether to go on after a failure. True once the broker confirmed it.
    """
    wait = FIRST_RETRY_S
    while True:
        try:
            await exchange_of().publish(built, routing_key=routing_key, mandatory=False)
            return True
        except CONNECTION_EXCEPTIONS as error:
            if not keep_trying():
                return False
            logger.warning("Publishing to %s failed (%s); trying again in %.1fs", routing_key or "the default exchange",
                           error, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_RETRY_S)


async def dead_letter(channel: AbstractChannel, topology: Topology, incoming: AbstractIncomingMessage,
                      reason: str, who: str) -> None:
    """Put a copy of ``incoming`` in the dead-letter queue, the reason in its headers, for someone to inspect."""
    logger.warning("Dead-lettering a message of type %r into %s: %s", incoming.type, topology.dead_letters, reason)
    headers = {**(incoming.headers or {}), REASON_HEADER: reason[:2000], WORKER_HEADER: who}
    copy = aio_pika.Message(incoming.body, headers=headers, content_type=incoming.content_type, type=incoming.type,
                            correlation_id=incoming.correlation_id, reply_to=incoming.reply_to,
                            message_id=incoming.message_id, timestamp=incoming.timestamp,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(copy, routing_key=topology.dead_letters, mandatory=False)


async def settle(incoming: AbstractIncomingMessage) -> bool:
    """Acknowledge; False when the channel it came on is gone (the broker will deliver it again)."""
    try:
        await incoming.ack()
        return True
    except CONNECTION_EXCEPTIONS as error:
        logger.info("Could not acknowledge message %s (%r); the broker will deliver it again",
                    incoming.correlation_id or incoming.message_id, error)
        return False


__all__ = ["BackoffConnection", "Layout", "LayoutMismatchError", "dead_letter", "declare_layout", "message",
           "publish_until_sent", "redact", "robust_connection", "settle"]
