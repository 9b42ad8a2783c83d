"""The consuming side of :class:`~catga.nats.transport.NatsTransport`: subscriptions and pull consumers.

A :class:`NatsSubscription` owns what one ``subscribe()`` call started: core NATS subscriptions
(at-most-once) or :class:`PullConsumer` loops (at-least-once), the handler tasks, and a semaphore that
keeps at most ``max_in_flight`` handlers running.

A :class:`PullConsumer` feeds one JetStream consumer without nats-py's ``fetch()`` (which holds every
message until the whole batch arrived or the timeout passed): it keeps one pull request outstanding on
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<name>``, for the free slots only, so messages requested plus
messages in hand never exceed ``max_in_flight``; each message is handed to a handler task the moment it
arrives. A request ends when fully delivered or when the server says so with a status message on its
own reply subject ``<inbox>.<n>`` (408 expired, 409 conflict, 404, 503); a request the server forgot (a
reconnect) is given up after ``pull_expires`` plus a grace. A new request waits until a quarter of the
window is free (or nothing is in hand), so a saturated consumer pulls in batches, not one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from catga._outage import OutageLog
from catga._transport import (
    SubscribeArgs,
    SubscriptionBase,
    complete_inbox,
    drain,
    new_dead_letter,
    retry_delay,
)
from catga.errors import BackendError, CatgaError, SerializationError, UnknownMessageTypeError
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.nats._wire import LeanConnection, parse_headers, reply_status
from catga.protocols import ClaimStatus

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as ClientSubscription

    from catga.nats.transport import NatsTransport

__all__ = ("Delivery", "NatsSubscription", "PullConsumer", "settle")

logger = logging.getLogger("catga.nats.transport")

_DESCRIPTION = "Description"
_GRACE = 2.0  # seconds past a pull request's expiry before we stop waiting for its 408
_CONFLICT_PAUSE = 0.25  # seconds before re-pulling after a 409/503 status
_encode_json = msgspec.json.encode


async def settle(op: Coroutine[Any, Any, None], what: str) -> None:
    """Await an ack/nak/term/reply; a failure is only logged (an unacked message is redelivered by
    JetStream after ``ack_wait``; a lost reply makes the caller time out)."""
    try:
        await op
    except (nats.errors.Error, BackendError, OSError, TimeoutError) as exc:
        logger.warning("%s failed: %r", what, exc)


class NatsSubscription(SubscriptionBase["NatsTransport"]):
    """A live subscription of :class:`~catga.nats.NatsTransport`; ``aclose()`` stops it gracefully.

    Attributes: see :class:`~catga._transport.SubscriptionBase` (``destination``, ``group``, ``qos``...).
    """

    def __init__(self, transport: NatsTransport, args: SubscribeArgs) -> None:
        super().__init__(transport, args)
        self.sem = asyncio.Semaphore(args.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._core: list[ClientSubscription] = []
        self._pulls: list[PullConsumer] = []

    # -- setup -------------------------------------------------------------------------------------

    async def add_core(self, subject: str, queue: str) -> None:
        self._core.append(await self.transport.client.subscribe(subject, queue=queue, cb=self._on_core))

    async def add_pull(self, consumer: PullConsumer) -> None:
        self._pulls.append(consumer)
        await consumer.start()

    # -- decoding and dead letters -----------------------------------------------------------------

    def decode(self, msg: Msg | Delivery) -> tuple[Any, Metadata]:
        """Decode a delivery into ``(message, metadata)``.

        Raises:
            SerializationError: no catga headers, another type, or malformed bytes.
        """
        headers = msg.headers
        wire = headers.get(H_TYPE) if headers else None
        if wire is None or headers is None:
            raise SerializationError(
                f"message on {msg.subject!r} has no {H_TYPE} header; it was not published by catga"
            )
        if wire != self.codec.name:
            if wire not in self.transport.registry:
                raise UnknownMessageTypeError(wire)
            raise SerializationError(
                f"message on {msg.subject!r} is a {wire!r}, but this subscription decodes only "
                f"{self.codec.name!r}; give the types distinct destinations"
            )
        # nats-py made this dict for this delivery alone; JetStream adds no other header on delivery.
        headers.pop("Nats-Msg-Id", None)
        _, metadata = Metadata.from_headers(headers)
        return self.codec.decode(msg.data), metadata

    async def dead_letter(self, msg: Msg | Delivery, error: str, attempts: int) -> bool:
        """Store ``msg`` in the dead-letter queue; return False if that failed (keep the message)."""
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        msg_id = headers.get(H_ID) or _fallback_id(msg)
        command = msg.subject.startswith(f"{self.transport.prefix}.cmd.")
        letter = new_dead_letter(
            msg_id, self.destination, msg.data, headers, error, attempts, command=command
        )
        dlq = self.transport.dead_letters
        if dlq is None:
            logger.error(
                "dropping message %s from %s after %d deliveries (no dead-letter queue configured): %s",
                msg_id,
                msg.subject,
                attempts,
                error,
            )
            return True
        try:
            await asyncio.wait_for(dlq.add(letter), self.transport.timeout)
        except Exception:
            logger.exception("could not dead-letter message %s from %s; will retry it", msg_id, msg.subject)
            return False
        logger.warning("dead-lettered message %s from %s: %s", msg_id, msg.subject, error)
        return True

    # -- at most once --------------------------------------------------------------------------------

    async def _on_core(self, msg: Msg) -> None:
        await self.sem.acquire()  # back-pressure: nats-py buffers (and drops past its limits)
        if self.closing:
            self.sem.release()
            return
        task = asyncio.create_task(self._run_core(msg))
        self.tasks.add(task)
        task.add_done_callback(self._core_done)

    def _core_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.sem.release()

    async def _run_core(self, msg: Msg) -> None:
        try:
            message, metadata = self.decode(msg)
        except SerializationError as exc:
            await self.dead_letter(msg, str(exc), 1)
            return
        try:
            await self.handler(message, metadata)
        except Exception:
            logger.exception(
                "handler failed for message %s on %s (at-most-once: not retried)",
                metadata.message_id,
                msg.subject,
            )

    # -- at least once -------------------------------------------------------------------------------

    def backoff(self, delivered: int) -> float:
        t = self.transport
        return retry_delay(t.retry_backoff, t.retry_backoff_max, delivered)

    async def run_js(self, msg: Delivery, consumer: PullConsumer) -> None:
        """Handle one JetStream delivery under the in-flight limit; settle it by policy."""
        async with self.sem:
            if self.closing:
                await settle(msg.nak(), "nak on close")
                return
            await self._handle_js(msg, consumer)

    async def _handle_js(self, msg: Delivery, consumer: PullConsumer) -> None:
        delivered = _num_delivered(msg.reply)
        try:
            message, metadata = self.decode(msg)
        except SerializationError as exc:
            await self._fail_terminally(msg, f"undecodable: {exc}", delivered)
            return
        if delivered > self.max_deliver:
            await self._fail_terminally(
                msg,
                f"delivered {delivered} times without being acknowledged (the consumer died or the "
                f"handler ran longer than ack_wait={self.transport.ack_wait} s)",
                delivered,
            )
            return
        key: str | None = None
        inbox = self.transport.inbox
        if self.qos == QoS.EXACTLY_ONCE and inbox is not None:
            key = f"{consumer.name}:{metadata.message_id}"
            try:
                claim = await inbox.claim(key, lock_ttl=self.transport.ack_wait)
            except Exception:
                logger.exception("inbox claim of %s failed; will retry", key)
                await settle(msg.nak(delay=self.backoff(delivered)), "nak")
                return
            if claim.status == ClaimStatus.COMPLETED:
                await settle(msg.ack(), "ack of a duplicate")
                return
            if claim.status == ClaimStatus.IN_PROGRESS:
                await settle(msg.nak(delay=self.backoff(delivered)), "nak of a message in progress")
                return
        try:
            await self.handler(message, metadata)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancelled(msg, key))
            raise
        except Exception as exc:
            # catga's own errors say what happened (the mediator logged a backend outage already):
            # a traceback per delivery only for anything else.
            logger.warning(
                "handler failed for message %s on %s (delivery %d of %d): %s: %s",
                metadata.message_id,
                msg.subject,
                delivered,
                self.max_deliver,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, CatgaError) or logger.isEnabledFor(logging.DEBUG),
            )
            if key is not None and inbox is not None:
                await _quietly(inbox.release(key), f"inbox release of {key}")
            if delivered >= self.max_deliver:
                await self._fail_terminally(msg, f"{type(exc).__name__}: {exc}", delivered)
            else:
                await settle(msg.nak(delay=self.backoff(delivered)), "nak")
            return
        if key is not None and inbox is not None:
            await complete_inbox(inbox, key, self.transport.ack_wait, logger)
        await settle(msg.ack(), "ack")

    async def _fail_terminally(self, msg: Delivery, error: str, delivered: int) -> None:
        if await self.dead_letter(msg, error, delivered):
            await settle(msg.term(), "term")
        else:
            await settle(msg.nak(delay=self.backoff(delivered)), "nak")

    async def _cancelled(self, msg: Delivery, key: str | None) -> None:
        inbox = self.transport.inbox
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.transport.timeout):
                if key is not None and inbox is not None:
                    await _quietly(inbox.release(key), f"inbox release of {key}")
                await settle(msg.nak(), "nak on cancel")

    # -- shutdown ------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop receiving, let in-flight handlers finish (up to ``drain_timeout``), release consumers."""
        if self._closed:
            return
        self._closed = True
        self.closing = True
        t = self.transport
        t._forget(self)
        for pull in self._pulls:
            await pull.stop()
        for sub in self._core:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(sub.unsubscribe(), t.timeout)
        pending = await drain(set(self.tasks), t.drain_timeout)
        if pending:
            logger.warning(
                "%d handlers on %s still running after %s s; cancelled",
                len(pending),
                self.destination,
                t.drain_timeout,
            )
            await asyncio.wait(pending, timeout=t.timeout)
        for pull in self._pulls:
            if pull.ephemeral:
                with contextlib.suppress(Exception):
                    await t.delete_consumer(pull.stream, pull.name)


