"""Subscriptions of :class:`~catga.memory.transport.MemoryTransport`: bounded workers and QoS.

A subscription owns a backlog and at most ``max_in_flight`` worker tasks. ``_enqueue`` starts a worker
when one is free, else queues the delivery; a worker keeps taking queued deliveries until the backlog is
empty, so no task is created per message once the subscription is busy.

The QoS decisions are :class:`~catga._delivery.DeliveryPolicy`'s; a subscription only executes them
(a redelivery timer for ``RETRY``/``WAIT``/``KEEP``), through the small :class:`Host` surface its
transport offers -- this module never imports the transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from typing import Protocol

from catga._delivery import ACKED, DeliveryPolicy, Outcome, Verdict
from catga._transport import answer
from catga.messages import H_ID
from catga.protocols import RawHandler

__all__ = ("Host", "MemorySubscription")

_log = logging.getLogger("catga.memory.transport")


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


class Host(Protocol):
    """What a subscription asks of its transport (implemented by
    :class:`~catga.memory.transport.MemoryTransport`)."""

    def _detach(self, sub: MemorySubscription) -> None:
        """Stop routing deliveries to ``sub``."""

    def _reroute(self, sub: MemorySubscription, delivery: _Delivery) -> None:
        """Hand ``delivery`` of a closed ``sub`` to a peer of its group (or log it dropped)."""

    def _redeliver_later(self, sub: MemorySubscription, delivery: _Delivery, delay: float) -> None:
        """Enqueue ``delivery`` to ``sub`` again after ``delay`` seconds (unless the transport closes)."""


class MemorySubscription:
    """A live subscription; ``aclose()`` stops new deliveries and waits for in-flight handlers.

    Attributes:
        destination: the subject it listens on.
        group: its consumer group (competing consumers), or None for its own copy of every message.
    """

    def __init__(self, transport: Host, destination: str, group: str | None, max_in_flight: int) -> None:
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
    """Decodes one message type and executes the delivery policy's verdicts."""

    def __init__(
        self, transport: Host, policy: DeliveryPolicy, group: str | None, max_in_flight: int, scope: str
    ) -> None:
        super().__init__(transport, policy.destination, group, max_in_flight)
        self._policy = policy
        if len(scope) > 150:
            scope = hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()
        self._scope = scope

    async def _work(self, delivery: _Delivery) -> None:
        # _work of the base class with the policy call inlined: one coroutine frame per message less.
        deliver, scope = self._policy.deliver, self._scope
        try:
            while True:
                delivery.attempts += 1
                try:
                    outcome = await deliver(
                        delivery.headers, delivery.body, delivery.attempts, scope, command=delivery.command
                    )
                except Exception:  # the policy catches what it expects: never lose the error silently
                    message_id = delivery.headers.get(H_ID, "?")
                    _log.exception("delivery of message %s on %r failed", message_id, self.destination)
                else:
                    if outcome is not ACKED:
                        self._settle(delivery, outcome)
                if self._closed or not self._backlog:
                    return
                delivery = self._backlog.popleft()
        finally:
            self._active -= 1

    def _settle(self, delivery: _Delivery, outcome: Outcome) -> None:
        verdict = outcome.verdict
        if verdict is Verdict.ACK or verdict is Verdict.DEAD:
            return
        if verdict is Verdict.WAIT:
            delivery.attempts -= 1  # not a delivery to the handler
        self._transport._redeliver_later(self, delivery, outcome.delay)


class _ServeSubscription(MemorySubscription):
    """Answers requests with a raw ``(body, headers) -> (body, headers)`` handler."""

    def __init__(
        self,
        transport: Host,
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
        out = await answer(self._handler, delivery.body, dict(delivery.headers), self.destination, _log)
        if not reply.done():
            reply.set_result(out)
