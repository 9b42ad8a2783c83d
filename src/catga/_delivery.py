# Over 500 lines: the one delivery policy every transport shares (its decisions are written once
# on purpose, see STYLE.md); the transactional-inbox path is its fourth step run in one transaction.
"""The consumer delivery policy, written once for every transport (backend-neutral; private).

A transport's consumer receives a message (headers, body, how many times it was delivered) and calls
:meth:`DeliveryPolicy.deliver`, which runs the steps every backend shares::

    decode --> over-delivery check --> inbox claim (EXACTLY_ONCE) --> handler --> inbox complete

and returns one :class:`Outcome`: a :class:`Verdict` and a delay. The backend only executes it with
its own small delivery surface:

=========  ==================  ==================  ==================================================
verdict    memory              NATS JetStream      Redis Streams
=========  ==================  ==================  ==================================================
ACK        done                ``+ACK``            ``XACK`` (``XDEL`` on a command stream)
DEAD       done                ``+TERM``           ``XACK`` (``XDEL``)
RETRY      timer, redeliver    ``-NAK {delay}``    timer, ``XCLAIM`` (counts as a delivery)
WAIT       timer, redeliver    ``-NAK {delay}``    timer, ``XCLAIM`` (not counted as a delivery)
KEEP       timer, redeliver    ``-NAK {delay}``    left pending (``XAUTOCLAIM`` takes it again)
=========  ==================  ==================  ==================================================

At-most-once deliveries (NATS core, Redis pub/sub) have nothing to settle: the verdict is ignored.

The decisions, the same on every backend:

* A message that does not decode (bad bytes, missing catga headers, another type) is dead-lettered at
  once: ``DEAD`` (``KEEP`` if the dead-letter write failed).
* A delivery past ``max_deliver`` (its earlier deliveries never settled: a consumer died, or a handler
  ran past the broker's ack deadline) is dead-lettered unhandled.
* ``EXACTLY_ONCE`` claims ``inbox.<scope>.<message id>`` in the inbox first (``scope`` names the
  consumer group, so competing consumers share claims and groups do not): a completed claim is a
  duplicate (``ACK``, handler not run); a claim in progress elsewhere, or an inbox that fails, is
  ``WAIT`` (looked at again after a backoff, not counted as a delivery).
* A **transactional inbox** (one with ``transaction()``, :class:`TransactionalInbox`: the PostgreSQL
  inbox) runs claim, handler and complete in one transaction that the handler's writes join (see
  :class:`~catga.postgres.PostgresUnitOfWork`): the "done" record commits with the handler's effect
  or not at all, so a consumer killed at any moment leaves either both or neither, and the
  redelivery of a committed message is a duplicate. A failing handler rolls the claim back with its
  writes (nothing to release); a claim, complete or commit that fails is ``WAIT``.
* A failing handler: at-most-once drops the message (logged, ``ACK``); otherwise ``RETRY`` after
  ``retry_backoff * 2 ** (delivery - 1)`` (capped), and the failure of delivery ``max_deliver``
  dead-letters it.
* A dead letter's id is the message's catga id; a message without one gets a digest of its
  destination, headers and body, so every subscription and every path that dead-letters one message
  writes one record (a duplicate id replaces the record). Its ``source`` is the destination.

Hot path: one ``deliver`` call per message; a message handled without failure allocates no outcome.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import catga._observe as _observe
from catga.errors import CatgaError, ConfigurationError, SerializationError, UnknownMessageTypeError
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import COMMAND, EVENT, ClaimStatus, DeadLetter, DeadLetterQueue, IdempotencyStore
from catga.serialization import Codec, TypeRegistry

__all__ = (
    "ACKED",
    "DeliveryPolicy",
    "Outcome",
    "TransactionalInbox",
    "Verdict",
    "check_retry_backoff",
    "complete_inbox",
    "decode",
    "inbox_key",
    "letter_id",
    "new_dead_letter",
    "retry_delay",
)

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


# -- the outcome -------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    """What the backend does with a delivery (see the module docs for each backend's action)."""

    ACK = "ack"  #: settled: handled, a duplicate, or dropped (at-most-once)
    DEAD = "dead"  #: dead-lettered: terminate it
    RETRY = "retry"  #: the handler failed: redeliver after the delay (a delivery was spent)
    WAIT = "wait"  #: not handled (claim in progress elsewhere, inbox down): look again after the delay
    KEEP = "keep"  #: the dead-letter write failed: keep it with the broker, try again after the delay


class Outcome(NamedTuple):
    """The policy's decision for one delivery."""

    verdict: Verdict
    delay: float = 0.0


ACKED = Outcome(Verdict.ACK)
_DEAD = Outcome(Verdict.DEAD)


# -- decoding and dead letters ------------------------------------------------------------------------


def decode(
    codec: Codec, destination: str, headers: dict[str, str], body: bytes, registry: TypeRegistry | None = None
) -> tuple[Any, Metadata]:
    """Decode a delivery for a subscription that takes ``codec``'s type only.

    Raises:
        SerializationError: no catga type header, another message type (``UnknownMessageTypeError``
            when ``registry`` does not know it), malformed catga headers, or malformed bytes.
    """
    name = headers.get(H_TYPE)
    if name is None:
        raise SerializationError(
            f"message on {destination!r} has no {H_TYPE} header; it was not published by catga"
        )
    if name != codec.name:
        if registry is not None and name not in registry:
            raise UnknownMessageTypeError(name)
        raise SerializationError(
            f"message on {destination!r} is a {name!r}, but this subscription decodes only "
            f"{codec.name!r}; give the types distinct destinations"
        )
    _, meta = Metadata.from_headers(headers)
    return codec.decode(body), meta


def letter_id(destination: str, headers: dict[str, str], body: bytes) -> str:
    """The dead-letter id of a message: its catga id, else ``unidentified-<digest>`` of its destination,
    headers and body (the same on every subscription and backend that dead-letters it)."""
    mid = headers.get(H_ID)
    if mid:
        return mid
    h = hashlib.blake2b(destination.encode(), digest_size=10)
    for k, v in sorted(headers.items()):
        h.update(b"\0" + k.encode() + b"\0" + v.encode())
    h.update(b"\0\0" + body)
    return f"unidentified-{h.hexdigest()}"


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


def inbox_key(scope: str, message_id: object) -> str:
    """The inbox key of an ``EXACTLY_ONCE`` message: ``inbox.<scope>.<message id>`` on every backend."""
    return f"inbox.{scope}.{message_id}"


# -- exactly once ----------------------------------------------------------------------------------


@runtime_checkable
class TransactionalInbox(Protocol):
    """An inbox whose claim and complete can share one transaction with the handler's writes."""

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A transaction that ``claim``/``complete`` (and the stores the handler uses) join; it
        commits when the block ends without error and rolls back otherwise."""
        ...


class _HandlerFailed(Exception):
    """Carries a handler's exception out of a transactional delivery (rolling it back)."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(str(exc))
        self.exc = exc


_COMPLETE_RETRY_FIRST = 0.05
_COMPLETE_RETRY_MAX = 1.0


async def complete_inbox(inbox: IdempotencyStore, key: str, within: float, log: logging.Logger) -> bool:
    """Record ``key`` as handled in ``inbox``, retrying for up to ``within`` seconds; False if it never was.

    The handler of an ``EXACTLY_ONCE`` message has run; until ``complete`` is recorded, the claim is
    only a lock that ends ``lock_ttl`` after the claim, and a redelivery after that runs the handler
    again. Retrying with a capped backoff records it as soon as the inbox answers again: a redelivery
    then finds it completed, as long as the outage is shorter than the lock.

    The first attempt costs one await (the hot path); cancellation propagates.
    """
    try:
        await inbox.complete(key)
        return True
    except Exception as exc:
        return await _complete_retry(inbox, key, within, log, exc)


async def _complete_retry(
    inbox: IdempotencyStore, key: str, within: float, log: logging.Logger, first: Exception
) -> bool:
    """:func:`complete_inbox` after its first attempt failed with ``first``."""
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


def _reason(error: str) -> str:
    """The low-cardinality reason of a dead letter, from its error text (a metric label)."""
    if error.startswith("undecodable"):
        return "undecodable"
    if error.startswith("delivered "):
        return "over_delivered"
    return "failed"


# -- the policy --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    """What a subscription needs to decide the fate of each delivery (built by its transport).

    Attributes:
        codec: the codec of the one message type the subscription decodes.
        handler: the user's handler.
        qos: the subscription's delivery guarantee.
        destination: the destination it listens on (a dead letter's ``source``).
        max_deliver: deliveries before a failing message is dead-lettered.
        log: where failures are logged (the backend's transport logger).
        registry: names an unknown message type in the error (optional).
        inbox: the store ``EXACTLY_ONCE`` claims message ids in; None for the other QoS.
        inbox_ttl: the claim's lock ttl (the broker's redelivery deadline), also how long a failed
            ``complete`` is retried.
        dead_letters: where failed and undecodable messages go; None logs and drops them.
        dead_letter_timeout: seconds a dead-letter write may take (None: the queue's own timeouts).
        retry_backoff: delay before the first redelivery; doubles per delivery.
        retry_backoff_max: cap of that delay.
        over_delivered: why a delivery can be past ``max_deliver`` on this backend (for the letter).
    """

    codec: Codec
    handler: Handler
    qos: QoS
    destination: str
    max_deliver: int
    log: logging.Logger
    registry: TypeRegistry | None = None
    inbox: IdempotencyStore | None = None
    inbox_ttl: float = 30.0
    dead_letters: DeadLetterQueue | None = None
    dead_letter_timeout: float | None = None
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    over_delivered: str = "its consumers died or stalled"

    def backoff(self, attempts: int) -> float:
        """Delay before redelivering a message that failed ``attempts`` times."""
        return retry_delay(self.retry_backoff, self.retry_backoff_max, attempts)

    async def deliver(
        self,
        headers: dict[str, str],
        body: bytes,
        attempts: int,
        scope: str,
        *,
        command: bool = False,
        observe: bool = True,
    ) -> Outcome:
        """Run one delivery through the policy (see the module docs); return what to do with it.

        Args:
            headers: the wire headers (not modified; a dead letter keeps them).
            body: the encoded message.
            attempts: this delivery's number, 1 for the first.
            scope: the consumer group's inbox scope (``EXACTLY_ONCE``): equal for competing consumers,
                distinct between groups.
            command: the message was sent (a command), not published (recorded in a dead letter).
            observe: report to the installed :mod:`catga._observe` probe, if any (False: the probe's
                own call, inside its span).

        Raises:
            CancelledError: the delivery was cancelled (an inbox claim is released first).
        """
        if observe and _observe.probe is not None:
            return await self._observed(_observe.probe, headers, body, attempts, scope, command)
        try:
            message, meta = decode(self.codec, self.destination, headers, body, self.registry)
        except SerializationError as exc:
            return await self.dead_letter(headers, body, f"undecodable: {exc}", attempts, command)
        if attempts > self.max_deliver:
            error = (
                f"delivered {attempts} times without an ack (max_deliver={self.max_deliver}): "
                f"{self.over_delivered}"
            )
            return await self.dead_letter(headers, body, error, attempts, command)
        inbox = self.inbox
        if inbox is None:
            try:
                await self.handler(message, meta)
            except Exception as exc:
                return await self._failed(headers, body, meta, attempts, command, exc)
            return ACKED
        key = inbox_key(scope, meta.message_id)
        begin = getattr(inbox, "transaction", None)
        if begin is not None:
            return await self._deliver_in_transaction(
                begin, inbox, key, message, meta, headers, body, attempts, command
            )
        try:
            claim = await inbox.claim(key, self.inbox_ttl)
        except Exception as exc:
            self.log.warning("inbox claim of %s failed (%r); retrying it later", key, exc)
            return Outcome(Verdict.WAIT, self.backoff(attempts))
        if claim.status == ClaimStatus.COMPLETED:
            self.log.debug("duplicate message %s on %r acked unhandled", meta.message_id, self.destination)
            return ACKED
        if claim.status == ClaimStatus.IN_PROGRESS:
            return Outcome(Verdict.WAIT, self.backoff(1))
        try:
            await self.handler(message, meta)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_soon(inbox, key))
            raise
        except Exception as exc:
            await self._release(inbox, key)
            return await self._failed(headers, body, meta, attempts, command, exc)
        try:
            await inbox.complete(key)
        except Exception as exc:  # retried for up to the claim's ttl (see complete_inbox)
            await _complete_retry(inbox, key, self.inbox_ttl, self.log, exc)
        return ACKED

    @property
    def system(self) -> str:
        """The backend's name, from its transport logger's (``catga.<backend>.transport``)."""
        parts = self.log.name.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    async def _observed(
        self,
        probe: _observe.Probe,
        headers: dict[str, str],
        body: bytes,
        attempts: int,
        scope: str,
        command: bool,
    ) -> Outcome:
        """:meth:`deliver` inside the probe's ``process`` span, its verdict as the outcome."""
        with probe.process(self.system, self.destination, headers, attempts, command=command) as span:
            outcome = await self.deliver(headers, body, attempts, scope, command=command, observe=False)
            span.outcome(outcome.verdict.value)
            return outcome

    async def _deliver_in_transaction(
        self,
        begin: Callable[[], AbstractAsyncContextManager[Any]],
        inbox: IdempotencyStore,
        key: str,
        message: Any,
        meta: Metadata,
        headers: dict[str, str],
        body: bytes,
        attempts: int,
        command: bool,
    ) -> Outcome:
        """Claim, handle and complete in one transaction of a :class:`TransactionalInbox`."""
        try:
            async with begin():
                claim = await inbox.claim(key, self.inbox_ttl)
                if claim.status == ClaimStatus.COMPLETED:
                    self.log.debug(
                        "duplicate message %s on %r acked unhandled", meta.message_id, self.destination
                    )
                    return ACKED
                if claim.status == ClaimStatus.IN_PROGRESS:
                    return Outcome(Verdict.WAIT, self.backoff(1))
                try:
                    await self.handler(message, meta)
                except Exception as exc:
                    raise _HandlerFailed(exc) from exc
                await inbox.complete(key)
        except _HandlerFailed as failed:  # rolled back: the claim went with the handler's writes
            return await self._failed(headers, body, meta, attempts, command, failed.exc)
        except Exception as exc:  # claim, complete or commit failed: nothing was committed
            self.log.warning("inbox transaction of %s failed (%r); retrying it later", key, exc)
            return Outcome(Verdict.WAIT, self.backoff(attempts))
        return ACKED

    async def _release(self, inbox: IdempotencyStore, key: str) -> None:
        try:
            await inbox.release(key)
        except Exception:
            self.log.exception("inbox release of %s failed (a redelivery waits for its claim to expire)", key)

    async def _release_soon(self, inbox: IdempotencyStore, key: str) -> None:
        try:
            async with asyncio.timeout(5.0):
                await self._release(inbox, key)
        except TimeoutError:
            self.log.warning("inbox release of %s on cancel timed out", key)

    async def _failed(
        self,
        headers: dict[str, str],
        body: bytes,
        meta: Metadata,
        attempts: int,
        command: bool,
        exc: Exception,
    ) -> Outcome:
        log, mid, dest = self.log, meta.message_id, self.destination
        # catga's own errors say what happened (the mediator logged an outage already): a traceback
        # per delivery only for anything else.
        trace = exc if not isinstance(exc, CatgaError) or log.isEnabledFor(logging.DEBUG) else None
        if self.qos == QoS.AT_MOST_ONCE:
            log.error("handler failed for message %s on %r (at-most-once: dropped)", mid, dest, exc_info=exc)
            return ACKED
        error = f"{type(exc).__name__}: {exc}"
        if attempts >= self.max_deliver:
            log.error(
                "handler failed for message %s on %r %d times; dead-lettering it: %s",
                mid,
                dest,
                attempts,
                error,
                exc_info=trace,
            )
            return await self.dead_letter(headers, body, error, attempts, command)
        log.warning(
            "handler failed for message %s on %r (delivery %d of %d), retrying: %s",
            mid,
            dest,
            attempts,
            self.max_deliver,
            error,
            exc_info=trace,
        )
        return Outcome(Verdict.RETRY, self.backoff(attempts))

    async def dead_letter(
        self, headers: dict[str, str], body: bytes, error: str, attempts: int, command: bool = False
    ) -> Outcome:
        """Store the delivery in the dead-letter queue: ``DEAD``, or ``KEEP`` when the write failed.

        Without a queue the message is logged as dropped (``DEAD``).
        """
        lid = letter_id(self.destination, headers, body)
        probe = _observe.probe
        if probe is not None:
            probe.dead_lettered(self.system, self.destination, _reason(error))
        dlq = self.dead_letters
        if dlq is None:
            self.log.error(
                "message %s on %r dropped after %d deliveries (no dead-letter queue configured): %s",
                lid,
                self.destination,
                attempts,
                error,
            )
            return _DEAD
        letter = new_dead_letter(
            lid, self.destination, bytes(body), dict(headers), error, attempts, command=command
        )
        try:
            if self.dead_letter_timeout is None:
                await dlq.add(letter)
            else:
                async with asyncio.timeout(self.dead_letter_timeout):
                    await dlq.add(letter)
        except Exception:
            self.log.exception(
                "could not dead-letter message %s from %r; it is kept and tried again", lid, self.destination
            )
            return Outcome(Verdict.KEEP, self.backoff(attempts))
        self.log.warning("dead-lettered message %s from %r: %s", lid, self.destination, error)
        return _DEAD