class Delivery:
    """One JetStream delivery received on the lean connection, with what the handlers need of it.

    ``ack``/``nak``/``term`` publish the JetStream acknowledgement on the lean connection (fire and
    forget, as nats-py does without ``ack_sync``), written with the other acks of the same event-loop
    iteration in one system call.
    """

    __slots__ = ("_ack_subject", "_wire", "data", "headers", "reply", "subject")

    def __init__(
        self, wire: LeanConnection, subject: bytes, reply: bytes, hdr: bytes | None, data: bytes
    ) -> None:
        self._wire = wire
        self._ack_subject = reply
        self.subject = subject.decode()
        self.reply = reply.decode()
        self.headers = parse_headers(hdr)
        self.data = data

    async def ack(self) -> None:
        self._wire.publish(self._ack_subject, b"+ACK", None, soon=True)

    async def nak(self, delay: float | None = None) -> None:
        body = b"-NAK" if not delay else b'-NAK {"delay": %d}' % int(delay * 1e9)
        self._wire.publish(self._ack_subject, body, None, soon=True)

    async def term(self) -> None:
        self._wire.publish(self._ack_subject, b"+TERM", None, soon=True)


class PullConsumer:
    """Keeps one JetStream pull consumer supplied with a request for its free slots (see module docs).

    Pull requests, deliveries and acknowledgements all go over the lean connection (one subscription
    on this consumer's inbox, routed by sid to :meth:`_on_message`); nats-py only manages the consumer.
    """

    def __init__(self, owner: NatsSubscription, stream: str, name: str, *, ephemeral: bool) -> None:
        self.owner = owner
        self.stream = stream
        self.name = name
        self.ephemeral = ephemeral
        self.window = owner.max_in_flight
        self._threshold = max(1, self.window // 4)
        self._open = 0  # delivered, not yet settled
        self._token: bytes | None = None  # the outstanding pull request
        self._left = 0  # messages it may still deliver
        self._deadline = 0.0
        self._seq = 0
        self._wake = asyncio.Event()
        self._pause_until = 0.0
        self._inbox = b""
        # While the server is down every pull fails (4 a second): one line per outage, not per pull.
        self._outage = OutageLog(logger, f"pull requests of JetStream consumer {name} on {stream}")
        t = owner.transport
        self._wire: LeanConnection = t._wire
        self._next_subject = f"{t.connection.api_prefix}.CONSUMER.MSG.NEXT.{stream}.{name}".encode()
        self._sid: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        wire = self._wire
        if not wire.connected:
            await wire.connect()
        self._inbox = self.owner.transport.client.new_inbox().encode()
        self._sid = wire.subscribe(self._inbox + b".*", self._on_message)
        self._task = asyncio.create_task(self._loop(), name=f"catga-pull-{self.name}")

    async def _loop(self) -> None:
        t = self.owner.transport
        wire = self._wire
        expires_ns = int(t.pull_expires * 1e9)
        while True:
            now = time.monotonic()
            if self._token is not None and now > self._deadline:
                self._token = None  # the server forgot it (reconnect): ask again
            free = self.window - self._open
            if (
                self._token is None
                and now >= self._pause_until
                and (free >= self._threshold or (free > 0 and self._open == 0))
            ):
                self._seq += 1
                token = self._token = b"%d" % self._seq
                self._left = free
                self._deadline = now + t.pull_expires + _GRACE
                try:
                    if not wire.connected:
                        await wire.connect()  # subscribes the inbox again
                    request = _encode_json({"batch": free, "expires": expires_ns})
                    wire.publish(self._next_subject, request, None, reply=self._inbox + b"." + token)
                except (BackendError, OSError) as exc:
                    self._outage.failure(exc, f"retrying every {_CONFLICT_PAUSE} s")
                    self._token = None
                    self._pause_until = time.monotonic() + _CONFLICT_PAUSE
                else:
                    if self._outage.failing:
                        self._outage.recovered()
                continue
            self._wake.clear()
            wake_at = self._deadline if self._token is not None else now + t.pull_expires
            if self._pause_until > now:
                wake_at = min(wake_at, self._pause_until)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake_at - now, 0.001)):
                    await self._wake.wait()

    def _on_message(self, subject: bytes, reply: bytes | None, hdr: bytes | None, data: bytes) -> None:
        if reply is None:  # a status of a pull request, on <inbox>.<token>
            status = reply_status(hdr)
            if status == 100 or status == 0:  # heartbeat, or nothing we know
                return
            if subject.rpartition(b".")[2] == self._token:
                self._token = None
                if status in (409, 503):
                    desc = parse_headers(hdr).get(_DESCRIPTION, "")
                    logger.debug("pull on %s/%s ended with %s %s", self.stream, self.name, status, desc)
                    self._pause_until = time.monotonic() + _CONFLICT_PAUSE
                self._wake.set()
            return
        if self._token is not None:
            self._left -= 1
            if self._left <= 0:
                self._token = None
                self._wake_if_worth_pulling()
        self._open += 1
        delivery = Delivery(self._wire, subject, reply, hdr, data)
        task = asyncio.create_task(self.owner.run_js(delivery, self))
        self.owner.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._open -= 1
        self.owner.tasks.discard(task)
        if self._token is None:
            self._wake_if_worth_pulling()

    def _wake_if_worth_pulling(self) -> None:
        # Wake the loop only when it would send a request: no per-message loop iteration.
        free = self.window - self._open
        if free >= self._threshold or (free > 0 and self._open == 0):
            self._wake.set()

    async def stop(self) -> None:
        """Stop pulling and stop listening; messages already in hand are left to the owner."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        sid, self._sid = self._sid, None
        if sid is not None:
            self._wire.unsubscribe(sid)


async def _quietly(op: Awaitable[Any], what: str) -> None:
    try:
        await op
    except Exception:
        logger.exception("%s failed", what)


def _ack_fields(reply: str) -> list[str]:
    """A JetStream ack subject's tokens in its 9-token layout, ``$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>.<consumer seq>.<timestamp>.<pending>`` (the 12-token form's domain and account hash are
    dropped), without nats-py's datetime-building parser."""
    tokens = reply.split(".")
    return tokens if len(tokens) == 9 else tokens[:2] + tokens[4:]


def _num_delivered(reply: str) -> int:
    """The delivery count from a JetStream ack subject."""
    return int(_ack_fields(reply)[4])


def _fallback_id(msg: Msg | Delivery) -> str:
    """An id for a message without a catga message id: ``<stream>-<stream sequence>`` when known."""
    reply = msg.reply or ""
    if reply.startswith("$JS.ACK.") and reply.count(".") in (8, 11):
        fields = _ack_fields(reply)
        return f"{fields[2]}-{fields[5]}"
    return f"nats-{time.time_ns()}"
