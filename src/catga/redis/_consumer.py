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
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from catga.errors import SerializationError
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import ClaimStatus, DeadLetter
from catga.redis._reader import Delivery, Outcome, StreamReader
from catga.redis._wire import parse_entry, quietly, unframe
from catga.serialization import Codec

if TYPE_CHECKING:
    from catga.redis.transport import RedisTransport

__all__ = ("RedisSubscription",)

logger = logging.getLogger("catga.redis.transport")


class RedisSubscription:
    """A live subscription of :class:`RedisTransport`; ``aclose()`` stops it gracefully.

    Attributes:
        destination: the destination it listens on.
        group: its consumer group, or None for a private copy of every event.
        qos: its delivery guarantee.
    """

    def __init__(
        self,
        transport: RedisTransport,
        codec: Codec,
        handler: Callable[[Any, Metadata], Awaitable[None]],
        qos: QoS,
        group: str | None,
        destination: str,
        max_in_flight: int,
        max_deliver: int,
    ) -> None:
        self.transport = transport
        self.destination = destination
        self.group = group
        self.qos = qos
        self.max_in_flight = max_in_flight
        self.max_deliver = max_deliver
        self._codec = codec
        self._handler = handler
        self._sem = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[StreamReader] = []
        self._channel: str | None = None
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` was called (or the transport closed)."""
        return self._closed

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
        meta: Metadata | None = None
        try:
            if error is not None:
                raise SerializationError(error)
            name, meta = Metadata.from_headers(headers)
            if name != self._codec.name:
                raise SerializationError(
                    f"message type {name!r} on {self.destination!r}, but this subscription decodes "
                    f"{self._codec.name!r}"
                )
            message = self._codec.decode(body)
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
            await self._handler(message, meta)
        except Exception as exc:
            if key is not None:
                await quietly(inbox.release(key), f"inbox release of {key}")
            return await self._failed(d, source, body, headers, meta, exc)
        if key is not None:
            await quietly(inbox.complete(key), f"inbox complete of {key}")
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
        if self.qos == QoS.AT_MOST_ONCE:
            logger.error(
                "handler failed for message %s on %r (at-most-once: dropped)",
                meta.message_id,
                self.destination,
                exc_info=exc,
            )
            return Outcome.ACK, 0.0
        error = f"{type(exc).__name__}: {exc}"
        if d.attempts >= self.max_deliver:
            logger.error(
                "handler failed for message %s on %r %d times; dead-lettering it: %s",
                meta.message_id,
                self.destination,
                d.attempts,
                error,
            )
            return await self._dead_letter(d, source, body, headers, error), 0.0
        logger.warning(
            "handler failed for message %s on %r (delivery %d of %d), retrying: %s",
            meta.message_id,
            self.destination,
            d.attempts,
            self.max_deliver,
            error,
        )
        return Outcome.RETRY, self.transport.backoff(d.attempts)

    async def _dead_letter(
        self, d: Delivery, source: str, body: bytes, headers: dict[str, str], error: str
    ) -> Outcome:
        dlq = self.transport.dead_letters
        letter_id = headers.get(H_ID) or f"{source}:{d.id.decode() or uuid.uuid4().hex}"
        if dlq is None:
            logger.error("message %s on %r dropped (no dead-letter queue): %s", letter_id, source, error)
            return Outcome.ACK
        letter = DeadLetter(
            id=letter_id,
            source=source,
            type_name=headers.get(H_TYPE, ""),
            body=bytes(body),
            headers=headers,
            error=error,
            attempts=d.attempts,
            failed_at=time.time(),
        )
        try:
            await dlq.add(letter)
        except Exception:
            logger.exception("could not dead-letter message %s from %r; it stays pending", letter_id, source)
            return Outcome.KEEP
        return Outcome.ACK

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
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.transport.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for reader in self._readers:
            await reader.finish()

    def __repr__(self) -> str:
        return f"RedisSubscription({self.destination!r}, group={self.group!r}, qos={self.qos.name})"
