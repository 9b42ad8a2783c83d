"""A Redis Cluster client on catga's own RESP stack: slot map, redirects, one connection per node.

URL::

    redis+cluster://[[user]:password@]host1:port1[,host2:port2...][/0][?option=value...]
    rediss+cluster://...              TLS, with the ``ssl_*`` options of :mod:`catga.redis.connection`

The hosts are *seeds*: the client asks the first that answers for the slot map (``CLUSTER SLOTS``)
and from then on sends each command to the primary owning the slot of its key (see
:func:`command_key`). Per node it keeps one :class:`~catga.redis.RedisClient` (one auto-pipelined
connection: a "pool" of one, as on a single server), so the commands of all tasks bound for one node
share one socket. Only database 0 exists on a cluster.

Redirects and failover:

* ``MOVED <slot> <host:port>``: the slot lives elsewhere (resharding, a failover the client has not
  seen): the slot is re-pointed at once, the command is sent there, and the whole map is re-read
  before the next command.
* ``ASK <slot> <host:port>``: the slot is being migrated: ``ASKING`` + the command go to the target
  (the map is not changed).
* A node that cannot be reached or stops answering fails the command
  (:class:`~catga.errors.BackendUnavailableError` / :class:`~catga.errors.BackendTimeoutError`, "may or
  may not have run", as on a single server) and marks the map stale: the next command re-reads it
  from any node that answers, so once the cluster promoted a replica the client follows it. Nothing
  is retried behind the caller's back.

Pipelines (:meth:`RedisClusterClient.execute_many`) are split per node and sent concurrently; replies
come back in the caller's order. A Lua script runs on the node of its first key: catga's scripts
only touch keys of one slot (the hash tags of :mod:`catga.redis._keys`).

Durability (opt-in): replication is asynchronous, so a primary that dies right after acknowledging a
write may take it along (the promoted replica never received it). With ``wait_replicas=N`` (URL
option ``?wait_replicas=N&wait_timeout=S``) every write (a script, ``SET``, ``XADD``, ``XACK``, ...)
is followed on its connection by ``WAIT N <ms>``, and the call returns only once N replicas
acknowledged it; fewer within ``wait_timeout`` raises :class:`~catga.errors.BackendError` saying the
write is on the primary but not confirmed on replicas (it may or may not survive a failover).

Pub/sub on a cluster: the transport uses sharded pub/sub (``SPUBLISH`` / ``SSUBSCRIBE``): a message
is published on the primary of its channel's slot and stays within that shard, rather than being
broadcast over the cluster bus to every node.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from catga.errors import BackendTimeoutError, BackendUnavailableError, ConfigurationError
from catga.redis._errors import reply_error
from catga.redis._replicas import WaitSettings, is_write
from catga.redis._resp import ReplyError, RespConnection, abandon
from catga.redis._slots import SLOTS, command_key, key_slot
from catga.redis.connection import DEFAULT, DEFAULT_PREFIX, RedisClient, RedisSettings, Script, Timeout

__all__ = ("SLOTS", "RedisClusterClient", "command_key", "key_slot", "parse_cluster_url")

_MAX_REDIRECTS = 5


def _plus(timeout: float | None, extra: float) -> float | None:
    return None if timeout is None else timeout + extra


def parse_cluster_url(
    url: str,
    *,
    timeout: float | None = 5.0,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> list[RedisSettings]:
    """The settings of each seed node of a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    Raises:
        ConfigurationError: another scheme, no host, a bad port, or a database other than 0.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis Cluster URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis+cluster", "rediss+cluster"):
        raise ConfigurationError(
            f"invalid Redis Cluster URL scheme {parts.scheme!r}: use redis+cluster://host:port,host:port/"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = [h.strip() for h in hosts.split(",") if h.strip()]
    if not seeds:
        raise ConfigurationError(
            "a Redis Cluster URL needs at least one host:port, e.g. redis+cluster://h1:7000/"
        )
    plain = scheme.removesuffix("+cluster")
    out = []
    for seed in seeds:
        netloc = f"{userinfo}@{seed}" if userinfo else seed
        single = urlunsplit((plain, netloc, parts.path, parts.query, ""))
        settings = RedisSettings.from_url(
            single, timeout=timeout, connect_timeout=connect_timeout, ssl_context=ssl_context
        )
        if settings.db != 0:
            raise ConfigurationError(
                f"a Redis Cluster has only database 0, the URL asks for {settings.db}; drop the /db part"
            )
        out.append(replace(settings, url=url))
    return out


class RedisClusterClient(RedisClient):
    """A :class:`~catga.redis.RedisClient` for a Redis Cluster (see the module docstring).

    Every catga Redis store takes it where it takes a :class:`~catga.redis.RedisClient`; its
    :attr:`layout` hash-tags the keys of multi-key scripts (:mod:`catga.redis._keys`).

    Args:
        seeds: settings of the nodes to ask for the slot map (credentials and TLS apply to every node).
        prefix: the key prefix, as on :class:`~catga.redis.RedisClient`.
        coalesce: as on :class:`~catga.redis.RedisClient`.
        wait_replicas: after every write, wait until this many replicas acknowledged it (``WAIT``);
            0 (the default) does not wait. See the module docstring.
        wait_timeout: seconds one ``WAIT`` may take before the write is reported unconfirmed.

    Example:
        >>> client = RedisClusterClient.from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")
        >>> store = RedisEventStore(client)  # doctest: +SKIP
    """

    cluster = True

    def __init__(
        self,
        seeds: Sequence[RedisSettings],
        *,
        prefix: str = DEFAULT_PREFIX,
        coalesce: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        opened: bool = True,
    ) -> None:
        if not seeds:
            raise ConfigurationError("a Redis Cluster client needs at least one seed node")
        self._wait = WaitSettings(wait_replicas, wait_timeout)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        super().__init__(seeds[0], prefix=prefix, coalesce=coalesce, opened=opened)
        self.seeds = list(seeds)
        self._nodes: dict[str, RedisClient] = {}
        self._slots: list[RedisClient | None] = [None] * SLOTS
        self._stale = True
        self._refreshing: asyncio.Future[None] | None = None
        #: Times the slot map was read (for tests and diagnostics).
        self.refreshes = 0

    @classmethod
    def from_url(
        cls,
        url: str = "redis+cluster://127.0.0.1:7000/",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float | None = 5.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        coalesce: bool = True,
        opened: bool = True,
    ) -> RedisClusterClient:
        """A client for a ``redis+cluster://`` URL (nothing is opened until the first command).

        Raises:
            ConfigurationError: the URL or prefix is invalid.
        """
        seeds = parse_cluster_url(
            url, timeout=timeout, connect_timeout=connect_timeout, ssl_context=ssl_context
        )
        wait = WaitSettings.from_url(url)
        return cls(
            seeds,
            prefix=prefix,
            coalesce=coalesce,
            wait_replicas=wait.replicas,
            wait_timeout=wait.timeout,
            opened=opened,
        )

    def clone(self, *, prefix: str | None = None, client_name: str | None = None) -> RedisClusterClient:
        """A new client for the same cluster with its own connections (its slot map copied)."""
        seeds = (
            self.seeds if client_name is None else [replace(s, client_name=client_name) for s in self.seeds]
        )
        return self._copy(seeds, self.prefix if prefix is None else prefix)

    def with_timeout(self, timeout: float | None) -> RedisClusterClient:
        """A new client like this one but with another default timeout."""
        return self._copy([replace(s, timeout=timeout) for s in self.seeds], self.prefix)

    def _copy(self, seeds: list[RedisSettings], prefix: str) -> RedisClusterClient:
        other = RedisClusterClient(
            seeds,
            prefix=prefix,
            coalesce=self._coalesce,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
        )
        given = {s.address for s in seeds}
        known = [replace(seeds[0], host=n.settings.host, port=n.settings.port) for n in self._nodes.values()]
        other.seeds = [*seeds, *(s for s in known if s.address not in given)]
        return other

    # -- the slot map --------------------------------------------------------------------------
    def _node(self, host: str, port: int) -> RedisClient:
        address = f"{host}:{port}"
        node = self._nodes.get(address)
        if node is None:
            settings = replace(self.settings, host=host, port=port, unix_path=None)
            node = self._nodes[address] = RedisClient(settings, prefix=self.prefix, coalesce=self._coalesce)
        return node

    async def refresh(self) -> None:
        """Read the slot map again (``CLUSTER SLOTS``) from the first node that answers.

        Concurrent callers share one refresh.

        Raises:
            BackendUnavailableError: no known node answered.
        """
        if self._closed:
            raise self._closed_error()
        running = self._refreshing
        if running is None:
            running = self._refreshing = asyncio.ensure_future(self._refresh())
            running.add_done_callback(self._refreshed)
        await asyncio.shield(running)

    def _refreshed(self, fut: asyncio.Future[None]) -> None:
        self._refreshing = None
        if not fut.cancelled():
            fut.exception()  # read here; the awaiting callers get it too

    async def _refresh(self) -> None:
        candidates = list(dict.fromkeys([*self._nodes, *(s.address for s in self.seeds)]))
        errors: list[str] = []
        for address in candidates:
            host, _, port = address.rpartition(":")
            node = self._node(host, int(port))
            try:
                reply = await node.execute("CLUSTER", "SLOTS")
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                errors.append(f"{address}: {exc}")
                continue
            if not reply:
                errors.append(f"{address}: no slots assigned yet")
                continue
            slots: list[RedisClient | None] = [None] * SLOTS
            for entry in reply:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                p_host = primary[0].decode() if primary[0] and primary[0] != b"?" else host
                owner = self._node(p_host, int(primary[1]))
                slots[start : end + 1] = [owner] * (end - start + 1)
            self._slots = slots
            self._stale = False
            self.refreshes += 1
            return
        raise BackendUnavailableError(
            "no node of the Redis Cluster answered CLUSTER SLOTS (" + "; ".join(errors) + "); check "
            "the seed addresses of the redis+cluster:// URL and that the cluster is up",
            backend="redis",
        )

    async def _route(self, args: Sequence[Any]) -> RedisClient:
        if self._stale:
            await self.refresh()
        key = command_key(args)
        if key is None:
            return self._any_node()
        node = self._slots[key_slot(key)]
        if node is None:
            await self.refresh()
            node = self._slots[key_slot(key)]
            if node is None:
                raise BackendUnavailableError(
                    f"no Redis Cluster node serves the slot of key {key!r} (slots not covered)",
                    backend="redis",
                )
        return node

    def _any_node(self) -> RedisClient:
        for node in self._slots:
            if node is not None:
                return node
        return self._node(self.settings.host, self.settings.port)

    async def node_for(self, key: str | bytes) -> RedisClient:
        """The client of the primary serving ``key``'s slot (the slot map is read if stale).

        Raises:
            BackendUnavailableError: no node answered, or no primary serves the slot.
        """
        return await self._route(("GET", key))

    def primaries(self) -> list[RedisClient]:
        """The primaries of the last slot map read (one client each), e.g. to ``SCAN`` every node."""
        return list({id(n): n for n in self._slots if n is not None}.values())

    # -- sending -------------------------------------------------------------------------------
    async def _open_node(self, node: RedisClient) -> RespConnection:
        conn = node._conn
        if conn is None or conn.closed:
            try:
                conn = await node._connect()
            except (BackendUnavailableError, BackendTimeoutError):
                self._stale = True
                raise
        return conn

    async def _send(self, node: RedisClient, args: tuple[Any, ...], timeout: float | None) -> Any:
        conn = await self._open_node(node)
        try:
            return await conn.send(args, timeout)
        except (BackendUnavailableError, BackendTimeoutError):
            self._stale = True  # the node died or hangs: a failover may be under way
            raise

    async def _redirected(
        self, reply: ReplyError, args: tuple[Any, ...], timeout: float | None
    ) -> tuple[Any, RedisClient | None]:
        """Follow ``MOVED`` / ``ASK`` replies (at most :data:`_MAX_REDIRECTS`); return the final reply
        and the node that gave it."""
        hops = 0
        node: RedisClient | None = None
        while type(reply) is ReplyError:
            text = str(reply)
            moved = text.startswith("MOVED ")
            if not (moved or text.startswith("ASK ")) or hops >= _MAX_REDIRECTS:
                return reply, node
            hops += 1
            _, slot, address = text.split(" ", 2)
            host, _, port = address.rpartition(":")
            node = self._node(host or self.settings.host, int(port))
            if moved:
                self._slots[int(slot)] = node
                self._stale = True  # re-read the whole map before the next command
                reply = await self._send(node, args, timeout)
            else:
                conn = await self._open_node(node)
                futures = conn.send_many([("ASKING",), args], timeout)
                try:
                    reply = [await fut for fut in futures][1]
                finally:
                    abandon(futures)
        return reply, node

    async def _run(self, args: tuple[Any, ...], timeout: float | None) -> Any:
        node = await self._route(args)
        durable = self.wait_replicas > 0 and is_write(args)
        if durable:
            conn = await self._open_node(node)
            futures = self._wait.send(conn, [args], timeout)
            try:
                reply, acked = [await fut for fut in futures]
            except (BackendUnavailableError, BackendTimeoutError):
                abandon(futures)
                self._stale = True
                raise
            except BaseException:
                abandon(futures)
                raise
        else:
            reply = await self._send(node, args, timeout)
        if type(reply) is ReplyError and str(reply).startswith(("MOVED ", "ASK ")):
            reply, where = await self._redirected(reply, args, timeout)
            if durable and where is not None and type(reply) is not ReplyError:
                acked = await self._send(where, self._wait.command(), _plus(timeout, self.wait_timeout))
                node = where
        if durable and type(reply) is not ReplyError:
            self._check_acked(args, acked, node)
        return reply

    def _check_acked(self, args: Sequence[Any], acked: Any, node: RedisClient) -> None:
        self._wait.check(args[0], acked, node.settings.address)

    async def execute(self, *args: Any, timeout: Timeout = DEFAULT) -> Any:
        """Run one command on the node owning its key; return its reply.

        Raises:
            BackendUnavailableError: the node cannot be reached or the connection was lost (the slot
                map is re-read before the next command).
            BackendTimeoutError: no reply within ``timeout`` seconds.
            BackendError: the server answered with an error.
        """
        reply = await self._run(args, self.timeout if timeout is DEFAULT else timeout)
        if type(reply) is ReplyError:
            raise reply_error(str(args[0]), reply)
        return reply

    async def execute_many(
        self, commands: Sequence[tuple[Any, ...]], *, timeout: Timeout = DEFAULT
    ) -> list[Any]:
        """Pipeline several commands: one pipeline per node, sent concurrently; replies in order.

        Not a transaction. If a reply is an error, the first such error is raised after all replies
        arrived.
        """
        if not commands:
            return []
        t = self.timeout if timeout is DEFAULT else timeout
        groups: dict[int, tuple[RedisClient, list[int]]] = {}
        for i, args in enumerate(commands):
            node = await self._route(args)
            groups.setdefault(id(node), (node, []))[1].append(i)
        replies: list[Any] = [None] * len(commands)

        async def run_group(node: RedisClient, indexes: list[int]) -> None:
            conn = await self._open_node(node)
            batch = [commands[i] for i in indexes]
            durable = self.wait_replicas > 0 and any(is_write(c) for c in batch)
            futures = self._wait.send(conn, batch, t) if durable else conn.send_many(batch, t)
            try:
                got = [await fut for fut in futures]
            except (BackendUnavailableError, BackendTimeoutError):
                abandon(futures)
                self._stale = True
                raise
            except BaseException:
                abandon(futures)
                raise
            if durable:
                self._check_acked(batch[0], got.pop(), node)
            for i, reply in zip(indexes, got, strict=True):
                if type(reply) is ReplyError and str(reply).startswith(("MOVED ", "ASK ")):
                    reply = (
                        (await self._run(tuple(commands[i]), t))
                        if durable
                        else (await self._redirected(reply, tuple(commands[i]), t))[0]
                    )
                replies[i] = reply

        if len(groups) == 1:
            ((node, indexes),) = groups.values()
            await run_group(node, indexes)
        else:
            results = await asyncio.gather(
                *(run_group(n, ix) for n, ix in groups.values()), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        for args, reply in zip(commands, replies, strict=True):
            if type(reply) is ReplyError:
                raise reply_error(str(args[0]), reply)
        return replies

    async def run_script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any] = (), *, timeout: Timeout = DEFAULT
    ) -> Any:
        """Run ``script`` on the node of its first key (every key must be in that slot).

        Raises:
            BackendError: the script failed (its message names the script).
        """
        t = self.timeout if timeout is DEFAULT else timeout
        reply = await self._run(("EVALSHA", script.sha, len(keys), *keys, *args), t)
        if type(reply) is ReplyError and str(reply).startswith("NOSCRIPT"):
            reply = await self._run(("EVAL", script.source, len(keys), *keys, *args), t)
        if type(reply) is ReplyError:
            raise reply_error(f"script {script.name}", reply)
        return reply

    @property
    def server_version(self) -> str | None:
        """The version a node reported when its connection opened (None: none open yet)."""
        for node in self._nodes.values():
            if node.server_version is not None:
                return node.server_version
        return None

    async def aclose(self) -> None:
        """Close every node's connection; calls in flight fail with BackendUnavailableError. Idempotent."""
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        self._slots, self._stale = [None] * SLOTS, True  # a later open() reads the map again
        for node in nodes:
            await node.aclose()
        if self._refreshing is not None:
            self._refreshing.cancel()

    def __repr__(self) -> str:
        seeds = ",".join(s.address for s in self.seeds[:3])
        return f"RedisClusterClient({seeds!r}, prefix={self.prefix!r})"
