"""The consuming side of :class:`~catga.redis.RedisTransport`: subscriptions.

A :class:`RedisSubscription` owns what one ``subscribe()`` started: up to two
:class:`~catga.redis._reader.StreamReader` loops (the event stream with its group, the command stream
with ``catga-cmd``) or a pub/sub channel, the delivery tasks, and a semaphore that keeps at most
``max_in_flight`` handlers running. It decodes each message, applies the QoS policy (inbox claim for
exactly-once, retry with backoff, dead-lettering) and tells the reader how to settle the entry.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from catga._transport import (
    Fate,
    SubscribeArgs,
    SubscriptionBase,
    add_dead_letter,
    complete_inbox,
    decode_delivery,
    drain,
    handler_failed,
)
from catga.errors import SerializationError
from catga.messages import H_ID, Metadata, QoS
from catga.protocols import ClaimStatus
from catga.redis._reader import Delivery, Outcome, StreamReader
from catga.redis._wire import parse_entry, quietly, unframe

if TYPE_CHECKING:
    from catga.redis.transport import RedisTransport

__all__ = ("RedisSubscription",)

logger = logging.getLogger("catga.redis.transport")


class RedisSubscription(SubscriptionBase["RedisTransport"]):
    """A live subscription of :class:`RedisTransport`; ``aclose()`` stops it gracefully.

    Attributes: see :class:`~catga._transport.SubscriptionBase` (``destination``, ``group``, ``qos``...).
    """

    def __init__(self, transport: RedisTransport, args: SubscribeArgs) -> None:
        super().__init__(transport, args)
        self._sem = asyncio.Semaphore(args.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[StreamReader] = []
        self._channel: str | None = None
        self._closing: asyncio.Task[None] | None = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery task on %r failed", self.destination, exc_info=task.exception())

    # -- delivery -------------------------------------------------------------------------------
    def _on_frame(self, data: bytes) -> None:
        """A pub/sub message arrived (at-most-once)."""
        if self._closed:
            return
        if len(self._tasks) >= 16 * self.max_in_flight + 1000:
            logger.warning("pub/sub subscription on %r is overloaded; message dropped", self.destination)
            return
        self._spawn(self._run(Delivery(None, b"", data, 1)))

    async def _run(self, d: Delivery) -> None:
        reader = d.reader
        settled = False
        try:
            async with self._sem:
                if self._closed and reader is not None:
                    return  # read but never started: stays pending for another consumer
                outcome, delay = await self._handle(d)
            if reader is not None:
                settled = True
                await reader.settle(d, outcome, delay)
        finally:
            if reader is not None and not settled:
                reader.release(d)

    async def _handle(self, d: Delivery) -> tuple[Outcome, float]:
        reader = d.reader
        if reader is None:
            body, headers, error = unframe(d.fields)
            source = self.transport.evt_key(self.destination)
        else:
            body, headers, error = parse_entry(d.fields)
            source = reader.key
        # ``source`` (the stream key) names the message in logs; its dead letter records the destination.
        try:
            if error is not None:
                raise SerializationError(error)
            message, meta = decode_delivery(self.codec, self.destination, headers, body)
        except SerializationError as exc:
            return await self._dead_letter(d, source, body, headers, f"undecodable: {exc}"), 0.0
        if d.exhausted:
            error = (
                f"delivered {d.attempts} times without an ack (max_deliver={self.max_deliver}): its "
                "consumers died or stalled"
            )
            return await self._dead_letter(d, source, body, headers, error), 0.0
        key: str | None = None
        inbox = self.transport.inbox
        if self.qos == QoS.EXACTLY_ONCE and reader is not None:
            key = f"inbox.{reader.scope}.{meta.message_id}"
            try:
                claim = await inbox.claim(key, self.transport.claim_min_idle)
            except Exception as exc:
                logger.warning("inbox claim of %s failed (%s); retrying", key, exc)
                return Outcome.WAIT, self.transport.backoff(d.attempts)
            if claim.status == ClaimStatus.COMPLETED:
                logger.debug("duplicate message %s on %r acked unhandled", meta.message_id, self.destination)
                return Outcome.ACK, 0.0
            if claim.status == ClaimStatus.IN_PROGRESS:
                return Outcome.WAIT, self.transport.backoff(1)
        try:
            await self.handler(message, meta)
        except Exception as exc:
            if key is not None:
                await quietly(inbox.release(key), f"inbox release of {key}")
            return await self._failed(d, source, body, headers, meta, exc)
        if key is not None:
            await complete_inbox(inbox, key, self.transport.claim_min_idle, logger)
        return Outcome.ACK, 0.0

    async def _failed(
        self,
        d: Delivery,
        source: str,
        body: bytes,
        headers: dict[str, str],
        meta: Metadata,
        exc: Exception,
    ) -> tuple[Outcome, float]:
        fate, error = handler_failed(
            logger, self.qos, meta.message_id, self.destination, d.attempts, self.max_deliver, exc
        )
        if fate is Fate.DROP:
            return Outcome.ACK, 0.0
        if fate is Fate.DEAD:
            return await self._dead_letter(d, source, body, headers, error), 0.0
        return Outcome.RETRY, self.transport.backoff(d.attempts)

    async def _dead_letter(
        self, d: Delivery, source: str, body: bytes, headers: dict[str, str], error: str
    ) -> Outcome:
        letter_id = headers.get(H_ID) or f"{source}:{d.id.decode() or uuid.uuid4().hex}"
        reader = d.reader
        stored = await add_dead_letter(
            self.transport.dead_letters,
            logger,
            letter_id,
            self.destination,
            bytes(body),
            headers,
            error,
            d.attempts,
            command=reader is not None and reader.kind == "cmd",
            if_failed="; it stays pending",
        )
        return Outcome.ACK if stored else Outcome.KEEP

    # -- lifecycle ------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop reading, let in-flight handlers finish (up to the transport's ``drain_timeout``), ack
        what finished, and remove a private consumer group. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        self.transport._forget(self)
        if self._channel is not None:
            await self.transport._pubsub_remove(self._channel, self)
        for reader in self._readers:
            await reader.stop_reading()
        pending = await drain(set(self._tasks), self.transport.drain_timeout)
        if pending:
            await asyncio.wait(pending)
        for reader in self._readers:
            await reader.finish()

    def __repr__(self) -> str:
        return f"RedisSubscription({self.destination!r}, group={self.group!r}, qos={self.qos.name})"
