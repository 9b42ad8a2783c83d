"""The pub/sub side of :class:`~catga.redis.RedisTransport`: at-most-once subscriptions without a group.

One connection per transport, opened by the same :func:`~catga.redis.connection.open_connection` as
every other catga Redis connection (so TLS, ``AUTH``, ``SELECT`` and ``CLIENT SETNAME`` come from the
one handshake), carries every channel in RESP2 subscriber mode: after ``SUBSCRIBE`` the server pushes
``[b"message", channel, data]`` and ``[b"subscribe", channel, count]`` arrays, which
:class:`~catga.redis._resp.RespConnection` hands to :meth:`PubSubHub._on_push` as they are parsed (no
reader task, no queue). A message goes to the subscriptions of its channel; a ``subscribe`` push
confirms a channel, and :meth:`PubSubHub.add` returns only once the server confirmed it (within the
transport's timeout), so a message published after ``subscribe()`` returned is delivered.

Failure model (at-most-once):
    * Connection loss: a supervisor task reconnects with backoff (50 ms doubling to 2 s), subscribes
      every channel again in one ``SUBSCRIBE`` and waits for the confirmations; the outage is logged
      once when it starts and once when it ends (:class:`~catga._outage.OutageLog`), not per attempt.
      Messages published while the connection is down are lost (that is pub/sub).
    * A peer that stops answering without closing the socket: every ``health_interval`` seconds the
      supervisor sends ``PING`` and drops the connection if no ``pong`` comes within the timeout,
      then reconnects as above (a silent half-open socket would otherwise deafen the subscriber).
    * The first subscription connects in the caller's task, so an unreachable server or refused
      credentials raise from ``subscribe()`` (:class:`~catga.errors.BackendUnavailableError`,
      :class:`~catga.errors.ConfigurationError`) instead of being retried in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from catga._outage import OutageLog
from catga.errors import BackendUnavailableError, CatgaError
from catga.redis._errors import reply_error
from catga.redis._resp import ReplyError, RespConnection
from catga.redis.connection import RedisSettings, open_connection

if TYPE_CHECKING:
    from catga.redis._consumer import RedisSubscription
    from catga.redis.cluster import RedisClusterClient

__all__ = ("HEALTH_INTERVAL", "PubSubHub", "ShardedPubSub")

logger = logging.getLogger("catga.redis.transport")

#: Seconds between two ``PING`` health checks of an idle-or-not pub/sub connection.
HEALTH_INTERVAL = 30.0
_PAUSE_MIN = 0.05
_PAUSE_MAX = 2.0

#: A channel's confirmation: None once subscribed, or the error the server answered instead.
_Ready = asyncio.Future[CatgaError | None]


class PubSubHub:
    """Channels → subscriptions on one subscriber-mode connection (opened on first use).

    Args:
        settings: where to connect (the transport client's settings: TLS, credentials, db).
        where: an async callable giving the settings of the node to (re)connect to (a cluster's
            or Sentinel's current primary, so a failover does not leave the hub dialling a dead
            node); None: always ``settings``.
        sharded: use sharded pub/sub (``SSUBSCRIBE``, Redis 7 cluster): every channel must live on
            the node ``where`` names.
        timeout: seconds allowed for a ``SUBSCRIBE`` confirmation and a health-check ``PONG``
            (None: wait for ever).
        health_interval: seconds between health-check ``PING`` s.

    Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        settings: RedisSettings,
        timeout: float | None,
        *,
        health_interval: float = HEALTH_INTERVAL,
        where: Callable[[], Awaitable[RedisSettings]] | None = None,
        sharded: bool = False,
    ) -> None:
        self.timeout = timeout
        self.health_interval = health_interval
        self._settings = settings
        self._where = where
        self.sharded = sharded
        prefix = "S" if sharded else ""
        self._subscribe, self._unsubscribe = f"{prefix}SUBSCRIBE", f"{prefix}UNSUBSCRIBE"
        self._message_kind, self._confirm_kind = (
            (b"smessage", b"ssubscribe") if sharded else (b"message", b"subscribe")
        )
        self._subs: dict[bytes, tuple[RedisSubscription, ...]] = {}
        self._ready: dict[bytes, _Ready] = {}
        self._conn: RespConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._pong: asyncio.Future[None] | None = None
        self._resubscribing: set[bytes] = set()
        self._resubscribed: asyncio.Future[None] | None = None
        self._outage = OutageLog(logger, f"Redis pub/sub connection to {settings.address}", tracebacks=False)
        #: Connections opened (the first one and every reconnection); for tests and diagnostics.
        self.connections = 0

    # -- subscriptions ----------------------------------------------------------------------------
    async def add(self, channel: str, sub: RedisSubscription) -> None:
        """Deliver the messages of ``channel`` to ``sub`` too; return once Redis confirmed it.

        Raises:
            BackendUnavailableError: the server cannot be reached, or did not confirm in time.
            ConfigurationError: the server refused the credentials or the channel (ACL).
        """
        if self._closed:
            raise BackendUnavailableError("the Redis pub/sub connection is closed", backend="redis")
        key = channel.encode()
        sub._channel = channel
        async with self._lock:
            subs = self._subs.get(key)
            self._subs[key] = (sub,) if subs is None else (*subs, sub)
            ready = self._ready.get(key)
            if ready is None:
                ready = self._ready[key] = asyncio.get_running_loop().create_future()
                conn = self._conn
                if conn is None and self._task is None:  # first use: connect in the caller's task
                    try:
                        conn = await self._open()
                    except BaseException:
                        del self._ready[key]  # the next add of this channel connects again
                        ready.cancel()
                        raise
                    self._task = asyncio.ensure_future(self._supervise(conn))
                if conn is not None and not conn.closed:
                    conn.write((self._subscribe, key))
                # else: the supervisor is reconnecting and subscribes every channel when it is back
        await asyncio.wait([ready], timeout=self.timeout)
        if ready.done() and not ready.cancelled():
            error = ready.result()
            if error is None:
                return
            raise error
        reason = "the pub/sub connection was closed" if self._closed else f"no reply within {self.timeout} s"
        raise BackendUnavailableError(
            f"Redis at {self._settings.address} did not confirm {self._subscribe} {channel} ({reason}); "
            "check that the server is reachable, then subscribe again",
            backend="redis",
        )

    async def remove(self, channel: str, sub: RedisSubscription) -> None:
        """Stop delivering ``channel`` to ``sub``; unsubscribe when nobody listens any more."""
        key = channel.encode()
        async with self._lock:
            rest = tuple(s for s in self._subs.get(key, ()) if s is not sub)
            if rest:
                self._subs[key] = rest
                return
            self._subs.pop(key, None)
            ready = self._ready.pop(key, None)
            if ready is not None and not ready.done():
                ready.cancel()
            conn = self._conn
            if conn is not None and not conn.closed:
                conn.write((self._unsubscribe, key))  # best effort: a lost connection forgets it anyway

    # -- pushes from the server (called by the connection as replies are parsed) -------------------
    def _on_push(self, reply: Any) -> None:
        try:
            if type(reply) is list:
                kind = reply[0]
                if kind == self._message_kind:
                    subs = self._subs.get(reply[1])
                    if subs is not None:
                        data = reply[2]
                        for sub in subs:
                            sub._on_frame(data)
                elif kind == self._confirm_kind:
                    self._confirmed(reply[1])
                elif kind == b"pong":
                    self._got_pong()
            elif type(reply) is ReplyError:
                self._refused(reply)
            elif reply == b"PONG":  # PING while subscribed to no channel
                self._got_pong()
        except Exception:  # never let a bug here close the connection from inside the protocol
            logger.exception("error while dispatching a Redis pub/sub push %.200r", reply)

    def _confirmed(self, key: bytes) -> None:
        ready = self._ready.get(key)
        if ready is not None and not ready.done():
            ready.set_result(None)
        if self._resubscribed is not None:
            self._resubscribing.discard(key)
            if not self._resubscribing and not self._resubscribed.done():
                self._resubscribed.set_result(None)

    def _got_pong(self) -> None:
        if self._pong is not None and not self._pong.done():
            self._pong.set_result(None)

    def _refused(self, reply: ReplyError) -> None:
        """An error reply in subscriber mode (an ACL refusing a channel, say): the unconfirmed
        channels fail with it (replies carry no channel name, so which one is not known)."""
        error = reply_error(self._subscribe, reply)
        logger.warning("Redis pub/sub at %s answered an error: %s", self._settings.address, error)
        for ready in self._ready.values():
            if not ready.done():
                ready.set_result(error)

    # -- the connection ----------------------------------------------------------------------------
    async def _open(self) -> RespConnection:
        if self._where is not None:
            self._settings = await self._where()
        conn = await open_connection(self._settings, coalesce=False)
        if self._closed:
            conn.abort("the pub/sub hub was closed while connecting")
            raise BackendUnavailableError("the Redis pub/sub connection was closed", backend="redis")
        conn.on_push = self._on_push
        self._conn = conn
        self.connections += 1
        return conn

    async def _supervise(self, conn: RespConnection | None) -> None:
        """Keep a connection: watch it, reconnect with backoff after a loss, subscribe again."""
        pause = _PAUSE_MIN
        while not self._closed:
            try:
                if conn is None:
                    conn = await self._open()
                    await self._resubscribe(conn)
                    self._outage.recovered()
                    pause = _PAUSE_MIN
                reason = await self._watch(conn, _lost_future(conn))
                raise BackendUnavailableError(f"Redis pub/sub connection lost: {reason}", backend="redis")
            except (CatgaError, OSError) as exc:
                if self._closed:
                    return
                self._outage.failure(exc, "messages published meanwhile are lost; reconnecting")
            except Exception as exc:  # a bug: log it and keep the subscriptions alive
                logger.exception("Redis pub/sub supervisor failed; reconnecting")
                self._outage.failure(exc)
            if conn is not None:
                conn.abort("replaced by a new pub/sub connection")
            conn = self._conn = None
            await asyncio.sleep(pause)
            pause = min(pause * 2, _PAUSE_MAX)

    async def _resubscribe(self, conn: RespConnection) -> None:
        """Subscribe every channel again on a new connection and wait for the confirmations."""
        keys = set(self._subs)
        if not keys:
            return
        self._resubscribing = keys
        self._resubscribed = done = asyncio.get_running_loop().create_future()
        try:
            if self.sharded:  # one SSUBSCRIBE per channel: several must share a slot
                for key in keys:
                    conn.write((self._subscribe, key))
            else:
                conn.write((self._subscribe, *keys))
            await asyncio.wait([done], timeout=self.timeout)
            if not done.done():
                raise BackendUnavailableError(
                    f"Redis at {self._settings.address} did not confirm the re-subscription of "
                    f"{len(self._resubscribing)} channel(s) within {self.timeout} s",
                    backend="redis",
                )
        finally:
            self._resubscribed = None
            self._resubscribing = set()

    async def _watch(self, conn: RespConnection, lost: asyncio.Future[str]) -> str:
        """Wait until the connection is lost, checking every ``health_interval`` s that it answers."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.wait([lost], timeout=self.health_interval)
            if lost.done():
                return lost.result()
            self._pong = pong = loop.create_future()
            try:
                conn.write(("PING",))
                await asyncio.wait([pong, lost], timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._pong = None
            if lost.done():
                return lost.result()
            if not pong.done():
                reason = f"no PONG within {self.timeout} s"
                conn.abort(reason)
                return reason

    async def aclose(self) -> None:
        """Stop reading and close the connection. Idempotent."""
        self._closed = True
        for ready in self._ready.values():
            if not ready.done():
                ready.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.aclose()


def _lost_future(conn: RespConnection) -> asyncio.Future[str]:
    """A future that resolves to the reason when ``conn`` is lost."""
    lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    if conn.closed:  # lost before anyone listened
        lost.set_result("connection lost")
        return lost

    def on_lost(reason: str) -> None:
        if not lost.done():
            lost.set_result(reason)

    conn.on_lost = on_lost
    return lost


class ShardedPubSub:
    """Pub/sub on a Redis Cluster: each channel ``SSUBSCRIBE``-d on the primary of its slot.

    One :class:`PubSubHub` (one connection) per primary holding subscribed channels; a hub
    reconnects to wherever its channels' slot lives now (a failover moves a primary's slots to one
    replica together). Same interface as :class:`PubSubHub`.

    Args:
        client: the cluster client (its slot map says where a channel lives).
        timeout: as :class:`PubSubHub`.
    """

    def __init__(self, client: RedisClusterClient, timeout: float | None) -> None:
        self.timeout = timeout
        self._client = client
        self._hubs: dict[str, PubSubHub] = {}
        self._by_channel: dict[str, PubSubHub] = {}

    async def add(self, channel: str, sub: RedisSubscription) -> None:
        """As :meth:`PubSubHub.add`, on the primary of ``channel``'s slot."""
        hub = self._by_channel.get(channel)
        if hub is None:
            node = await self._client.node_for(channel)
            hub = self._hubs.get(node.settings.address)
            if hub is None:

                async def where() -> RedisSettings:
                    return (await self._client.node_for(channel)).settings

                hub = self._hubs[node.settings.address] = PubSubHub(
                    node.settings, self.timeout, where=where, sharded=True
                )
            self._by_channel[channel] = hub
        await hub.add(channel, sub)

    async def remove(self, channel: str, sub: RedisSubscription) -> None:
        """As :meth:`PubSubHub.remove`."""
        hub = self._by_channel.get(channel)
        if hub is not None:
            await hub.remove(channel, sub)

    async def aclose(self) -> None:
        """Close every hub. Idempotent."""
        for hub in list(self._hubs.values()):
            await hub.aclose()
