"""Logic the memory, NATS and Redis transports share (backend-neutral; private).

* :class:`TransportBase`: ``subscribe()`` -- its signature and argument checks -- written once; each
  backend implements ``_check_open()`` and ``_subscribe()``, and ``aclose()``.
* :class:`SubscriptionBase`: what a subscription remembers of its ``subscribe()`` call.
* :func:`decode_delivery`, :func:`handler_failed`, :func:`new_dead_letter`, :func:`add_dead_letter`:
  the consumer-side QoS steps that read the same on every backend.
* :func:`check_retry_backoff` / :func:`retry_delay`: the redelivery backoff.
* :func:`replay_route`, :func:`replay_headers`: what :meth:`~catga.protocols.Transport.replay` reads of
  a dead letter, alike on every backend.
* :func:`drain`: let in-flight handler tasks finish, then cancel the rest.
* :func:`complete_inbox`: record an ``EXACTLY_ONCE`` message as handled, retrying through an outage.

Hot paths (publish, per-message decode) call at most one of these functions per message.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from catga._lifecycle import AsyncCloseable
from catga.errors import ConfigurationError, SerializationError
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import COMMAND, EVENT, DeadLetter, DeadLetterQueue, InboxStore, validate_identifier
from catga.serialization import Codec, TypeRegistry

__all__ = (
    "Fate",
    "SubscribeArgs",
    "SubscriptionBase",
    "TransportBase",
    "add_dead_letter",
    "check_retry_backoff",
    "complete_inbox",
    "decode_delivery",
    "drain",
    "handler_failed",
    "new_dead_letter",
    "replay_dedup_id",
    "replay_headers",
    "replay_route",
    "retry_delay",
)

T = TypeVar("T")
SubT = TypeVar("SubT")
TransportT = TypeVar("TransportT")

#: A subscription's handler, as stored (the message type is checked by ``subscribe``).
Handler = Callable[[Any, Metadata], Awaitable[None]]


# -- redelivery backoff ----------------------------------------------------------------------------


def check_retry_backoff(retry_backoff: float, retry_backoff_max: float) -> None:
    """Check a transport's backoff options.

    Raises:
        ConfigurationError: not ``0 <= retry_backoff <= retry_backoff_max`` (NaN fails too).
    """
    if not 0 <= retry_backoff <= retry_backoff_max:
        raise ConfigurationError(
            f"need 0 <= retry_backoff <= retry_backoff_max, got {retry_backoff} and {retry_backoff_max}"
        )


def retry_delay(retry_backoff: float, retry_backoff_max: float, attempts: int) -> float:
    """Delay before redelivering a message that failed ``attempts`` times.

    ``retry_backoff * 2 ** (attempts - 1)`` (``retry_backoff`` for ``attempts <= 1``), at most
    ``retry_backoff_max``; any delivery count is fine (no huge integers are built).
    """
    try:
        delay = math.ldexp(retry_backoff, attempts - 1 if attempts > 1 else 0)
    except OverflowError:
        return retry_backoff_max
    return min(delay, retry_backoff_max)


# -- subscribe ---------------------------------------------------------------------------------------


class SubscribeArgs(NamedTuple):
    """The arguments of one ``subscribe()`` call, checked (see :meth:`TransportBase.subscribe`)."""

    codec: Codec
    handler: Handler
    qos: QoS
    group: str | None
    destination: str
    max_in_flight: int
    max_deliver: int


class TransportBase(AsyncCloseable, Generic[SubT]):
    """The part of :class:`~catga.protocols.Transport` every backend implements alike.

    Subclasses set ``registry`` and implement :meth:`_check_open`, :meth:`_subscribe` and ``aclose``.
    """

    registry: TypeRegistry
    #: What a group is called in error messages.
    _group_kind: ClassVar[str] = "consumer group"

    def _check_open(self) -> None:
        """Raise when the transport takes no more subscriptions (it is closing or closed)."""
        raise NotImplementedError

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
            ConfigurationError: bad limits, ``message_type`` is not a class, or (memory) the transport
                is closing.
            InvalidIdentifierError: a malformed destination or group.
            BackendError: the transport is closed (NATS, Redis: ``BackendUnavailableError``), or the
                consumers, groups or server subscriptions could not be created.
        """
        self._check_open()
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


