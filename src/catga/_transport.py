"""Logic the memory, NATS and Redis transports share (backend-neutral; private).

* :class:`TransportBase`: ``subscribe()`` -- its signature and argument checks -- written once; the
  closed check and its error (:meth:`~TransportBase._check_open`); the
  :class:`~catga._delivery.DeliveryPolicy` of a subscription
  (:meth:`~TransportBase._delivery_policy`). Each backend implements ``_subscribe()`` and ``aclose()``.
* :class:`SubscriptionBase`: what a subscription remembers of its ``subscribe()`` call.
* The consumer-side delivery policy (decode, inbox claim, handler, ack / retry / dead-letter) lives in
  :mod:`catga._delivery`, written once: every backend's consumer -- memory, NATS JetStream, Redis
  Streams -- calls :meth:`DeliveryPolicy.deliver <catga._delivery.DeliveryPolicy.deliver>` and only
  executes its verdict; :func:`check_retry_backoff` / :func:`retry_delay` are re-exported here.
* :func:`answer`: run a ``serve()`` handler on one request (a failure becomes an
  :data:`~catga.messages.H_ERROR` reply), alike on every backend.
* :func:`replay_route`, :func:`replay_headers`: what :meth:`~catga.protocols.Transport.replay` reads of
  a dead letter, alike on every backend.
* :func:`drain`: let in-flight handler tasks finish, then cancel the rest.

Hot paths (publish, per-message decode) call at most one of these functions per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import ClassVar, Generic, NamedTuple, TypeVar

from catga._delivery import DeliveryPolicy, check_retry_backoff, retry_delay
from catga._lifecycle import AsyncCloseable
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.messages import H_ERROR, H_ID, Metadata, QoS
from catga.protocols import (
    COMMAND,
    DeadLetter,
    DeadLetterQueue,
    IdempotencyStore,
    MessageHandler,
    RawHandler,
    validate_identifier,
)
from catga.serialization import Codec, TypeRegistry

__all__ = (
    "RawHandler",
    "SubscribeArgs",
    "SubscriptionBase",
    "TransportBase",
    "answer",
    "check_retry_backoff",
    "drain",
    "replay_dedup_id",
    "replay_headers",
    "replay_route",
    "retry_delay",
)

T = TypeVar("T")
SubT = TypeVar("SubT")


# -- subscribe ---------------------------------------------------------------------------------------


class SubscribeArgs(NamedTuple):
    """The arguments of one ``subscribe()`` call, checked (see :meth:`TransportBase.subscribe`)."""

    codec: Codec
    handler: MessageHandler
    qos: QoS
    group: str | None
    destination: str
    max_in_flight: int
    max_deliver: int


class TransportBase(AsyncCloseable, Generic[SubT]):
    """The part of :class:`~catga.protocols.Transport` every backend implements alike.

    Subclasses set the attributes below and implement :meth:`_subscribe` and ``aclose``; ``aclose``
    sets ``_closing`` when it begins and ``_closed`` once sends are refused (NATS and Redis: at once;
    memory: after the in-flight handlers drained, so they may still publish).
    """

    registry: TypeRegistry
    dead_letters: DeadLetterQueue | None
    retry_backoff: float
    retry_backoff_max: float
    #: The backend's name in errors (``BackendError.backend``).
    _backend: ClassVar[str]
    #: What a group is called in error messages.
    _group_kind: ClassVar[str] = "consumer group"
    #: ``aclose()`` began: no new subscription or server.
    _closing: bool = False
    #: No more sends, requests or replays.
    _closed: bool = False

    def _closed_error(self) -> BackendUnavailableError:
        """The error every operation of a closed transport raises."""
        return BackendUnavailableError(
            f"{type(self).__name__} is closed; create a new one", backend=self._backend
        )

    def _check_open(self) -> None:
        """Raise when the transport sends nothing more (hot paths inline ``if self._closed:``).

        Raises:
            BackendUnavailableError: the transport is closed.
        """
        if self._closed:
            raise self._closed_error()

    def _check_accepting(self) -> None:
        """Raise when the transport takes no more subscriptions or servers (it is closing or closed).

        Raises:
            BackendUnavailableError: ``aclose()`` began.
        """
        if self._closing or self._closed:
            raise self._closed_error()

    def _delivery_policy(
        self,
        args: SubscribeArgs,
        *,
        log: logging.Logger,
        inbox: IdempotencyStore | None,
        inbox_ttl: float,
        over_delivered: str,
        dead_letter_timeout: float | None = None,
    ) -> DeliveryPolicy:
        """The :class:`~catga._delivery.DeliveryPolicy` of one subscription of this transport.

        Args:
            args: the checked ``subscribe()`` arguments.
            log: the backend's transport logger.
            inbox: where ``EXACTLY_ONCE`` claims message ids (ignored for the other QoS).
            inbox_ttl: the claim's lock ttl: the broker's redelivery deadline.
            over_delivered: why a delivery can be past ``max_deliver`` on this backend.
            dead_letter_timeout: seconds a dead-letter write may take (None: the queue's own).
        """
        return DeliveryPolicy(
            codec=args.codec,
            handler=args.handler,
            qos=args.qos,
            destination=args.destination,
            max_deliver=args.max_deliver,
            log=log,
            registry=self.registry,
            inbox=inbox if args.qos == QoS.EXACTLY_ONCE else None,
            inbox_ttl=inbox_ttl,
            dead_letters=self.dead_letters,
            dead_letter_timeout=dead_letter_timeout,
            retry_backoff=self.retry_backoff,
            retry_backoff_max=self.retry_backoff_max,
            over_delivered=over_delivered,
        )

    async def _subscribe(self, args: SubscribeArgs) -> SubT:
        """Start a subscription; its arguments are checked already."""
        raise NotImplementedError

    async def subscribe(
        self,
        message_type: type[T],
        handler: Callable[[T, Metadata], Awaitable[None]],
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        group: str | None = None,
        destination: str | None = None,
        max_in_flight: int = 64,
        max_deliver: int = 5,
    ) -> SubT:
        """Run ``handler`` for every ``message_type`` published or sent to ``destination``.

        Args:
            message_type: the only type decoded from this destination.
            handler: ``async (message, metadata) -> None``; raising means failure.
            qos: delivery guarantee (see the backend's module docs).
            group: consumers sharing one copy of each event (competing consumers); None gives this
                subscription its own copy. Commands are shared by every subscriber of the destination.
            destination: default: the type's wire name.
            max_in_flight: handlers running at once in this subscription.
            max_deliver: deliveries before a failing message is dead-lettered (at-least-once).

        Returns:
            The live subscription, ready to receive; ``aclose()`` it (or the transport) to stop.

        Raises:
            ConfigurationError: bad limits, or ``message_type`` is not a class.
            InvalidIdentifierError: a malformed destination or group.
            BackendUnavailableError: the transport is closed (or closing), on every backend.
            BackendError: the consumers, groups or server subscriptions could not be created.
        """
        self._check_accepting()
        if not isinstance(message_type, type):
            raise ConfigurationError(f"subscribe() needs a message class, got {message_type!r}")
        if max_in_flight < 1 or max_deliver < 1:
            raise ConfigurationError(
                f"max_in_flight and max_deliver must be >= 1, got {max_in_flight} and {max_deliver}"
            )
        codec = self.registry.codec_for(message_type)
        dest = validate_identifier(codec.name if destination is None else destination, "destination")
        if group is not None:
            validate_identifier(group, self._group_kind)
        return await self._subscribe(
            SubscribeArgs(codec, handler, QoS(qos), group, dest, max_in_flight, max_deliver)
        )


class SubscriptionBase:
    """What a remote-backend subscription keeps of its ``subscribe()`` call (its :class:`SubscribeArgs`).

    A subscription does not hold its transport: it gets a :class:`~catga._delivery.DeliveryPolicy` and
    its backend's settings value, so a consumer module never imports its transport module.

    Attributes:
        codec: the codec of the one message type it decodes.
        handler: the user's handler.
        qos: its delivery guarantee.
        group: its consumer group, or None for a private copy of every event.
        destination: the destination it listens on (events and commands).
        max_in_flight: handlers running at once at most.
        max_deliver: deliveries before a failing message is dead-lettered.
        recoveries: how often the broker lost this subscription's state (a consumer group that
            vanished with a server that restarted empty, say) and the subscription re-created it.
        last_recovery: ``(unix time, what happened)`` of the latest of those, or None.
            :meth:`catga.App.health` reports the consumers as degraded for a while after one.
    """

    def __init__(self, args: SubscribeArgs) -> None:
        self.codec = args.codec
        self.handler = args.handler
        self.qos = args.qos
        self.group = args.group
        self.destination = args.destination
        self.max_in_flight = args.max_in_flight
        self.max_deliver = args.max_deliver
        self.recoveries = 0
        self.last_recovery: tuple[float, str] | None = None
        self._closed = False

    def recovered(self, what: str) -> None:
        """Record that the broker lost this subscription's state and it was re-created (``what``)."""
        self.recoveries += 1
        self.last_recovery = (time.time(), what)

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` was called (or the transport closed)."""
        return self._closed


# -- request / reply ---------------------------------------------------------------------------------


async def answer(
    handler: RawHandler, body: bytes, headers: dict[str, str], destination: str, log: logging.Logger
) -> tuple[bytes, dict[str, str]]:
    """Run a ``serve()`` handler on one request and return the reply ``(body, headers)``.

    A handler that raises is logged (with the request's ``Catga-Id``) and answered with an empty body
    and an :data:`~catga.messages.H_ERROR` header naming the error, so the caller does not wait for
    nothing. Cancellation propagates.
    """
    try:
        out_body, out_headers = await handler(body, headers)
    except Exception as exc:
        log.error(
            "request handler on %r failed for request %s",
            destination,
            headers.get(H_ID, "?"),
            exc_info=exc,
        )
        return b"", {H_ERROR: f"{type(exc).__name__}: {exc}"}
    return out_body, dict(out_headers)


# -- dead-letter replay ------------------------------------------------------------------------------


def replay_route(letter: DeadLetter, key_prefixes: tuple[str, str] = ("", "")) -> tuple[bool, str]:
    """Where :meth:`~catga.protocols.Transport.replay` sends ``letter``: ``(is_command, destination)``.

    ``key_prefixes`` are a backend's ``(event, command)`` key prefixes: a ``source`` that starts with one
    (a record written by an older catga, which stored the backend's key) is read as that kind and the
    destination after it. A letter of unknown kind is an event.

    Raises:
        InvalidIdentifierError: the destination is not a valid identifier.
    """
    source, command = letter.source, letter.kind == COMMAND
    evt, cmd = key_prefixes
    if evt and source.startswith(evt) and len(source) > len(evt):
        source, command = source[len(evt) :], False
    elif cmd and source.startswith(cmd) and len(source) > len(cmd):
        source, command = source[len(cmd) :], True
    return command, validate_identifier(source, "dead letter source")


def replay_headers(letter: DeadLetter) -> dict[str, str]:
    """The headers a replay sends: the letter's, without any broker-owned one (``Nats-*``)."""
    return {k: v for k, v in letter.headers.items() if not k.startswith("Nats-")}


def replay_dedup_id(letter: DeadLetter) -> str:
    """A fresh broker de-duplication id for one replay: ``<message id>:replay:<32 random hex digits>``.

    Random (not a Snowflake), so replays from any number of processes never collide; the message id
    in front keeps it readable.
    """
    original = letter.message_id or letter.headers.get(H_ID) or letter.id
    return f"{original}:replay:{uuid.uuid4().hex}"


async def drain(tasks: Collection[asyncio.Task[None]], timeout: float) -> set[asyncio.Task[None]]:
    """Wait up to ``timeout`` seconds for ``tasks``; cancel those still running and return them."""
    if not tasks:
        return set()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    return pending
