"""Redis transport: Streams with consumer groups for at-least-once, pub/sub for at-most-once fan-out.

Keys and channels (``P`` is the prefix, default the client's, ``catga``)::

    P:t:evt:<destination>    stream (and pub/sub channel of the same name): publish, events
    P:t:cmd:<destination>    stream: send, commands (a work queue: entries are deleted once settled)
    P:t:rpc:<destination>    stream: request / serve (see :mod:`catga.redis._reqrep`)
    P:t:reply:<client id>    list: the replies of one requesting transport
    P:t:live:<group>         string with a TTL: a private group's owner is alive (see the sweep)

Wire format, readable by any Redis client: a stream entry's first field is ``body`` (the message
encoded by the :class:`~catga.serialization.TypeRegistry`, JSON by default), the other fields are the
headers of :meth:`Metadata.to_headers <catga.messages.Metadata.to_headers>` (``Catga-Type``,
``Catga-Id``, ...) and the user's headers. A pub/sub message (and an RPC reply) is the headers as one
JSON object, a newline, then the body.

Every ``publish`` does ``XADD`` (trimmed with ``MAXLEN ~ max_len``) and ``PUBLISH`` in one round trip,
so each subscriber sees each message whatever QoS the sender chose; the *subscription's* QoS decides
how it reads:

* ``AT_LEAST_ONCE`` / ``EXACTLY_ONCE``: a consumer group on the event stream -- ``group=None`` gets a
  private group (fan-out; destroyed on close), a named group is shared by its members (competing
  consumers). Groups start with the messages published after they were created. ``XREADGROUP``
  asks only for free slots; the entry is ``XACK``-ed after the handler returns. A failed delivery stays
  pending and is taken again with ``XCLAIM`` after an exponential, capped backoff (``retry_backoff``,
  ``retry_backoff_max``); the failure of delivery ``max_deliver`` moves it to the dead-letter queue
  with its error, then acks it. ``EXACTLY_ONCE`` claims the message id in the ``inbox`` first.
* Stuck messages: every ``claim_min_idle / 3`` seconds a subscription refreshes the idle time of the
  entries it holds (``XCLAIM ... JUSTID``, so a long handler is not taken away) and takes over entries
  idle for ``claim_min_idle`` seconds -- those of a consumer that died -- with ``XAUTOCLAIM``. An entry
  already delivered more than ``max_deliver`` times goes to the dead-letter queue unhandled.
* ``AT_MOST_ONCE`` with ``group=None``: Redis pub/sub (``SUBSCRIBE``), one connection per transport
  (on a cluster: sharded pub/sub, ``SPUBLISH`` / ``SSUBSCRIBE``, one connection per primary).
  Pub/sub has no competing consumers, so ``AT_MOST_ONCE`` with a named group reads the stream with
  ``XREADGROUP ... NOACK`` instead (delivered once to the group, never redelivered).
* Commands (``send``) go to the command stream only; every subscriber of the destination, whatever its
  group, competes in the one group ``catga-cmd``, created at the start of the stream (commands sent
  before any worker started are kept). At-most-once subscribers read it with ``NOACK``.

A message that cannot be decoded goes to the dead-letter queue at once with the reason, and is acked.
A periodic sweep deletes idle consumers holding nothing and private groups whose process died.
Requires Redis 6.2+. Full description: ``docs/redis-transport.md``.
At most ``max_in_flight`` handlers run at once per subscription. Each blocking read uses its own
connection (two per stream subscription: events and commands); every other command is pipelined on the
shared :class:`~catga.redis.RedisClient`, with its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from catga._delivery import check_retry_backoff, retry_delay
from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga._transport import SubscribeArgs, TransportBase, replay_headers, replay_route
from catga.errors import BackendError, ConfigurationError, PayloadTooLargeError
from catga.ids import new_id
from catga.messages import H_ERROR, Metadata, QoS
from catga.protocols import DeadLetter, DeadLetterQueue, InboxStore, RawHandler, validate_identifier
from catga.redis._consumer import RedisSubscription
from catga.redis._keys import validate_prefix
from catga.redis._pubsub import PubSubHub, ShardedPubSub
from catga.redis._reader import ConsumerSettings
from catga.redis._reqrep import RedisRpcEndpoint, _ReplyRouter
from catga.redis._wire import entry_args, frame
from catga.redis.cluster import RedisClusterClient
from catga.redis.connection import DEFAULT_URL, RedisClient
from catga.redis.idempotency import RedisInboxStore
from catga.serialization import TypeRegistry, default_registry

__all__ = ("H_ERROR", "RedisRpcEndpoint", "RedisSubscription", "RedisTransport")

logger = logging.getLogger("catga.redis.transport")

CMD_GROUP = "catga-cmd"


class RedisTransport(TransportBase[RedisSubscription]):
    """A :class:`~catga.protocols.Transport` on Redis Streams and pub/sub (see the module docs).

    Args:
        client: the :class:`~catga.redis.RedisClient` for non-blocking commands (pipelined); blocking
            reads use clones of it. Not closed by :meth:`aclose` unless ``owns_client=True``.
        registry: message types allowed on the wire (default :func:`~catga.serialization.default_registry`).
        prefix: first key component (default: the client's prefix).
        dead_letters: where failed and undecodable messages go; without one they are logged and dropped.
        inbox: the store ``EXACTLY_ONCE`` subscriptions claim message ids in (default: a
            :class:`~catga.redis.RedisInboxStore` on ``client``).
        max_len: approximate cap of each event stream (``XADD MAXLEN ~``); a group lagging further
            behind loses the oldest entries. None: unbounded.
        command_max_len: the same for command streams (default None: settled commands are deleted).
        retry_backoff: delay before the first redelivery of a failed message; doubles per delivery.
        retry_backoff_max: cap of that delay.
        claim_min_idle: seconds an entry must sit unacked and unrefreshed before another consumer takes
            it over (its consumer died). Also the inbox claim ttl.
        block: seconds one blocking read waits before it is re-issued.
        drain_timeout: seconds :meth:`aclose` lets in-flight handlers finish before cancelling them.
        consumer_ttl: seconds after which the periodic sweep deletes idle consumers holding nothing,
            and private groups whose owner stopped refreshing their liveness key (it died).
        rpc_max_len: approximate cap of request streams.
        reply_ttl: seconds a reply list lives after the last reply pushed to it.
        owns_client: close ``client`` in :meth:`aclose` (set by :meth:`connect`).
        max_payload: the largest message body accepted, in bytes (default 1 MiB, as on NATS); a larger
            one raises :class:`~catga.errors.PayloadTooLargeError` before anything is sent.

    Example:
        >>> transport = RedisTransport.connect("redis://127.0.0.1:6379/0", dead_letters=dlq)  # doctest: +SKIP
        >>> await transport.subscribe(OrderPlaced, on_placed, group="billing")  # doctest: +SKIP
        >>> await transport.publish(OrderPlaced(order_id="o-1"))  # doctest: +SKIP
    """

    _backend = "redis"

    def __init__(
        self,
        client: RedisClient,
        *,
        registry: TypeRegistry | None = None,
        prefix: str | None = None,
        dead_letters: DeadLetterQueue | None = None,
        inbox: InboxStore | None = None,
        max_len: int | None = 100_000,
        command_max_len: int | None = None,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 30.0,
        claim_min_idle: float = 30.0,
        block: float = 5.0,
        drain_timeout: float = 10.0,
        consumer_ttl: float = 3600.0,
        rpc_max_len: int = 10_000,
        reply_ttl: float = 60.0,
        owns_client: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        check_retry_backoff(retry_backoff, retry_backoff_max)
        self.max_payload = check_max_payload(max_payload)
        for name, value in (
            ("claim_min_idle", claim_min_idle),
            ("block", block),
            ("drain_timeout", drain_timeout),
            ("consumer_ttl", consumer_ttl),
            ("reply_ttl", reply_ttl),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, got {value!r}")
        for name, length in (
            ("max_len", max_len),
            ("command_max_len", command_max_len),
            ("rpc_max_len", rpc_max_len),
        ):
            if length is not None and length < 1:
                raise ConfigurationError(f"{name} must be >= 1 or None, got {length!r}")
        self.client = client
        self.prefix = validate_prefix(client.prefix if prefix is None else prefix)
        self.registry = registry if registry is not None else default_registry()
        self.dead_letters = dead_letters
        self.inbox: InboxStore = inbox if inbox is not None else RedisInboxStore(client)
        self.max_len = max_len
        self.command_max_len = command_max_len
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.claim_min_idle = claim_min_idle
        self.claim_min_idle_ms = max(1, round(claim_min_idle * 1000))
        self.claim_interval = max(0.01, claim_min_idle / 3)
        self.block = block
        self.timeout = client.timeout if client.timeout is not None else 5.0
        self.drain_timeout = drain_timeout
        self.consumer_ttl = consumer_ttl
        self.rpc_max_len = rpc_max_len
        self.reply_ttl = reply_ttl
        self.consumer_base = f"{socket.gethostname()[:40]}-{os.getpid()}"
        self._owns_client = owns_client
        self._consumer_settings = ConsumerSettings(
            client=client,
            prefix=self.prefix,
            consumer_base=self.consumer_base,
            block=block,
            timeout=self.timeout,
            drain_timeout=drain_timeout,
            consumer_ttl=consumer_ttl,
            claim_interval=self.claim_interval,
            claim_min_idle_ms=self.claim_min_idle_ms,
        )
        self._evt = f"{self.prefix}:t:evt:"
        self._cmd = f"{self.prefix}:t:cmd:"
        self._subs: set[RedisSubscription] = set()
        self._servers: set[RedisRpcEndpoint] = set()
        self._router: _ReplyRouter | None = None
        self._pubsub: PubSubHub | ShardedPubSub | None = None
        cluster = client if isinstance(client, RedisClusterClient) else None
        self._cluster = cluster
        self._publish = "SPUBLISH" if cluster is not None else "PUBLISH"  # sharded pub/sub on a cluster
        self._closed = False

    @classmethod
    def connect(
        cls, url: str = DEFAULT_URL, *, prefix: str = "catga", timeout: float | None = 5.0, **options: Any
    ) -> RedisTransport:
        """A transport with its own client for ``url`` (connected on first use, closed by :meth:`aclose`).

        ``options`` are the keyword arguments of :class:`RedisTransport`.

        Raises:
            ConfigurationError: the URL or prefix is invalid.
        """
        return cls(RedisClient.from_url(url, prefix=prefix, timeout=timeout), owns_client=True, **options)

    # -- keys -----------------------------------------------------------------------------------
    def evt_key(self, destination: str) -> str:
        """Stream key (and pub/sub channel) of events for ``destination``."""
        return self._evt + destination

    def cmd_key(self, destination: str) -> str:
        """Stream key of commands for ``destination``."""
        return self._cmd + destination

    def backoff(self, attempts: int) -> float:
        """Delay before redelivering a message that failed ``attempts`` times."""
        return retry_delay(self.retry_backoff, self.retry_backoff_max, attempts)

    def _forget_server(self, server: RedisRpcEndpoint) -> None:
        """Stop tracking a closed RPC endpoint (see :class:`~catga.redis._reqrep.RpcHost`)."""
        self._servers.discard(server)

    # -- publishing -----------------------------------------------------------------------------
    def _encode(
        self, message: object, metadata: Metadata | None, destination: str | None
    ) -> tuple[str, bytes, dict[str, str]]:
        if self._closed:
            raise self._closed_error()
        codec = self.registry.codec_for(type(message))
        dest = validate_identifier(codec.name if destination is None else destination, "destination")
        body = codec.encode(message)
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=dest, backend="redis")
        if metadata is None:
            metadata = Metadata(message_id=new_id(), created_at=time.time(), qos=QoS.AT_LEAST_ONCE)
        return dest, body, metadata.to_headers(codec.name)

    def _event_commands(self, dest: str, body: bytes, headers: Mapping[str, str]) -> list[tuple[Any, ...]]:
        key = self._evt + dest
        return [entry_args(key, body, headers, self.max_len), (self._publish, key, frame(body, headers))]

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Publish an event to every group of ``destination`` (default: the type's wire name).

        One round trip: ``XADD`` to the event stream and ``PUBLISH`` to its channel.

        Raises:
            InvalidIdentifierError: the destination is malformed.
            SerializationError: the message cannot be encoded.
            BackendError: Redis failed or timed out (``BackendUnavailableError``, ``BackendTimeoutError``).
            PayloadTooLargeError: the encoded message is over ``max_payload`` (nothing was sent).
        """
        dest, body, headers = self._encode(message, metadata, destination)
        await self.client.execute_many(self._event_commands(dest, body, headers))

    async def publish_batch(self, messages: Sequence[object], *, destination: str | None = None) -> None:
        """Publish events (each with fresh metadata), pipelined in one round trip, in order.

        Raises:
            Same as :meth:`publish`; on a failure some of the messages may have been published (but
            none when one is over ``max_payload``: all are encoded and checked first).
        """
        commands: list[tuple[Any, ...]] = []
        for message in messages:
            dest, body, headers = self._encode(message, None, destination)
            commands += self._event_commands(dest, body, headers)
        await self.client.execute_many(commands)

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish already encoded bytes and wire headers as they are (outbox relay, tests, bridges).

        Subscribers decode it like any event and dead-letter it if it does not decode.

        Raises:
            InvalidIdentifierError: the destination is malformed.
            BackendError: Redis failed or timed out.
        """
        if self._closed:
            raise self._closed_error()
        dest = validate_identifier(destination, "destination")
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=dest, backend="redis")
        await self.client.execute_many(self._event_commands(dest, bytes(body), dict(headers)))

    async def replay(self, letter: DeadLetter) -> None:
        """Deliver a dead letter again (see :meth:`Transport.replay <catga.protocols.Transport.replay>`).

        An event is written like :meth:`publish` (``XADD`` to ``P:t:evt:<source>`` and ``PUBLISH``), a
        command like :meth:`send` (``XADD`` to ``P:t:cmd:<source>``); returns once Redis answered with
        the entry id. Redis Streams do not de-duplicate, so there is no broker id to renew. A letter
        from an older catga whose ``source`` is this transport's stream key goes to that stream.

        An event is replayed only when someone reads it: a consumer group on its stream or a pub/sub
        subscriber (a group created later starts after it). A command waits in its stream for a worker.

        Raises:
            InvalidIdentifierError: the letter's source is not a valid destination.
            BackendError: Redis refused or failed the write (``BackendUnavailableError``,
                ``BackendTimeoutError``); or, for an event, nobody reads it.
        """
        if self._closed:
            raise self._closed_error()
        command, dest = replay_route(letter, (self._evt, self._cmd))
        body, headers = bytes(letter.body), replay_headers(letter)
        if not command and not await self._has_reader(self._evt + dest):
            raise BackendError(
                f"cannot replay dead letter {letter.id!r}: no consumer group reads stream "
                f"{self._evt + dest!r} and no pub/sub subscriber listens (nobody would get the event); "
                "start the subscriber (its group) first",
                backend="redis",
            )
        if command:
            xadd = entry_args(self._cmd + dest, body, headers, self.command_max_len)
            entry_id = await self.client.execute(*xadd)
        else:
            entry_id = (await self.client.execute_many(self._event_commands(dest, body, headers)))[0]
        if not entry_id:  # pragma: no cover - XADD without NOMKSTREAM always returns an id or fails
            raise BackendError(
                f"Redis did not store the replay of dead letter {letter.id!r} to {dest!r}", backend="redis"
            )

    async def _has_reader(self, key: str) -> bool:
        """Whether a consumer group reads stream ``key`` or a pub/sub client listens on its channel."""
        numsub_command = "SHARDNUMSUB" if self._cluster is not None else "NUMSUB"
        exists, numsub = await self.client.execute_many([("EXISTS", key), ("PUBSUB", numsub_command, key)])
        if numsub[1]:
            return True
        if not exists:
            return False
        return bool(await self.client.execute("XINFO", "GROUPS", key))

    async def send(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """Send a command to one subscriber of ``destination`` (``XADD`` to the command stream).

        The command waits in the stream until a worker takes it, even if none is running yet.

        Raises:
            Same as :meth:`publish`.
        """
        dest, body, headers = self._encode(message, metadata, destination)
        await self.client.execute(*entry_args(self._cmd + dest, body, headers, self.command_max_len))

    # -- subscribing ----------------------------------------------------------------------------
    async def _subscribe(self, args: SubscribeArgs) -> RedisSubscription:
        """Create the consumer groups (or the pub/sub subscription) and start reading."""
        qos, group, dest = args.qos, args.group, args.destination
        policy = self._delivery_policy(
            args,
            log=logger,
            inbox=self.inbox,
            inbox_ttl=self.claim_min_idle,
            over_delivered="its consumers died or stalled",
        )
        sub = RedisSubscription(args, policy, self._consumer_settings, self._unsubscribed)
        noack = qos == QoS.AT_MOST_ONCE
        self._subs.add(sub)
        try:
            if noack and group is None:
                if self._pubsub is None:
                    if self._cluster is not None:
                        self._pubsub = ShardedPubSub(self._cluster, self.timeout)
                    else:
                        where = getattr(self.client, "pubsub_node", None)  # Sentinel: the primary
                        self._pubsub = PubSubHub(self.client.settings, self.timeout, where=where)
                await self._pubsub.add(self._evt + dest, sub)
            else:
                private = group is None
                name = group if group is not None else f"~{uuid.uuid4().hex}"
                reader = sub.add_reader("evt", self._evt + dest, name, private=private, noack=noack)
                await reader.create_group("$")
            reader = sub.add_reader("cmd", self._cmd + dest, CMD_GROUP, private=False, noack=noack)
            await reader.create_group("0")
        except BaseException:
            await sub.aclose()
            raise
        sub.start()
        return sub

    async def _unsubscribed(self, sub: RedisSubscription) -> None:
        """``sub`` is closing: forget it, and leave its pub/sub channel."""
        self._subs.discard(sub)
        if sub._channel is not None and self._pubsub is not None:
            await self._pubsub.remove(sub._channel, sub)

    # -- pub/sub --------------------------------------------------------------------------------
    # -- request / reply ------------------------------------------------------------------------
    async def request(
        self,
        destination: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, str]]:
        """Send ``body`` to a server of ``destination``; wait for its reply (routed to this transport only).

        Returns:
            ``(reply body, reply headers)``.

        Raises:
            OperationTimeoutError: no reply within ``timeout`` seconds (also when nobody serves it).
            BackendError: the request could not be written.
        """
        if self._closed:
            raise self._closed_error()
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(len(body), self.max_payload, destination=destination, backend="redis")
        if self._router is None:
            self._router = _ReplyRouter(self)
        return await self._router.request(destination, body, headers, timeout)

    async def serve(
        self,
        destination: str,
        handler: RawHandler,
        *,
        group: str | None = "rpc",
        max_in_flight: int = 64,
    ) -> RedisRpcEndpoint:
        """Answer requests to ``destination`` with ``handler(body, headers) -> (body, headers)``.

        Servers in one ``group`` share the requests; ``group=None`` answers every request (the caller
        takes the first reply). A handler that raises is logged and answered with an empty body and a
        ``Catga-Error`` header.

        Raises:
            InvalidIdentifierError: a malformed destination or group.
            BackendError: the consumer group could not be created.
        """
        self._check_accepting()
        server = RedisRpcEndpoint(self, destination, handler, group, max_in_flight)
        await server.start()
        self._servers.add(server)
        return server

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Make the transport usable again after :meth:`aclose` (an ``App`` starting again)."""
        if not self._closed:
            return
        if self._owns_client:
            await self.client.open()
        self._closed = False
        self._router = self._pubsub = None

    async def aclose(self) -> None:
        """Stop every subscription and server (in-flight handlers get ``drain_timeout``), then close the
        connections this transport opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        closers: list[Awaitable[None]] = [s.aclose() for s in self._subs]
        closers += [s.aclose() for s in self._servers]
        if self._router is not None:
            closers.append(self._router.aclose())
        for result in await asyncio.gather(*closers, return_exceptions=True):
            if isinstance(result, Exception):
                logger.warning("error while closing the Redis transport: %r", result)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisTransport({self.client.settings.address!r}, prefix={self.prefix!r})"