class SubscriptionBase(Generic[TransportT]):
    """What a remote-backend subscription keeps of its ``subscribe()`` call (its :class:`SubscribeArgs`).

    Attributes:
        transport: the transport it belongs to.
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

    def __init__(self, transport: TransportT, args: SubscribeArgs) -> None:
        self.transport = transport
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


# -- consuming ---------------------------------------------------------------------------------------


def decode_delivery(
    codec: Codec, destination: str, headers: dict[str, str], body: bytes
) -> tuple[Any, Metadata]:
    """Decode a delivery of a subscription that takes ``codec``'s type only.

    Raises:
        SerializationError: bad or missing catga headers, another message type, or malformed bytes.
    """
    name, meta = Metadata.from_headers(headers)
    if name != codec.name:
        raise SerializationError(
            f"message type {name!r} on {destination!r}, but this subscription decodes {codec.name!r}"
        )
    return codec.decode(body), meta


class Fate(enum.Enum):
    """What becomes of a message whose handler raised."""

    DROP = "drop"  #: at-most-once: lost (logged)
    DEAD = "dead"  #: the last allowed delivery failed: dead-letter it
    RETRY = "retry"  #: redeliver it after a backoff


def handler_failed(
    log: logging.Logger,
    qos: QoS,
    message_id: object,
    destination: str,
    attempts: int,
    max_deliver: int,
    exc: Exception,
) -> tuple[Fate, str]:
    """Log a handler failure and decide the message's fate; returns it with the error text."""
    if qos == QoS.AT_MOST_ONCE:
        log.error(
            "handler failed for message %s on %r (at-most-once: dropped)",
            message_id,
            destination,
            exc_info=exc,
        )
        return Fate.DROP, ""
    error = f"{type(exc).__name__}: {exc}"
    if attempts >= max_deliver:
        log.error(
            "handler failed for message %s on %r %d times; dead-lettering it: %s",
            message_id,
            destination,
            attempts,
            error,
        )
        return Fate.DEAD, error
    log.warning(
        "handler failed for message %s on %r (delivery %d of %d), retrying: %s",
        message_id,
        destination,
        attempts,
        max_deliver,
        error,
    )
    return Fate.RETRY, error


def new_dead_letter(
    letter_id: str,
    source: str,
    body: bytes,
    headers: dict[str, str],
    error: str,
    attempts: int,
    *,
    command: bool = False,
) -> DeadLetter:
    """A :class:`~catga.protocols.DeadLetter` for a delivery that failed now (type and id from its headers).

    ``source`` is the subscription's destination (as the application names it), ``command`` whether the
    message was sent (``send``) rather than published.
    """
    return DeadLetter(
        id=letter_id,
        source=source,
        type_name=headers.get(H_TYPE, ""),
        body=body,
        headers=headers,
        error=error,
        attempts=attempts,
        failed_at=time.time(),
        kind=COMMAND if command else EVENT,
        message_id=headers.get(H_ID, ""),
    )


async def add_dead_letter(
    dlq: DeadLetterQueue | None,
    log: logging.Logger,
    letter_id: str,
    source: str,
    body: bytes,
    headers: dict[str, str],
    error: str,
    attempts: int,
    *,
    command: bool = False,
    if_failed: str = "",
) -> bool:
    """Store a failed delivery in ``dlq``; without a queue, log it as dropped.

    Returns:
        False when the queue failed (logged with ``if_failed`` appended): the caller keeps the message.
    """
    if dlq is None:
        log.error("message %s on %r dropped (no dead-letter queue): %s", letter_id, source, error)
        return True
    try:
        await dlq.add(new_dead_letter(letter_id, source, body, headers, error, attempts, command=command))
    except Exception:
        log.exception("could not dead-letter message %s from %r%s", letter_id, source, if_failed)
        return False
    return True


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


# -- exactly once ----------------------------------------------------------------------------------

_COMPLETE_RETRY_FIRST = 0.05
_COMPLETE_RETRY_MAX = 1.0


async def complete_inbox(inbox: InboxStore, key: str, within: float, log: logging.Logger) -> bool:
    """Record ``key`` as handled in ``inbox``, retrying for up to ``within`` seconds; False if it never was.

    The handler of an ``EXACTLY_ONCE`` message has run; until ``complete`` is recorded, the claim is
    only a lock that ends ``lock_ttl`` (the transport's ``ack_wait``) after the claim, and a
    redelivery after that runs the handler again. One failed ``complete`` (the inbox's server lost
    its leader, say) used to be logged and forgotten, so the next redelivery always ran the handler a
    second time. Retrying with a capped backoff records it as soon as the inbox answers again: a
    redelivery then finds it completed, as long as the outage is shorter than the lock.

    The first attempt costs one await (the hot path); cancellation propagates.
    """
    try:
        await inbox.complete(key)
        return True
    except Exception as exc:
        first = exc
    deadline = time.monotonic() + within
    delay = _COMPLETE_RETRY_FIRST
    attempts = 1
    while time.monotonic() + delay < deadline:
        await asyncio.sleep(delay)
        attempts += 1
        try:
            await inbox.complete(key)
        except Exception:
            delay = min(delay * 2, _COMPLETE_RETRY_MAX)
            continue
        log.warning("inbox complete of %s succeeded on attempt %d (first error: %r)", key, attempts, first)
        return True
    log.error(
        "inbox complete of %s failed for %.1f s (%d attempts, first error: %r); once its claim expires a "
        "redelivery may run the handler again",
        key,
        within,
        attempts,
        first,
    )
    return False
