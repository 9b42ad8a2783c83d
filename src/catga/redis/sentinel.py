"""A Redis client that finds the primary through Redis Sentinel and follows its failovers.

URL::

    redis+sentinel://[[user]:password@]sentinel1:26379[,sentinel2:26379...]/<service>[/db][?option=value...]
    rediss+sentinel://...        TLS to the data nodes (``ssl_*`` options: :mod:`catga.redis.connection`)

``<service>`` is the name the sentinels monitor (``sentinel monitor mymaster ...``). User, password,
database, TLS and the other options are those of the *data* nodes; the sentinels are asked without
credentials.

Each time :class:`RedisSentinelClient` (re)connects -- at its first command and on the next command
after the connection was lost -- it asks the sentinels in turn ``SENTINEL GET-MASTER-ADDR-BY-NAME``,
connects to that address and checks with ``ROLE`` that it is a primary. So after a failover the first
command fails (the primary is gone: :class:`~catga.errors.BackendUnavailableError`, "may or may not
have run", as on a single server), and the next one goes to the promoted replica once the sentinels
announce it. A ``READONLY`` reply (the old primary came back as a replica while a connection to it
stayed open) drops the connection for the same effect. Everything else is
:class:`~catga.redis.RedisClient`: one auto-pipelined connection, the same keys (no hash tags: one
primary holds everything), the same scripts.

Replication to the replicas is asynchronous, as on a cluster: a failover can lose the last
acknowledged writes. ``wait_replicas=N`` (URL ``?wait_replicas=N&wait_timeout=S``) pipelines
``WAIT N <ms>`` behind every write, as :class:`~catga.redis.RedisClusterClient` does (see
``docs/redis.md``).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from catga.errors import BackendError, BackendTimeoutError, BackendUnavailableError, ConfigurationError
from catga.redis._errors import reply_error
from catga.redis._replicas import WaitSettings, is_write
from catga.redis._resp import ReplyError, RespConnection, abandon
from catga.redis.connection import (
    DEFAULT,
    DEFAULT_PREFIX,
    RedisClient,
    RedisSettings,
    Script,
    Timeout,
    open_connection,
)

__all__ = ("RedisSentinelClient", "parse_sentinel_url")


def parse_sentinel_url(
    url: str,
    *,
    timeout: float | None = 5.0,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[str, RedisSettings, list[RedisSettings]]:
    """``(service, data-node settings, sentinel settings)`` of a ``redis+sentinel://`` URL.

    Raises:
        ConfigurationError: another scheme, no sentinel, no service name, or a bad port or database.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis Sentinel URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise ConfigurationError(
            f"invalid Redis Sentinel URL scheme {parts.scheme!r}: use redis+sentinel://host:26379/<service>"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    addresses = [h.strip() for h in hosts.split(",") if h.strip()]
    path = [p for p in parts.path.split("/") if p]
    if not addresses or not path or len(path) > 2:
        raise ConfigurationError(
            "a Redis Sentinel URL names the sentinels and the monitored service: "
            "redis+sentinel://host:26379[,host:26380]/<service>[/db]"
        )
    service = unquote(path[0])
    db = path[1] if len(path) == 2 else "0"
    plain = scheme.removesuffix("+sentinel")
    netloc = f"{userinfo}@{addresses[0]}" if userinfo else addresses[0]
    data = RedisSettings.from_url(
        urlunsplit((plain, netloc, f"/{db}", parts.query, "")),
        timeout=timeout,
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
    )
    sentinels = []
    for address in addresses:
        probe = RedisSettings.from_url(
            f"redis://{address}/0", timeout=timeout, connect_timeout=connect_timeout
        )
        sentinels.append(probe)
    return service, replace(data, url=url), sentinels


class RedisSentinelClient(RedisClient):
    """A :class:`~catga.redis.RedisClient` whose server is the primary a set of sentinels names.

    Args:
        service: the monitored name (``mymaster``).
        settings: the data nodes' settings (credentials, db, TLS, timeouts); host and port are
            replaced by the primary's address at each connection.
        sentinels: where to ask (host and port of each sentinel).
        prefix: the key prefix, as on :class:`~catga.redis.RedisClient`.
        coalesce: as on :class:`~catga.redis.RedisClient`.
        wait_replicas: after every write, wait until this many replicas acknowledged it (``WAIT``);
            0 (the default) does not wait.
        wait_timeout: seconds one ``WAIT`` may take before the write is reported unconfirmed.

    Raises:
        ConfigurationError: no sentinel given, or a bad ``wait_replicas`` / ``wait_timeout``.

    Example:
        >>> client = RedisClient.from_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster")
        >>> store = RedisEventStore(client)  # doctest: +SKIP
    """

    def __init__(
        self,
        service: str,
        settings: RedisSettings,
        sentinels: Sequence[RedisSettings],
        *,
        prefix: str = DEFAULT_PREFIX,
        coalesce: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        opened: bool = True,
    ) -> None:
        self._wait = WaitSettings(wait_replicas, wait_timeout)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        if not sentinels:
            raise ConfigurationError("a Redis Sentinel client needs at least one sentinel address")
        super().__init__(settings, prefix=prefix, coalesce=coalesce, opened=opened)
        self.service = service
        self.sentinels = list(sentinels)
        #: ``host:port`` of the primary the last connection went to (None before the first).
        self.primary: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str = "redis+sentinel://127.0.0.1:26379/mymaster",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float | None = 5.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        coalesce: bool = True,
        opened: bool = True,
    ) -> RedisSentinelClient:
        """A client for a ``redis+sentinel://`` URL (nothing is opened until the first command).

        Raises:
            ConfigurationError: the URL or prefix is invalid.
        """
        service, settings, sentinels = parse_sentinel_url(
            url, timeout=timeout, connect_timeout=connect_timeout, ssl_context=ssl_context
        )
        wait = WaitSettings.from_url(url)
        return cls(
            service,
            settings,
            sentinels,
            prefix=prefix,
            coalesce=coalesce,
            wait_replicas=wait.replicas,
            wait_timeout=wait.timeout,
            opened=opened,
        )

    def clone(self, *, prefix: str | None = None, client_name: str | None = None) -> RedisSentinelClient:
        """A new client for the same service with its own connection."""
        settings = self.settings if client_name is None else replace(self.settings, client_name=client_name)
        return RedisSentinelClient(
            self.service,
            settings,
            self.sentinels,
            prefix=self.prefix if prefix is None else prefix,
            coalesce=self._coalesce,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
        )

    def with_timeout(self, timeout: float | None) -> RedisSentinelClient:
        """A new client like this one but with another default timeout."""
        return RedisSentinelClient(
            self.service,
            replace(self.settings, timeout=timeout),
            self.sentinels,
            prefix=self.prefix,
            coalesce=self._coalesce,
            wait_replicas=self.wait_replicas,
            wait_timeout=self.wait_timeout,
        )

    # -- finding the primary -------------------------------------------------------------------
    async def primary_settings(self) -> RedisSettings:
        """The data settings pointed at the primary the first answering sentinel names.

        Raises:
            BackendUnavailableError: no sentinel answered, or none knows the service.
        """
        errors: list[str] = []
        for sentinel in self.sentinels:
            try:
                conn = await open_connection(sentinel, coalesce=False)
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                errors.append(f"{sentinel.address}: {exc}")
                continue
            try:
                reply = await conn.send(("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service), self.timeout)
            except (BackendUnavailableError, BackendTimeoutError) as exc:
                errors.append(f"{sentinel.address}: {exc}")
                continue
            finally:
                conn.abort("sentinel query done")
            if type(reply) is ReplyError or not reply:
                errors.append(f"{sentinel.address}: does not monitor {self.service!r} ({reply!r})")
                continue
            return replace(self.settings, host=reply[0].decode(), port=int(reply[1]), unix_path=None)
        raise BackendUnavailableError(
            f"no sentinel named the primary of {self.service!r} (" + "; ".join(errors) + "); check the "
            "sentinel addresses and the service name of the redis+sentinel:// URL",
            backend="redis",
        )

    async def _open_connection(self) -> RespConnection:
        settings = await self.primary_settings()
        conn = await open_connection(settings, coalesce=self._coalesce)
        try:
            role = await conn.send(("ROLE",), settings.connect_timeout)
        except BaseException:
            conn.abort("role check failed")
            raise
        if type(role) is ReplyError or not role or role[0] != b"master":
            conn.abort("not a primary")
            raise BackendUnavailableError(
                f"the sentinels name {settings.address} as the primary of {self.service!r}, but it is "
                f"not one (ROLE {role[0] if role else role!r}): a failover is under way; retry shortly",
                backend="redis",
            )
        self.primary = settings.address
        return conn

    async def pubsub_node(self) -> RedisSettings:
        """Settings of the current primary, for the transport's pub/sub connection."""
        return await self.primary_settings()

    # -- a demoted primary ---------------------------------------------------------------------
    def _demoted(self, exc: BackendError) -> None:
        conn = self._conn
        if conn is not None and "READONLY" in str(exc):
            conn.abort(f"{self.primary} became a replica (failover); reconnecting through the sentinels")

    async def _waited(self, commands: list[tuple[Any, ...]], timeout: Timeout) -> list[Any]:
        """Pipeline ``commands`` then ``WAIT`` on the connection; raw replies (the last is WAIT's)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        t = self.timeout if timeout is DEFAULT else timeout
        futures = self._wait.send(conn, commands, t)
        try:
            return [await fut for fut in futures]
        except BaseException:
            abandon(futures)
            raise

    def _settle(
        self, commands: Sequence[tuple[Any, ...]], replies: list[Any], what: str | None = None
    ) -> None:
        """Raise the first error reply (``what`` names a script), then an unconfirmed write."""
        for args, reply in zip(commands, replies, strict=False):
            if type(reply) is ReplyError:
                error = reply_error(what or str(args[0]), reply)
                if isinstance(error, BackendError):
                    self._demoted(error)
                raise error
        self._wait.check(what or commands[0][0], replies[-1], self.primary or self.settings.address)

    async def execute(self, *args: Any, timeout: Timeout = DEFAULT) -> Any:
        """As :meth:`RedisClient.execute <catga.redis.RedisClient.execute>`; a ``READONLY`` reply drops
        the connection so that the next command finds the new primary."""
        if self._wait.replicas and is_write(args):
            replies = await self._waited([args], timeout)
            self._settle([args], replies)
            return replies[0]
        try:
            return await super().execute(*args, timeout=timeout)
        except BackendError as exc:
            self._demoted(exc)
            raise

    async def execute_many(
        self, commands: Sequence[tuple[Any, ...]], *, timeout: Timeout = DEFAULT
    ) -> list[Any]:
        """As :meth:`RedisClient.execute_many <catga.redis.RedisClient.execute_many>` (see
        :meth:`execute`)."""
        if self._wait.replicas and any(is_write(c) for c in commands):
            replies = await self._waited(list(commands), timeout)
            self._settle(commands, replies)
            return replies[:-1]
        try:
            return await super().execute_many(commands, timeout=timeout)
        except BackendError as exc:
            self._demoted(exc)
            raise

    async def run_script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any] = (), *, timeout: Timeout = DEFAULT
    ) -> Any:
        """As :meth:`RedisClient.run_script <catga.redis.RedisClient.run_script>` (see :meth:`execute`)."""
        if self._wait.replicas:
            command: tuple[Any, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = await self._waited([command], timeout)
            if type(replies[0]) is ReplyError and str(replies[0]).startswith("NOSCRIPT"):
                command = ("EVAL", script.source, len(keys), *keys, *args)
                replies = await self._waited([command], timeout)
            self._settle([command], replies, f"script {script.name}")
            return replies[0]
        try:
            return await super().run_script(script, keys, args, timeout=timeout)
        except BackendError as exc:
            self._demoted(exc)
            raise

    def __repr__(self) -> str:
        return f"RedisSentinelClient({self.service!r}, primary={self.primary!r}, prefix={self.prefix!r})"
