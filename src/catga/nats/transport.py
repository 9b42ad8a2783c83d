# Over 500 lines: one class, the Transport protocol on NATS, and most of it its documented public API
# and the publish hot path. Its parts live next door: subscriptions and pull consumers in _consumer,
# JetStream consumer set-up in _jetstream, request/reply in _reqrep, the lean socket in _wire/_protocol.
"""NATS transport: core NATS for at-most-once, JetStream for at-least-once and exactly-once.

Wire format (readable by any NATS client): the headers are :meth:`Metadata.to_headers
<catga.messages.Metadata.to_headers>` (``Catga-Type``, ``Catga-Id``, ...) plus ``Nats-Msg-Id`` (the message
id, for JetStream's publish-side de-duplication); the payload is the message encoded by the
:class:`~catga.serialization.TypeRegistry` (JSON by default). Subjects::

    <prefix>.evt.<destination>   publish (events, fan-out)
    <prefix>.cmd.<destination>   send (commands, competing consumers)
    <prefix>.rpc.<destination>   request / serve (core request-reply)

The destination defaults to the message type's wire name.

Two JetStream streams hold at-least-once traffic (created on first use):

* ``<stream>`` (default ``CATGA_MESSAGES``) captures ``<prefix>.evt.>`` with *interest* retention: a
  message is kept until every consumer (subscription group) has acked it. A new group starts with the
  messages published after it first subscribed; a durable group resumes where it left off.
* ``<stream>_COMMANDS`` captures ``<prefix>.cmd.>`` as a *work queue*: a command waits until a worker
  takes it, even if none is running when it is sent, and is removed once acked.

Per subscription (see :meth:`NatsTransport.subscribe`):

* ``AT_MOST_ONCE``: core NATS subscriptions; a ``group`` becomes a NATS queue group, ``group=None`` gets
  its own copy. Commands use the fixed queue group ``catga-cmd``.
* ``AT_LEAST_ONCE`` / ``EXACTLY_ONCE``: durable pull consumers, one for events (shared by every
  subscription of the same ``group``; a private one deleted on close when ``group=None``) and one for
  commands (shared by every subscriber of the destination). Ack after the handler returns; on error
  ``nak`` with an exponential, capped backoff (``retry_backoff``, ``retry_backoff_max``); the failure on
  delivery ``max_deliver`` puts the message in the dead-letter queue with its error and terminates it.
  A message that cannot be decoded goes to the dead-letter queue at once. ``EXACTLY_ONCE`` also claims
  the message id in the ``inbox`` before running the handler and completes it afterwards, so a
  redelivered duplicate is acked without running the handler again.
* Stuck messages (a handler that crashed the process, or ran longer than ``ack_wait``) are redelivered
  by JetStream after ``ack_wait`` seconds. Consumers allow ``max_deliver + 1`` deliveries; a delivery
  past ``max_deliver`` (the previous one never finished) goes to the dead-letter queue unhandled.
* At most ``max_in_flight`` handlers run at once per subscription; each consumer keeps at most
  ``max_in_flight`` messages requested or in hand (pull requests ask only for free slots).

Publish QoS comes from the message's :class:`~catga.messages.Metadata` (``default_qos`` when none is
given): ``AT_MOST_ONCE`` is a core publish (JetStream still stores it when the stream exists, but the
publisher does not wait); otherwise a JetStream publish that waits for the stream's ack.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from nats.aio.client import Client
from nats.js import api

from catga._delivery import check_retry_backoff
from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga._transport import (
    SubscribeArgs,
    TransportBase,
    replay_dedup_id,
    replay_headers,
    replay_route,
)
from catga.errors import BackendError, ConfigurationError, PayloadTooLargeError
from catga.ids import new_id
from catga.messages import H_ERROR, H_ID, Metadata, QoS
from catga.nats._consumer import ConsumerSettings, NatsSubscription, PullConsumer
from catga.nats._errors import translate_errors
from catga.nats._jetstream import add_consumer, consumer_name, delete_consumer, has_consumer
from catga.nats._jsapi import decode_ack
from catga.nats._protocol import header_block
from catga.nats._reqrep import NatsRpcEndpoint, interest_barrier, request
from catga.nats.connection import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    NatsConnection,
    as_connection,
    check_replicas,
)
from catga.nats.idempotency import NatsInboxStore
from catga.protocols import (
    DeadLetter,
    DeadLetterQueue,
    InboxStore,
    RawHandler,
    Subscription,
    validate_identifier,
)
from catga.serialization import TypeRegistry, default_registry

__all__ = ("H_ERROR", "NatsRpcEndpoint", "NatsSubscription", "NatsTransport")

logger = logging.getLogger("catga.nats.transport")

_CMD_QUEUE = "catga-cmd"
_PREFIX = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_\-]{1,200}\Z")
_DAY = 86400.0


class NatsTransport(TransportBase[NatsSubscription]):
    """A :class:`~catga.protocols.Transport` on NATS core and JetStream.

    Args:
        connection: a :class:`~catga.nats.connection.NatsConnection` or an open nats-py client (shared
            with the other NATS objects built on it). The transport does not close it unless
            ``owns_connection=True`` (as with :meth:`connect`).
        registry: message types allowed on the wire; :func:`~catga.serialization.default_registry` if None.
        prefix: the first subject token, to isolate applications on one server: 1-64 letters, digits,
            ``_`` or ``-`` (no dots: ``P.evt.x`` would fall under prefix ``P``'s subjects).
        stream: name of the events stream; the commands stream is ``<stream>_COMMANDS``. Default
            ``CATGA_MESSAGES`` for the default prefix, else ``<PREFIX>_MESSAGES``.
        dead_letters: where failed and undecodable messages go. Without one they are logged and dropped.
        inbox: the inbox ``EXACTLY_ONCE`` subscriptions claim message ids in; by default a
            :class:`~catga.nats.idempotency.NatsInboxStore` in bucket ``<stream>_INBOX``, made on first use.
        default_qos: publish QoS when no metadata is given.
        ack_wait: seconds JetStream waits for an ack before redelivering (also the inbox claim ttl).
        retry_backoff: nak delay after the first failed delivery; doubles per delivery.
        retry_backoff_max: cap of the nak delay.
        duplicate_window: seconds JetStream remembers ``Nats-Msg-Id`` values to drop duplicates.
        max_age: seconds a message may wait in a stream at most (None: forever).
        storage: JetStream storage of the streams (and of the default inbox).
        replicas: copies of the streams (and of the default inbox bucket) a JetStream cluster keeps,
            1-5: use 3 on a 3-node cluster, so an acknowledged publish survives the loss of a node.
            Consumers follow their stream's replicas.
        timeout: default timeout of every network call, in seconds.
        drain_timeout: how long :meth:`aclose` waits for in-flight handlers before cancelling them.
        pull_expires: lifetime of one JetStream pull request (idle consumers re-pull this often).
        owns_connection: close ``connection`` (drain, then close) in :meth:`aclose`.
        max_payload: the largest message body accepted, in bytes (default 1 MiB, as on the other
            backends); the server's ``max_payload`` applies too, whichever is smaller. A larger message
            raises :class:`~catga.errors.PayloadTooLargeError` before anything is sent.

    Example:
        >>> transport = await NatsTransport.connect("nats://127.0.0.1:4222", dead_letters=dlq)
        >>> async def on_placed(event: OrderPlaced, meta: Metadata) -> None: ...
        >>> sub = await transport.subscribe(OrderPlaced, on_placed, group="billing")
        >>> await transport.publish(OrderPlaced(order_id="o-1"))
        >>> await transport.aclose()
    """

    _backend = "nats"

    def __init__(
        self,
        connection: NatsConnection | Client,
        *,
        registry: TypeRegistry | None = None,
        prefix: str = "catga",
        stream: str | None = None,
        dead_letters: DeadLetterQueue | None = None,
        inbox: InboxStore | None = None,
        default_qos: QoS = QoS.AT_LEAST_ONCE,
        ack_wait: float = 30.0,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 30.0,
        duplicate_window: float = 120.0,
        max_age: float | None = 7 * _DAY,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
        timeout: float = 5.0,
        drain_timeout: float = 10.0,
        pull_expires: float = 5.0,
        owns_connection: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.prefix = validate_identifier(prefix, "subject prefix")
        if _PREFIX.match(prefix) is None:  # one subject token, as a URL's ?prefix= (a dot would overlap)
            raise ConfigurationError(
                f"invalid subject prefix {prefix!r}: use 1-64 letters, digits, '_' or '-' (one subject "
                "token; with dots, another prefix's '<prefix>.evt.>' could receive this transport's messages)"
            )
        self.max_payload = check_max_payload(max_payload)
        if stream is None:
            stream = "CATGA_MESSAGES" if prefix == "catga" else f"{prefix.upper()}_MESSAGES"
            stream = re.sub(r"[^A-Za-z0-9_\-]", "_", stream)
        if _STREAM_NAME.match(stream) is None:
            raise ConfigurationError(
                f"invalid JetStream stream name {stream!r}: use 1-200 ASCII letters, digits, '_' or '-'"
            )
        for name, value in (
            ("ack_wait", ack_wait),
            ("timeout", timeout),
            ("drain_timeout", drain_timeout),
            ("pull_expires", pull_expires),
        ):
            if value <= 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, got {value}")
        check_retry_backoff(retry_backoff, retry_backoff_max)
        self.replicas = check_replicas(replicas)
        self.connection = as_connection(connection)
        self.client: Client = self.connection.client
        self.registry = registry if registry is not None else default_registry()
        self.stream = stream
        self.command_stream = f"{stream}_COMMANDS"
        self.dead_letters = dead_letters
        self.inbox = inbox
        self.default_qos = QoS(default_qos)
        self.ack_wait = ack_wait
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.storage = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.pull_expires = pull_expires
        self._owns_connection = owns_connection
        self._js = self.client.jetstream(prefix=self.connection.api_prefix, timeout=timeout)
        self._wire = self.connection.wire  # the lean socket for JetStream publishes (see connection.py)
        self.connection.attach()
        self._streams_ready = False
        self._init_lock = asyncio.Lock()
        self._own_inbox: NatsInboxStore | None = None
        self._subscriptions: set[NatsSubscription] = set()
        self._servers: set[NatsRpcEndpoint] = set()
        self._subjects: dict[tuple[str, str], str] = {}
        self._closed = False
        self._consumer_settings = ConsumerSettings(
            client=self.client,
            wire=self._wire,
            api_prefix=self.connection.api_prefix,
            command_prefix=f"{self.prefix}.cmd.",
            timeout=timeout,
            drain_timeout=drain_timeout,
            pull_expires=pull_expires,
            delete_consumer=self.delete_consumer,
            forget=self._forget,
        )

    @classmethod
    async def connect(
        cls, url: str = DEFAULT_URL, *, connect_options: Mapping[str, Any] | None = None, **options: Any
    ) -> NatsTransport:
        """Connect to ``url`` and return a transport that owns (and will close) the connection.

        Args:
            url: server URL(s), credentials allowed (``nats://user:pass@127.0.0.1:4222``).
            connect_options: keyword arguments for :meth:`NatsConnection.connect
                <catga.nats.connection.NatsConnection.connect>` (``token``, ``tls``, ``name``...).
            **options: keyword options of :class:`NatsTransport`.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            ConfigurationError: bad credentials or options.
        """
        conn_opts = dict(connect_options or {})
        conn_opts.setdefault("timeout", float(options.get("timeout", DEFAULT_TIMEOUT)))
        conn = await NatsConnection.connect(url, **conn_opts)
        try:
            return cls(conn, owns_connection=True, **options)
        except BaseException:
            await conn.aclose()
            raise

    # ------------------------------------------------------------------------------------------------
    # Publishing

    def _subject(self, kind: str, message: object, destination: str | None) -> tuple[str, str]:
        """Return ``(subject, type_name)`` for a message sent as ``kind`` to ``destination``."""
        type_name = self.registry.name_of(type(message))
        dest = type_name if destination is None else destination
        key = (kind, dest)
        subject = self._subjects.get(key)
        if subject is None:
            validate_identifier(dest, "destination")
            subject = f"{self.prefix}.{kind}.{dest}"
            if len(self._subjects) < 10_000:
                self._subjects[key] = subject
        return subject, type_name

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Publish an event to every subscription group of ``destination`` (default: the type's name).

        Raises:
            InvalidIdentifierError: the destination is malformed.
            SerializationError: the message cannot be encoded.
            PayloadTooLargeError: the encoded message is over ``max_payload`` or the server's limit
                (nothing was sent).
            BackendTimeoutError: JetStream did not confirm within ``timeout``.
            BackendUnavailableError: the connection is down.
        """
        await self._publish("evt", message, metadata, destination)

    async def send(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Send a command to one consumer among the subscribers of ``destination``.

        At-least-once commands wait in the commands stream until a worker takes them.

        Raises:
            Same as :meth:`publish`.
        """
        await self._publish("cmd", message, metadata, destination)

    async def publish_batch(self, messages: Sequence[object], *, destination: str | None = None) -> None:
        """Publish events with ``default_qos``; JetStream publishes are pipelined, then all confirmed.

        Raises:
            BackendError: as :meth:`publish`; on a failure some messages may have been published (they
                carry distinct ids, so publishing the batch again is de-duplicated within
                ``duplicate_window``), but none when one is too large: all are encoded and checked first.
        """
        if not messages:
            return
        if self._closed:
            raise self._closed_error()
        encoded = [self._encode("evt", message, None, destination) for message in messages]
        if self.default_qos == QoS.AT_MOST_ONCE:
            for subject, headers, body in encoded:
                with translate_errors(f"publishing to {subject}", self.timeout):
                    await self.client.publish(subject, body, headers=headers)
            return
        await self._js_publish_many(encoded, f"publishing a batch of {len(messages)} messages")

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish already encoded bytes and wire headers as they are (outbox relay, tests, bridges).

        Goes through JetStream like an at-least-once event; subscribers decode it like any message and
        dead-letter it if it does not decode. Headers carrying a message id get ``Nats-Msg-Id`` from it
        (unless given), so publishing the same message twice within ``duplicate_window`` stores it once.
        Not for dead letters: :meth:`replay` gives them a fresh ``Nats-Msg-Id``.

        Raises:
            InvalidIdentifierError: the destination is malformed.
            BackendTimeoutError: JetStream did not confirm within ``timeout``.
            BackendUnavailableError: the connection is down.
        """
        if self._closed:
            raise self._closed_error()
        subject = f"{self.prefix}.evt.{validate_identifier(destination, 'destination')}"
        self._check_size(len(body), subject)
        hdrs = dict(headers)
        if H_ID in hdrs:  # JetStream de-duplicates a re-publish (an outbox relay retry) by message id
            hdrs.setdefault("Nats-Msg-Id", hdrs[H_ID])
        await self._js_publish_many([(subject, hdrs, bytes(body))], f"publishing to {subject}")

    async def replay(self, letter: DeadLetter) -> None:
        """Deliver a dead letter again (see :meth:`Transport.replay <catga.protocols.Transport.replay>`).

        JetStream-publishes the letter's body and headers to ``<prefix>.evt.<source>`` (an event) or
        ``<prefix>.cmd.<source>`` (a command) with a fresh ``Nats-Msg-Id``
        (``<message id>:replay:<random>``): the original id is still in the stream's duplicate window
        when a message is dead-lettered within ``duplicate_window`` of its publish, and JetStream would
        drop a re-publish under it, with a positive ack. Returns once the stream's ack is in hand.

        An event is replayed only when a consumer of the events stream reads its subject: the stream
        keeps a message only while some consumer has an interest in it, and would drop one that no
        consumer reads -- with a positive ack. (A command waits in its work-queue stream for a worker.)

        Raises:
            InvalidIdentifierError: the letter's source is not a valid destination.
            BackendError: JetStream refused the message, or acked it as a duplicate (not stored); or,
                for an event, no consumer reads its subject.
            BackendTimeoutError: JetStream did not confirm within ``timeout``.
            BackendUnavailableError: the connection is down, or no stream captures the subject.
        """
        if self._closed:
            raise self._closed_error()
        command, dest = replay_route(letter)
        subject = f"{self.prefix}.{'cmd' if command else 'evt'}.{dest}"
        headers = replay_headers(letter)
        dedup_id = headers["Nats-Msg-Id"] = replay_dedup_id(letter)
        if not self._streams_ready:
            await self._ensure_streams()
        if not command and not await has_consumer(self._js, self.stream, subject, self.timeout):
            raise BackendError(
                f"cannot replay dead letter {letter.id!r}: no consumer of stream {self.stream!r} reads "
                f"{subject} (JetStream would drop the event); start the subscriber (its group) first",
                backend="nats",
            )
        reply = await self._wire.request(
            subject.encode(), bytes(letter.body), header_block(headers), timeout=self.timeout
        )
        what = f"replay of dead letter {letter.id!r} to {subject}"
        ack = decode_ack(reply, what)
        if ack.error is not None or ack.duplicate:
            reason = "acked it as a duplicate"
            if ack.error is not None:
                reason = f"refused it: {ack.error.description}"
            raise BackendError(
                f"JetStream {reason} (Nats-Msg-Id {dedup_id!r}, stream {ack.stream!r}): the {what} was "
                "not stored; the letter is kept",
                backend="nats",
            )

    def _encode(
        self, kind: str, message: object, metadata: Metadata | None, destination: str | None
    ) -> tuple[str, dict[str, str], bytes]:
        subject, type_name = self._subject(kind, message, destination)
        body = self.registry.codec_for(type(message)).encode(message)
        size = len(body)
        if size > self.max_payload or size > self.client.max_payload:
            self._check_size(size, subject)
        if metadata is None:
            metadata = Metadata(message_id=new_id(), created_at=time.time(), qos=self.default_qos)
        headers = metadata.to_headers(type_name)
        headers["Nats-Msg-Id"] = headers[H_ID]
        return subject, headers, body

    def _check_size(self, size: int, subject: str) -> None:
        """Raise PayloadTooLargeError when ``size`` is over ``max_payload`` or the server's limit."""
        limit = min(self.max_payload, self.client.max_payload)
        if size > limit:
            raise PayloadTooLargeError(size, limit, destination=subject, backend="nats")

    async def _publish(
        self, kind: str, message: object, metadata: Metadata | None, destination: str | None
    ) -> None:
        if self._closed:
            raise self._closed_error()
        subject, headers, body = self._encode(kind, message, metadata, destination)
        qos = self.default_qos if metadata is None else metadata.qos
        if qos == QoS.AT_MOST_ONCE:
            with translate_errors(f"publishing to {subject}", self.timeout):
                await self.client.publish(subject, body, headers=headers)
            return
        if not self._streams_ready:
            await self._ensure_streams()
        reply = await self._wire.request(subject.encode(), body, header_block(headers), timeout=self.timeout)
        decode_ack(reply, f"publish to {subject}")

    async def _js_publish_many(self, items: Sequence[tuple[str, dict[str, str], bytes]], what: str) -> None:
        """JetStream-publish ``(subject, headers, body)`` items pipelined, then wait for every ack."""
        if not self._streams_ready:
            await self._ensure_streams()
        wire = self._wire
        if not wire.connected:
            await wire.connect()
        futures: list[asyncio.Future[Any]] = []
        try:
            for subject, headers, body in items:
                futures.append(wire.send(subject.encode(), body, header_block(headers), self.timeout))
            replies = await asyncio.gather(*futures)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        for (subject, _, _), reply in zip(items, replies, strict=True):
            decode_ack(reply, f"{what} (to {subject})")

    async def _ensure_streams(self) -> None:
        async with self._init_lock:
            if self._streams_ready:
                return
            await self._ensure_stream(self.stream, f"{self.prefix}.evt.>", api.RetentionPolicy.INTEREST)
            await self._ensure_stream(
                self.command_stream, f"{self.prefix}.cmd.>", api.RetentionPolicy.WORK_QUEUE
            )
            self._streams_ready = True

    async def _ensure_stream(self, name: str, subject: str, retention: api.RetentionPolicy) -> None:
        config = api.StreamConfig(
            name=name,
            subjects=[subject],
            retention=retention,
            storage=self.storage,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age,
            num_replicas=self.replicas,
        )
        await self.connection.ensure_stream(config, check=("subjects", "retention"), timeout=self.timeout)

    # ------------------------------------------------------------------------------------------------
    # Subscribing

    async def _subscribe(self, args: SubscribeArgs) -> NatsSubscription:
        """Subscribe on core NATS (at-most-once) or create and feed the JetStream consumers."""
        qos, group, dest = args.qos, args.group, args.destination
        if qos == QoS.EXACTLY_ONCE and self.inbox is None:
            self._own_inbox = NatsInboxStore(
                self.connection,
                bucket=f"{self.stream}_INBOX",
                storage=self.storage.value,
                replicas=self.replicas,
            )
            self.inbox = self._own_inbox
        policy = self._delivery_policy(
            args,
            log=logger,
            inbox=self.inbox,
            inbox_ttl=self.ack_wait,
            over_delivered=f"the consumer died or the handler ran longer than ack_wait={self.ack_wait} s",
            dead_letter_timeout=self.timeout,
        )
        sub = NatsSubscription(args, policy, self._consumer_settings)
        evt, cmd = f"{self.prefix}.evt.{dest}", f"{self.prefix}.cmd.{dest}"
        try:
            if qos == QoS.AT_MOST_ONCE:
                with translate_errors(f"subscribing to {evt}", self.timeout):
                    await sub.add_core(evt, group or "")
                    await sub.add_core(cmd, _CMD_QUEUE)
                    await interest_barrier(self.client, self.timeout)
            else:
                if not self._streams_ready:
                    await self._ensure_streams()
                ephemeral = group is None
                evt_name = consumer_name("evt", dest, group if group else str(new_id()))
                await self._add_consumer(self.stream, evt_name, evt, sub, ephemeral)
                await sub.add_pull(PullConsumer(sub, self.stream, evt_name, ephemeral=ephemeral))
                cmd_name = consumer_name("cmd", dest, None)
                await self._add_consumer(self.command_stream, cmd_name, cmd, sub, False)
                await sub.add_pull(
                    PullConsumer(sub, self.command_stream, cmd_name, ephemeral=False, command=True)
                )
        except BaseException:
            await asyncio.shield(sub.aclose())
            raise
        self._subscriptions.add(sub)
        return sub

    async def _add_consumer(
        self, stream: str, name: str, subject: str, sub: NatsSubscription, ephemeral: bool
    ) -> None:
        command = stream == self.command_stream
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            deliver_policy=api.DeliverPolicy.ALL if command else api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=sub.max_deliver + 1,
            filter_subject=subject,
            max_ack_pending=max(1000, 4 * sub.max_in_flight),
            inactive_threshold=max(60.0, 10 * self.pull_expires) if ephemeral else None,
        )
        await add_consumer(self._js, stream, config, prefix=self.prefix, timeout=self.timeout)

    def _forget(self, sub: NatsSubscription) -> None:
        self._subscriptions.discard(sub)

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete a JetStream consumer (used for private consumers on close); a missing one is fine."""
        await delete_consumer(self._js, stream, name, self.timeout)

    # ------------------------------------------------------------------------------------------------
    # Request / reply

    async def request(
        self,
        destination: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, str]]:
        """Send ``body`` to the server of ``destination`` and wait for its reply.

        Returns:
            ``(reply body, reply headers)``.

        Raises:
            OperationTimeoutError: no reply within ``timeout`` seconds (including: nobody serves it).
            BackendUnavailableError: the connection is down.
        """
        if self._closed:
            raise self._closed_error()
        validate_identifier(destination, "destination")
        subject = f"{self.prefix}.rpc.{destination}"
        self._check_size(len(body), subject)
        return await request(self.client, subject, destination, body, headers, timeout)

    async def serve(
        self,
        destination: str,
        handler: RawHandler,
        *,
        group: str | None = "rpc",
        max_in_flight: int = 64,
    ) -> NatsRpcEndpoint:
        """Answer requests to ``destination`` with ``handler`` (a NATS queue group shares the load).

        A handler that raises is logged and answered with an empty body and a ``Catga-Error`` header,
        so the caller does not wait for nothing.

        Raises:
            InvalidIdentifierError: a malformed destination or group.
            BackendUnavailableError: the connection is down.
        """
        self._check_accepting()
        validate_identifier(destination, "destination")
        if group is not None:
            validate_identifier(group, "consumer group")
        server = NatsRpcEndpoint(
            self.client,
            destination,
            handler,
            max_in_flight,
            timeout=self.timeout,
            drain_timeout=self.drain_timeout,
            forget=self._servers.discard,
        )
        await server.start(f"{self.prefix}.rpc.{destination}", group)
        self._servers.add(server)
        return server

    # ------------------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Make the transport usable again after :meth:`aclose` (an ``App`` starting again)."""
        if not self._closed:
            return
        if self._owns_connection:
            await self.connection.open()
        self._closed = False
        self.connection.attach()
        if self._own_inbox is not None:
            await self._own_inbox.start()

    async def aclose(self) -> None:
        """Stop every subscription (in-flight handlers get ``drain_timeout``), then close an owned client.

        Idempotent. Shielded from cancellation and time-limited.
        """
        if self._closed:
            return
        self._closed = True
        subs: list[Subscription] = [*self._subscriptions, *self._servers]
        await asyncio.shield(self._close(subs))

    async def _close(self, subs: list[Subscription]) -> None:
        if subs:
            results = await asyncio.gather(*(s.aclose() for s in subs), return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):
                    logger.warning("error closing a NATS subscription: %r", r)
        if self._own_inbox is not None:
            try:
                await self._own_inbox.aclose()
            except Exception as exc:
                logger.warning("error closing the default inbox: %r", exc)
        await self.connection.detach()
        if self._owns_connection:
            await self.connection.aclose()

    def __repr__(self) -> str:
        return f"NatsTransport(prefix={self.prefix!r}, stream={self.stream!r})"
