"""In-memory transport: the reference implementation of :class:`~catga.protocols.Transport`.

A :class:`MemoryBroker` is the bus: it maps each destination to a tuple of subscriptions (replaced whole
on every subscribe/unsubscribe, so routing reads without locks). Several :class:`MemoryTransport`
instances on one broker behave like several processes on one NATS or Redis server: fan-out to groups,
competing consumers inside a group, request/reply. Nothing is process-global: a transport created
without a broker gets a private one.

Delivery follows the QoS of each subscription: at-most-once drops a message whose handler fails;
at-least-once redelivers it after an exponential backoff and dead-letters it after ``max_deliver``
deliveries; exactly-once adds an inbox claim on the message id. Undecodable messages go straight to the
dead-letter queue. Redelivery timers and handler tasks belong to the transport and are cancelled by
``aclose()`` (after in-flight handlers had ``drain_timeout`` seconds to finish).

A message published to a destination nobody subscribes to is dropped (like NATS core).

Thread-safety: not thread-safe. Use a broker and its transports from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from catga._delivery import check_retry_backoff
from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga._transport import SubscribeArgs, TransportBase, drain, replay_headers, replay_route
from catga.errors import (
    BackendError,
    ConfigurationError,
    OperationTimeoutError,
    PayloadTooLargeError,
)
from catga.ids import new_id
from catga.memory._subscription import (
    MemorySubscription,
    _Delivery,
    _MessageSubscription,
    _ServeSubscription,
)
from catga.memory.broker import MemoryBroker
from catga.messages import H_ERROR, H_ID, Metadata, QoS
from catga.protocols import DeadLetter, DeadLetterQueue, IdempotencyStore, RawHandler, validate_identifier
from catga.serialization import TypeRegistry, default_registry

__all__ = ("H_ERROR", "MemorySubscription", "MemoryTransport")

_log = logging.getLogger("catga.memory.transport")


class MemoryTransport(TransportBase[MemorySubscription]):
    """A :class:`~catga.protocols.Transport` over a :class:`MemoryBroker`.

    Args:
        broker: the bus to join; a private one when None.
        registry: message types allowed on the wire (default :func:`~catga.serialization.default_registry`).
        dead_letters: where undecodable and repeatedly failing messages go; when None they are logged
            and dropped.
        inbox: idempotency store for ``EXACTLY_ONCE`` subscriptions (default: the broker's inbox).
        retry_backoff: delay in seconds before the first redelivery; doubles with each attempt.
        retry_backoff_max: cap of the redelivery delay.
        inbox_lock_ttl: how long an exactly-once claim is held before another delivery may take over.
        drain_timeout: seconds ``aclose()`` lets in-flight handlers finish before cancelling them.
        max_payload: the largest message body accepted, in bytes (default 1 MiB, as on NATS and Redis);
            a larger one raises :class:`~catga.errors.PayloadTooLargeError` and is not delivered.
    """

    _backend = "memory"
    _group_kind = "group"

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        *,
        registry: TypeRegistry | None = None,
        dead_letters: DeadLetterQueue | None = None,
        inbox: IdempotencyStore | None = None,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 30.0,
        inbox_lock_ttl: float = 30.0,
        drain_timeout: float = 10.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        check_retry_backoff(retry_backoff, retry_backoff_max)
        self.max_payload = check_max_payload(max_payload)
        self.broker = broker if broker is not None else MemoryBroker()
        self.registry = registry if registry is not None else default_registry()
        self.dead_letters = dead_letters
        self._inbox = inbox
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self._inbox_lock_ttl = inbox_lock_ttl
        self._drain_timeout = drain_timeout
        self._subs: set[MemorySubscription] = set()
        self._timers: dict[_Delivery, tuple[asyncio.TimerHandle, MemorySubscription]] = {}
        self._closing = False
        self._closed = False

    # ---------------------------------------------------------------------------------------------
    # sending

    def _encode(
        self, message: object, metadata: Metadata | None, destination: str | None
    ) -> tuple[str, bytes, dict[str, str]]:
        """``(destination, body, headers)`` of a message to send, checked against ``max_payload``."""
        if self._closed:
            raise self._closed_error()
        codec = self.registry.codec_for(type(message))
        dest = _dest(destination, codec.name)
        body = codec.encode(message)
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=dest, backend="memory")
        if metadata is None:
            metadata = Metadata(message_id=new_id(), created_at=time.time())
        return dest, body, metadata.to_headers(codec.name)

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Fan ``message`` out to every group (and every ungrouped subscription) of its destination.

        The destination defaults to the message type's wire name.
        """
        dest, body, headers = self._encode(message, metadata, destination)
        self.broker._publish(dest, body, headers)

    async def publish_batch(self, messages: Sequence[object], *, destination: str | None = None) -> None:
        """Publish each message in order (each with fresh metadata).

        Every message is encoded (and checked against ``max_payload``) before the first is delivered.
        """
        encoded = [self._encode(message, None, destination) for message in messages]
        for dest, body, headers in encoded:
            self.broker._publish(dest, body, headers)

    async def send(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Deliver ``message`` to one subscription of the destination (competing consumers)."""
        dest, body, headers = self._encode(message, metadata, destination)
        self.broker._send(dest, body, headers)

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish already encoded bytes and wire headers as they are (replay, tests, bridges).

        Subscribers decode them like any message; bytes that do not decode are dead-lettered.
        """
        if self._closed:
            raise self._closed_error()
        dest = validate_identifier(destination, "destination")
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=dest, backend="memory")
        self.broker._publish(dest, bytes(body), dict(headers))

    async def replay(self, letter: DeadLetter) -> None:
        """Deliver a dead letter again, as its kind, to its source (see
        :meth:`Transport.replay <catga.protocols.Transport.replay>`).

        Memory has no broker-side store: a message nobody subscribes to would be dropped, so that raises.

        Raises:
            InvalidIdentifierError: the letter's source is not a valid destination.
            BackendUnavailableError: the transport is closed.
            BackendError: nobody subscribes to the destination.
        """
        if self._closed:
            raise self._closed_error()
        command, dest = replay_route(letter)
        body, headers = bytes(letter.body), replay_headers(letter)
        broker = self.broker
        taken = broker._send(dest, body, headers) if command else broker._publish(dest, body, headers)
        if not taken:
            kind = "command" if command else "event"
            raise BackendError(
                f"cannot replay dead letter {letter.id!r}: no subscription on {dest!r} takes the {kind} "
                "(an in-memory message nobody receives is lost); subscribe first",
                backend="memory",
            )

    # ---------------------------------------------------------------------------------------------
    # receiving

    async def _subscribe(self, args: SubscribeArgs) -> MemorySubscription:
        dest, group = args.destination, args.group
        inbox = None
        if args.qos == QoS.EXACTLY_ONCE:
            inbox = self._inbox if self._inbox is not None else self.broker.inbox
        scope = f"{dest}.{group}" if group is not None else f"{dest}.s{next(self.broker._scopes)}"
        policy = self._delivery_policy(
            args,
            log=_log,
            inbox=inbox,
            inbox_ttl=self._inbox_lock_ttl,
            over_delivered="its earlier deliveries never settled",
        )
        sub = _MessageSubscription(self, policy, group, args.max_in_flight, scope)
        self._attach(sub)
        return sub

    async def serve(
        self,
        destination: str,
        handler: RawHandler,
        *,
        group: str | None = "rpc",
        max_in_flight: int = 64,
    ) -> MemorySubscription:
        """Answer requests sent to ``destination`` with ``handler(body, headers) -> (body, headers)``.

        A handler that raises is logged and answered with an empty body and a ``Catga-Error`` header.
        """
        self._check_accepting()
        dest = validate_identifier(destination, "destination")
        if group is not None:
            validate_identifier(group, "group")
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {max_in_flight}")
        sub = _ServeSubscription(self, dest, group, max_in_flight, handler)
        self._attach(sub)
        return sub

    async def request(
        self,
        destination: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, str]]:
        """Send a request and wait for the first reply.

        Raises:
            OperationTimeoutError: no reply within ``timeout`` seconds (also when nobody serves it).
        """
        if self._closed:
            raise self._closed_error()
        dest = validate_identifier(destination, "destination")
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=dest, backend="memory")
        h = dict(headers) if headers else {}
        h.setdefault(H_ID, str(new_id()))
        reply: asyncio.Future[tuple[bytes, dict[str, str]]] = asyncio.get_running_loop().create_future()
        self.broker._request(dest, bytes(body), h, reply)
        try:
            async with asyncio.timeout(timeout):
                return await reply
        except TimeoutError:
            raise OperationTimeoutError(f"request to {dest!r}", timeout) from None

    # ---------------------------------------------------------------------------------------------
    # internals used by subscriptions

    def _attach(self, sub: MemorySubscription) -> None:
        self._subs.add(sub)
        self.broker._attach(sub)

    def _detach(self, sub: MemorySubscription) -> None:
        self._subs.discard(sub)
        self.broker._detach(sub)

    def _redeliver_later(self, sub: MemorySubscription, delivery: _Delivery, delay: float) -> None:
        if self._closing:
            return
        handle = asyncio.get_running_loop().call_later(delay, self._redeliver, delivery)
        self._timers[delivery] = (handle, sub)

    def _redeliver(self, delivery: _Delivery) -> None:
        entry = self._timers.pop(delivery, None)
        if entry is None:
            return
        sub = entry[1]
        if not sub._enqueue(delivery):
            self._reroute(sub, delivery)

    def _reroute(self, sub: MemorySubscription, delivery: _Delivery) -> None:
        peer = self.broker._peer(sub)
        if peer is None or not peer._enqueue(delivery):
            _log.warning(
                "message %s on %r dropped: its subscription closed and no group member is left",
                delivery.headers.get(H_ID, "?"),
                sub.destination,
            )

    # ---------------------------------------------------------------------------------------------
    # lifecycle

    async def aclose(self) -> None:
        """Stop every subscription, let in-flight handlers finish (up to ``drain_timeout``), cancel
        redelivery timers and what is left. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        workers: list[asyncio.Task[None]] = []
        for sub in list(self._subs):
            workers.extend(sub._stop())
        pending = await drain(workers, self._drain_timeout)
        if pending:
            await asyncio.wait(pending)
        self._closed = True


def _dest(destination: str | None, name: str) -> str:
    return validate_identifier(destination if destination is not None else name, "destination")
