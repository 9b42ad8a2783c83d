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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from catga._delivery import DeliveryPolicy, Verdict
from catga._outage import OutageLog
from catga._transport import SubscribeArgs, SubscriptionBase, drain
from catga.errors import BackendError
from catga.nats._wire import LeanConnection, parse_headers, reply_status

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as ClientSubscription

__all__ = ("ConsumerSettings", "Delivery", "NatsSubscription", "PullConsumer", "settle")

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSettings:
    """What the subscriptions of one :class:`~catga.nats.NatsTransport` use of it (set once).

    Attributes:
        client: nats-py's client (core subscriptions, inbox names).
        wire: the lean connection pull requests, deliveries and acks go over.
        api_prefix: the JetStream API prefix (``$JS.API`` or a domain's).
        command_prefix: ``<prefix>.cmd.``: a core message on a subject starting with it is a command.
        timeout: default timeout of a network call.
        drain_timeout: seconds ``aclose`` lets in-flight handlers finish.
        pull_expires: lifetime of one pull request.
        delete_consumer: deletes a JetStream consumer ``(stream, name)`` (private ones, on close).
        forget: tells the transport a subscription closed.
    """

    client: Client
    wire: LeanConnection
    api_prefix: str
    command_prefix: str
    timeout: float
    drain_timeout: float
    pull_expires: float
    delete_consumer: Callable[[str, str], Awaitable[None]]
    forget: Callable[[NatsSubscription], None]


class NatsSubscription(SubscriptionBase):
    """A live subscription of :class:`~catga.nats.NatsTransport`; ``aclose()`` stops it gracefully.

    It executes the verdicts of its :class:`~catga._delivery.DeliveryPolicy`: ``+ACK``, ``+TERM``
    (dead-lettered) or ``-NAK`` with the delay (``RETRY``, ``WAIT``, ``KEEP``).

    Attributes: see :class:`~catga._transport.SubscriptionBase` (``destination``, ``group``, ``qos``...).
    """

    def __init__(self, args: SubscribeArgs, policy: DeliveryPolicy, settings: ConsumerSettings) -> None:
        super().__init__(args)
        self.policy = policy
        self.settings = settings
        self.sem = asyncio.Semaphore(args.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._core: list[ClientSubscription] = []
        self._pulls: list[PullConsumer] = []

    # -- setup -------------------------------------------------------------------------------------

    async def add_core(self, subject: str, queue: str) -> None:
        self._core.append(await self.settings.client.subscribe(subject, queue=queue, cb=self._on_core))

    async def add_pull(self, consumer: PullConsumer) -> None:
        self._pulls.append(consumer)
        await consumer.start()

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
        headers = dict(msg.headers) if msg.headers else {}
        headers.pop("Nats-Msg-Id", None)
        command = msg.subject.startswith(self.settings.command_prefix)
        # nothing to settle on core NATS: a failed handler is dropped, a bad message dead-lettered
        await self.policy.deliver(headers, msg.data, 1, "", command=command)

    # -- at least once -------------------------------------------------------------------------------

    async def run_js(self, msg: Delivery, consumer: PullConsumer) -> None:
        """Handle one JetStream delivery under the in-flight limit; settle it by the policy's verdict."""
        async with self.sem:
            if self.closing:
                await settle(msg.nak(), "nak on close")
                return
            try:
                outcome = await self.policy.deliver(
                    msg.headers, msg.data, _num_delivered(msg.reply), consumer.name, command=consumer.command
                )
            except asyncio.CancelledError:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.timeout):
                        await asyncio.shield(settle(msg.nak(), "nak on cancel"))
                raise
            verdict = outcome.verdict
            if verdict is Verdict.ACK:
                await settle(msg.ack(), "ack")
            elif verdict is Verdict.DEAD:
                await settle(msg.term(), "term")
            else:
                await settle(msg.nak(delay=outcome.delay), "nak")

    # -- shutdown ------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop receiving, let in-flight handlers finish (up to ``drain_timeout``), release consumers."""
        if self._closed:
            return
        self._closed = True
        self.closing = True
        t = self.settings
        t.forget(self)
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
        headers = self.headers = parse_headers(hdr)
        headers.pop("Nats-Msg-Id", None)  # JetStream's de-duplication id; catga's id is Catga-Id
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

    def __init__(
        self, owner: NatsSubscription, stream: str, name: str, *, ephemeral: bool, command: bool = False
    ) -> None:
        self.owner = owner
        self.stream = stream
        self.name = name
        self.ephemeral = ephemeral
        self.command = command  # a consumer of the commands stream
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
        t = owner.settings
        self._wire: LeanConnection = t.wire
        self._next_subject = f"{t.api_prefix}.CONSUMER.MSG.NEXT.{stream}.{name}".encode()
        self._sid: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        wire = self._wire
        if not wire.connected:
            await wire.connect()
        self._inbox = self.owner.settings.client.new_inbox().encode()
        self._sid = wire.subscribe(self._inbox + b".*", self._on_message)
        self._task = asyncio.create_task(self._loop(), name=f"catga-pull-{self.name}")

    async def _loop(self) -> None:
        t = self.owner.settings
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


def _ack_fields(reply: str) -> list[str]:
    """A JetStream ack subject's tokens in its 9-token layout, ``$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>.<consumer seq>.<timestamp>.<pending>`` (the 12-token form's domain and account hash are
    dropped), without nats-py's datetime-building parser."""
    tokens = reply.split(".")
    return tokens if len(tokens) == 9 else tokens[:2] + tokens[4:]


def _num_delivered(reply: str) -> int:
    """The delivery count from a JetStream ack subject."""
    return int(_ack_fields(reply)[4])
