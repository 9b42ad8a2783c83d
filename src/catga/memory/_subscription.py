"""Subscriptions of :class:`~catga.memory.transport.MemoryTransport`: bounded workers and QoS.

A subscription owns a backlog and at most ``max_in_flight`` worker tasks. ``_enqueue`` starts a worker
when one is free, else queues the delivery; a worker keeps taking queued deliveries until the backlog is
empty, so no task is created per message once the subscription is busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from catga._transport import Fate, SubscribeArgs, decode_delivery, handler_failed
from catga.errors import SerializationError
from catga.messages import H_ID, Metadata
from catga.protocols import ClaimStatus, IdempotencyStore

if TYPE_CHECKING:
    from catga.memory.transport import MemoryTransport

__all__ = ("MemorySubscription",)

_log = logging.getLogger("catga.memory.transport")

#: Header carrying a server-side error in an RPC reply.
H_ERROR = "Catga-Error"

RawHandler = Callable[[bytes, dict[str, str]], Awaitable[tuple[bytes, dict[str, str]]]]


class _Delivery:
    """One copy of a message on its way to one subscription."""

    __slots__ = ("attempts", "body", "command", "headers", "reply")

    def __init__(
        self,
        body: bytes,
        headers: dict[str, str],
        reply: asyncio.Future[tuple[bytes, dict[str, str]]] | None = None,
        command: bool = False,
    ) -> None:
        self.body = body
        self.headers = headers  # shared between copies: never mutated
        self.attempts = 0
        self.reply = reply
        self.command = command  # sent (one subscription takes it), not published


class MemorySubscription:
    """A live subscription; ``aclose()`` stops new deliveries and waits for in-flight handlers.

    Attributes:
        destination: the subject it listens on.
        group: its consumer group (competing consumers), or None for its own copy of every message.
    """

    def __init__(
        self, transport: MemoryTransport, destination: str, group: str | None, max_in_flight: int
    ) -> None:
        self.destination = destination
        self.group = group
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._max = max_in_flight
        self._active = 0
        self._backlog: deque[_Delivery] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` was called (or the transport closed)."""
        return self._closed

    def _enqueue(self, delivery: _Delivery) -> bool:
        """Hand a delivery to this subscription; False when it is closed."""
        if self._closed:
            return False
        if self._active < self._max:
            self._active += 1
            task = self._loop.create_task(self._work(delivery))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        else:
            self._backlog.append(delivery)
        return True

    async def _work(self, delivery: _Delivery) -> None:
        try:
            while True:
                try:
                    await self._process(delivery)
                except Exception:  # a failing inbox or DLQ: never lose the error silently
                    message_id = delivery.headers.get(H_ID, "?")
                    _log.exception("delivery of message %s on %r failed", message_id, self.destination)
                if self._closed or not self._backlog:
                    return
                delivery = self._backlog.popleft()
        finally:
            self._active -= 1

    async def _process(self, delivery: _Delivery) -> None:
        raise NotImplementedError

    def _stop(self) -> list[asyncio.Task[None]]:
        """Stop taking deliveries, hand the backlog to group peers; return the running workers."""
        if not self._closed:
            self._closed = True
            self._transport._detach(self)
            backlog = list(self._backlog)
            self._backlog.clear()
            for delivery in backlog:
                self._transport._reroute(self, delivery)
        current = asyncio.current_task()
        return [t for t in self._workers if t is not current]

    async def aclose(self) -> None:
        """Stop delivery; wait for handlers in flight to finish. Idempotent."""
        workers = self._stop()
        if workers:
            await asyncio.wait(workers)


class _MessageSubscription(MemorySubscription):
    """Decodes one message type and applies the QoS policy."""

    def __init__(
        self, transport: MemoryTransport, args: SubscribeArgs, *, inbox: IdempotencyStore | None, scope: str
    ) -> None:
        super().__init__(transport, args.destination, args.group, args.max_in_flight)
        self._codec = args.codec
        self._handler = args.handler
        self._qos = args.qos
        self._max_deliver = args.max_deliver
        self._inbox = inbox
        if len(scope) > 150:
            scope = hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()
        self._scope = scope

    async def _process(self, delivery: _Delivery) -> None:
        transport = self._transport
        delivery.attempts += 1
        try:
            message, meta = decode_delivery(self._codec, self.destination, delivery.headers, delivery.body)
        except SerializationError as exc:
            await transport._dead_letter(self, delivery, f"undecodable: {exc}")
            return
        key: str | None = None
        inbox = self._inbox
        if inbox is not None:
            key = f"inbox.{self._scope}.{meta.message_id}"
            claim = await inbox.claim(key, transport._inbox_lock_ttl)
            if claim.status == ClaimStatus.COMPLETED:
                _log.debug(
                    "duplicate message %s on %r acked without handling", meta.message_id, self.destination
                )
                return
            if claim.status == ClaimStatus.IN_PROGRESS:
                delivery.attempts -= 1  # not a delivery to the handler: try again later
                transport._redeliver_later(self, delivery, transport._backoff(1))
                return
        try:
            await self._handler(message, meta)
        except Exception as exc:
            if key is not None and inbox is not None:
                await inbox.release(key)
            await self._failed(delivery, meta, exc)
            return
        if key is not None and inbox is not None:
            await inbox.complete(key)

    async def _failed(self, delivery: _Delivery, meta: Metadata, exc: Exception) -> None:
        transport = self._transport
        attempts = delivery.attempts
        fate, error = handler_failed(
            _log, self._qos, meta.message_id, self.destination, attempts, self._max_deliver, exc
        )
        if fate is Fate.DEAD:
            await transport._dead_letter(self, delivery, error)
        elif fate is Fate.RETRY:
            transport._redeliver_later(self, delivery, transport._backoff(attempts))


class _ServeSubscription(MemorySubscription):
    """Answers requests with a raw ``(body, headers) -> (body, headers)`` handler."""

    def __init__(
        self,
        transport: MemoryTransport,
        destination: str,
        group: str | None,
        max_in_flight: int,
        handler: RawHandler,
    ) -> None:
        super().__init__(transport, destination, group, max_in_flight)
        self._handler = handler

    async def _process(self, delivery: _Delivery) -> None:
        reply = delivery.reply
        if reply is None or reply.done():  # the caller timed out already
            return
        try:
            body, headers = await self._handler(delivery.body, dict(delivery.headers))
        except Exception as exc:
            _log.error(
                "request handler on %r failed for request %s",
                self.destination,
                delivery.headers.get(H_ID, "?"),
                exc_info=exc,
            )
            body, headers = b"", {H_ERROR: f"{type(exc).__name__}: {exc}"}
        if not reply.done():
            reply.set_result((body, dict(headers)))
