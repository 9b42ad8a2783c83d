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
from collections.abc import Awaitable, Callable

from catga._delivery import DeliveryPolicy, Outcome
from catga._transport import SubscribeArgs, SubscriptionBase, drain
from catga.redis._reader import ConsumerSettings, Delivery, StreamReader
from catga.redis._wire import parse_entry, unframe

__all__ = ("RedisSubscription",)

logger = logging.getLogger("catga.redis.transport")


class RedisSubscription(SubscriptionBase):
    """A live subscription of :class:`RedisTransport`; ``aclose()`` stops it gracefully.

    Attributes: see :class:`~catga._transport.SubscriptionBase` (``destination``, ``group``, ``qos``...).
    """

    def __init__(
        self,
        args: SubscribeArgs,
        policy: DeliveryPolicy,
        settings: ConsumerSettings,
        on_close: Callable[[RedisSubscription], Awaitable[None]],
    ) -> None:
        super().__init__(args)
        self.policy = policy
        self.settings = settings
        self._on_close = on_close
        self._sem = asyncio.Semaphore(args.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[StreamReader] = []
        self._channel: str | None = None
        self._closing: asyncio.Task[None] | None = None

    def add_reader(self, kind: str, key: str, group: str, *, private: bool, noack: bool) -> StreamReader:
        """A reader of stream ``key`` with ``group`` for this subscription (started by :meth:`start`)."""
        reader = StreamReader(self, self.settings, kind, key, group, private=private, noack=noack)
        self._readers.append(reader)
        return reader

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    def spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
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
        self.spawn(self.run(Delivery(None, b"", data, 1)))

    async def run(self, d: Delivery) -> None:
        """Handle ``d`` under the in-flight limit by the delivery policy; settle a stream entry."""
        reader = d.reader
        settled = False
        try:
            async with self._sem:
                if self._closed and reader is not None:
                    return  # read but never started: stays pending for another consumer
                outcome = await self._handle(d)
            if reader is not None:
                settled = True
                await reader.settle(d, outcome)
        finally:
            if reader is not None and not settled:
                reader.release(d)

    def _handle(self, d: Delivery) -> Awaitable[Outcome]:
        reader = d.reader
        if reader is None:
            body, headers, error = unframe(d.fields)
            scope, command = "", False
        else:
            body, headers, error = parse_entry(d.fields)
            scope, command = reader.scope, reader.kind == "cmd"
        if error is not None:
            return self.policy.dead_letter(headers, bytes(body), f"undecodable: {error}", d.attempts, command)
        return self.policy.deliver(headers, body, d.attempts, scope, command=command)

    # -- lifecycle ------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop reading, let in-flight handlers finish (up to the transport's ``drain_timeout``), ack
        what finished, and remove a private consumer group. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        await self._on_close(self)
        for reader in self._readers:
            await reader.stop_reading()
        pending = await drain(set(self._tasks), self.settings.drain_timeout)
        if pending:
            await asyncio.wait(pending)
        for reader in self._readers:
            await reader.finish()

    def __repr__(self) -> str:
        return f"RedisSubscription({self.destination!r}, group={self.group!r}, qos={self.qos.name})"
