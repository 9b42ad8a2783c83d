"""Connecting to Redis: URL settings, the auto-pipelining :class:`RedisClient`, Lua :class:`Script`.

URLs (the same forms redis-py accepts)::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                      TLS (certificates verified by default)
    unix:///path/to/redis.sock[?db=0&password=...]

Options in the query string: ``db``, ``client_name``, ``ssl_cert_reqs`` (``required`` | ``optional`` |
``none``), ``ssl_ca_certs`` (CA bundle path), ``ssl_certfile`` / ``ssl_keyfile`` (client certificate),
``ssl_check_hostname`` (``true``/``false``). User and password are percent-decoded. ``AUTH user
password`` (ACL) or ``AUTH password`` and ``SELECT db`` run on every new connection. The parsing lives
in :mod:`catga.redis._settings` (:class:`RedisSettings`).

One :class:`RedisClient` holds **one** connection on which the commands of all concurrent tasks are
pipelined (see :mod:`catga.redis._resp`); it reconnects on the next call after a loss. Every call has a
timeout (``timeout``, default 5 s; ``None`` only when passed explicitly).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from catga._lifecycle import AsyncCloseable
from catga._versions import Version, require_version
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.redis._errors import reply_error, translate_error
from catga.redis._keys import KeyLayout, validate_prefix
from catga.redis._resp import ReplyError, RespConnection, abandon
from catga.redis._settings import DEFAULT_URL, RedisSettings

__all__ = ("DEFAULT", "DEFAULT_URL", "MIN_SERVER", "RedisClient", "RedisSettings", "Script")

#: The oldest Redis the backend works with (the transport's ``XAUTOCLAIM`` and ``LPOP`` with a count).
MIN_SERVER: Version = (6, 2, 0)
DEFAULT_PREFIX = "catga"


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"


#: "Use the client's default timeout" (distinct from ``None``, which means no timeout).
DEFAULT: Final = _Default.DEFAULT
Timeout = float | None | _Default


async def open_connection(settings: RedisSettings, *, coalesce: bool = True) -> RespConnection:
    """Open one connection and run the handshake (AUTH, SELECT, CLIENT SETNAME, then ``HELLO 2`` for
    the server's version, all pipelined in one round trip).

    Raises:
        BackendUnavailableError: the server cannot be reached.
        BackendTimeoutError: connect or handshake took longer than ``connect_timeout``.
        ConfigurationError: the server refused the credentials; or the URL points at something else:
            a server that does not answer in RESP (a NATS port), or a ``rediss://`` URL on a server
            that answers plain TCP (both checked, on failure only, by a second plain connection).
        UnsupportedServerError: the server is older than :data:`MIN_SERVER`.
    """
    loop = asyncio.get_running_loop()
    address = settings.address
    op = f"connect to {address}"
    conn: RespConnection | None = None
    try:
        async with asyncio.timeout(settings.connect_timeout):
            if settings.unix_path is not None:
                _, conn = await loop.create_unix_connection(
                    lambda: RespConnection(address, coalesce=coalesce),
                    settings.unix_path,
                    ssl=settings.ssl_context,
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: RespConnection(address, coalesce=coalesce),
                    settings.host,
                    settings.port,
                    ssl=settings.ssl_context,
                    server_hostname=settings.host if settings.ssl_context else None,
                )
            commands: list[tuple[Any, ...]] = []
            if settings.password is not None:
                if settings.username:
                    commands.append(("AUTH", settings.username, settings.password))
                else:
                    commands.append(("AUTH", settings.password))
            if settings.db:
                commands.append(("SELECT", settings.db))
            if settings.client_name:
                commands.append(("CLIENT", "SETNAME", settings.client_name))
            commands.append(("HELLO", "2"))  # RESP2, as before; its reply has the server's version
            futures = conn.send_many(commands, None)
            try:
                replies = [await fut for fut in futures]
            finally:
                abandon(futures)  # no-op after success; after a failure, no stray exception
            for args, reply in zip(commands[:-1], replies, strict=False):
                if type(reply) is ReplyError:
                    raise reply_error(str(args[0]), reply)
            conn.server_version = await _server_version(conn, replies[-1])
            require_version("redis", address, conn.server_version, MIN_SERVER, "catga's Redis backend")
    except BaseException as exc:
        if conn is not None:
            # abort, not close: a TLS close waits for the peer's close_notify (up to 30 s), and a
            # loop that stops meanwhile leaks the socket; nothing worth flushing was written.
            conn.abort(f"handshake failed: {type(exc).__name__}")
        if isinstance(exc, Exception):
            explained = await _explain_handshake_failure(settings, exc, tls_done=conn is not None)
            if explained is not None:
                raise explained from exc
        translated = translate_error(exc, op, settings.connect_timeout)
        if translated is exc:
            raise
        raise translated from exc
    return conn


_RESP_FIRST_BYTES = (b"+", b"-", b"$", b":", b"*")
_PROBE_SECONDS = 1.0


async def _explain_handshake_failure(
    settings: RedisSettings, exc: Exception, *, tls_done: bool
) -> ConfigurationError | None:
    """Say what is at the other end when the handshake failed in a way that suggests a wrong URL.

    Only on the error path: a reply that is not RESP (a NATS port answers ``INFO {...}``), or a
    ``rediss://`` URL whose TLS handshake failed or hung (a plain server never answers one). A second,
    plain connection sends ``PING`` and reads what comes back (bounded by :data:`_PROBE_SECONDS`).
    None when there is nothing better to say than the original error.
    """
    address = settings.address
    if "sent a malformed reply" in str(exc) and settings.ssl_context is None:
        got = await _plain_probe(settings)
        if got is not None and not got.startswith(_RESP_FIRST_BYTES):
            return ConfigurationError(
                f"the server at {address} does not look like a Redis server (got {_shown(got)}); "
                "check the host and port of the Redis URL (6379 is Redis' default port)"
            )
        return None
    if settings.ssl_context is None or tls_done or isinstance(exc, ssl.SSLCertVerificationError):
        return None  # a refused certificate already says so
    if not isinstance(exc, ssl.SSLError | TimeoutError | ConnectionResetError | EOFError):
        return None
    got = await _plain_probe(settings)  # a TLS port closes a plain connection: nothing comes back
    if got is None:
        return None
    what = "plain Redis" if got.startswith(_RESP_FIRST_BYTES) else "plain text"
    return ConfigurationError(
        f"TLS handshake with Redis at {address} failed: the server speaks {what}, not TLS (PING over "
        f"plain TCP got {_shown(got)}); use redis:// for a plain Redis server, or rediss:// with its "
        "TLS port"
    )


async def _plain_probe(settings: RedisSettings) -> bytes | None:
    """The first bytes a plain connection to the server gets back for ``PING`` (None: nothing)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(min(_PROBE_SECONDS, settings.connect_timeout)):
            if settings.unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(settings.unix_path)
            else:
                reader, writer = await asyncio.open_connection(settings.host, settings.port)
            writer.write(b"PING\r\n")
            return await reader.read(80) or None
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


def _shown(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").split("\r\n", 1)[0]
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


async def _server_version(conn: RespConnection, hello: Any) -> str | None:
    """The version in a ``HELLO`` reply; ``INFO server``'s if the server does not know ``HELLO``
    (Redis before 6.0); None if neither says (a Redis-compatible server, an ACL that forbids both)."""
    if type(hello) is not ReplyError:
        if isinstance(hello, list):
            fields = dict(zip(hello[::2], hello[1::2], strict=False))
            version = fields.get(b"version")
            if isinstance(version, bytes):
                return version.decode(errors="replace")
        return None
    if not str(hello).lower().startswith("err unknown command"):
        return None
    info = await conn.send(("INFO", "server"), None)
    if type(info) is ReplyError or not isinstance(info, bytes):
        return None
    for line in info.decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return line.partition(":")[2].strip()
    return None


class Script:
    """A Lua script run with ``EVALSHA``, falling back to ``EVAL`` (which caches it) on ``NOSCRIPT``.

    The SHA1 is computed locally, so the script is registered lazily by its first use on each server
    and re-registered by itself after a restart or ``SCRIPT FLUSH``.

    Attributes:
        source: the Lua source.
        sha: its SHA1 hex digest.
        name: a short name for error messages.
    """

    __slots__ = ("name", "sha", "source")

    def __init__(self, source: str, name: str = "script") -> None:
        self.source = source
        self.name = name
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisClient(AsyncCloseable):
    """An auto-pipelining Redis client on one connection, with a key prefix.

    Commands issued concurrently by many tasks share the connection and are pipelined; replies are
    matched in order. The connection opens on first use and reopens on the next call after it is
    lost (calls in flight at the loss fail with :class:`~catga.errors.BackendUnavailableError`).

    Replies are raw RESP2 values: ``bytes``, ``int``, ``None`` or lists of them.

    Args:
        settings: where to connect (see :meth:`from_url`).
        prefix: the first component of every catga key (``{prefix}:...``); distinct prefixes isolate
            applications sharing a server. Letters, digits and ``_ - . @ = +`` (no ``:``).
        coalesce: join the commands issued within one event-loop tick into one write (default; see
            :mod:`catga.redis._resp` for the measurement) instead of one write per command.
        opened: False: calls raise :class:`~catga.errors.ConfigurationError` until :meth:`open` (and
            again after :meth:`aclose`, until the next :meth:`open`): an ``App``'s client, which
            opens and closes with the app. True (default): connects on first use.

    Example:
        >>> r = RedisClient.from_url("redis://127.0.0.1:6379/0", prefix="orders")
        >>> await r.execute("SET", r.prefix + ":hello", b"world")  # doctest: +SKIP
        b'OK'
        >>> await r.aclose()  # doctest: +SKIP
    """

    #: Whether this client talks to a Redis Cluster (keys are hash-tagged; see :mod:`catga.redis._keys`).
    cluster: bool = False

    def __init__(
        self,
        settings: RedisSettings,
        *,
        prefix: str = DEFAULT_PREFIX,
        coalesce: bool = True,
        opened: bool = True,
    ) -> None:
        self.settings = settings
        self.prefix = validate_prefix(prefix)
        #: The key layout of this prefix (hash-tagged on a cluster, see :mod:`catga.redis._keys`).
        self.layout = KeyLayout(self.prefix, cluster=self.cluster)
        self.timeout = settings.timeout
        self._coalesce = coalesce
        self._conn: RespConnection | None = None
        self._lock = asyncio.Lock()
        self._managed = not opened
        self._closed = not opened

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float | None = 5.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        coalesce: bool = True,
        opened: bool = True,
    ) -> RedisClient:
        """A client for ``url`` (nothing is opened until the first command, or :meth:`open`).

        A ``redis+cluster://`` / ``rediss+cluster://`` URL gives a
        :class:`~catga.redis.RedisClusterClient`, a ``redis+sentinel://`` one a
        :class:`~catga.redis.RedisSentinelClient`.

        Raises:
            ConfigurationError: the URL or prefix is invalid.
        """
        scheme = url.partition("://")[0].lower()
        if scheme.endswith(("+cluster", "+sentinel")):  # their modules import this one
            from catga.redis.cluster import RedisClusterClient
            from catga.redis.sentinel import RedisSentinelClient

            kind = RedisClusterClient if scheme.endswith("+cluster") else RedisSentinelClient
            return kind.from_url(
                url,
                prefix=prefix,
                timeout=timeout,
                connect_timeout=connect_timeout,
                ssl_context=ssl_context,
                coalesce=coalesce,
                opened=opened,
            )
        settings = RedisSettings.from_url(
            url, timeout=timeout, connect_timeout=connect_timeout, ssl_context=ssl_context
        )
        return cls(settings, prefix=prefix, coalesce=coalesce, opened=opened)

    def clone(self, *, prefix: str | None = None, client_name: str | None = None) -> RedisClient:
        """A new client with the same settings and its own connection (e.g. for blocking reads).

        Args:
            prefix: another key prefix (default: this client's).
            client_name: ``CLIENT SETNAME`` for the new connection (default: this client's).
        """
        settings = self.settings if client_name is None else replace(self.settings, client_name=client_name)
        return RedisClient(
            settings, prefix=self.prefix if prefix is None else prefix, coalesce=self._coalesce
        )

    def with_timeout(self, timeout: float | None) -> RedisClient:
        """A new client like this one but with another default timeout."""
        return RedisClient(
            replace(self.settings, timeout=timeout), prefix=self.prefix, coalesce=self._coalesce
        )

    # -- connection ----------------------------------------------------------------------------
    def _closed_error(self) -> Exception:
        """What a call on a closed client raises (not open yet, for a client an app opens)."""
        if self._managed:
            return ConfigurationError(
                f"the Redis client for {self.settings.address} is not open: App.start() opens it and "
                "App.aclose() closes it; use the app's transport and stores inside `async with app:` "
                "(or after `await app.start()`)"
            )
        return BackendUnavailableError(
            f"this {type(self).__name__} for {self.settings.address} was closed; create a new one",
            backend="redis",
        )

    async def _connect(self) -> RespConnection:
        if self._closed:
            raise self._closed_error()
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            conn = await self._open_connection()
            if self._closed:
                conn.abort("the client was closed while connecting")
                raise BackendUnavailableError(
                    f"this RedisClient for {self.settings.address} was closed while connecting",
                    backend="redis",
                )
            self._conn = conn
            return conn

    async def _open_connection(self) -> RespConnection:
        """Open the connection (a subclass may first ask where: Sentinel)."""
        return await open_connection(self.settings, coalesce=self._coalesce)

    # -- commands ------------------------------------------------------------------------------
    async def execute(self, *args: Any, timeout: Timeout = DEFAULT) -> Any:
        """Run one command, e.g. ``await r.execute("GET", key)``; return its reply.

        Raises:
            BackendUnavailableError: the server cannot be reached or the connection was lost.
            BackendTimeoutError: no reply within ``timeout`` seconds.
            BackendError: the server answered with an error.
        """
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        reply = await conn.send(args, self.timeout if timeout is DEFAULT else timeout)
        if type(reply) is ReplyError:
            raise reply_error(str(args[0]), reply)
        return reply

    async def execute_many(
        self, commands: Sequence[tuple[Any, ...]], *, timeout: Timeout = DEFAULT
    ) -> list[Any]:
        """Pipeline several commands in one write; return their replies in order.

        Not a transaction: use a :class:`Script` for atomicity. If a reply is an error, the first such
        error is raised after all replies arrived.
        """
        if not commands:
            return []
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        futures = conn.send_many(list(commands), self.timeout if timeout is DEFAULT else timeout)
        try:
            replies = [await fut for fut in futures]
        except BaseException:
            # The first failure ends the wait: the other futures' exceptions (a lost connection
            # fails them all) would otherwise be logged as "never retrieved".
            abandon(futures)
            raise
        for args, reply in zip(commands, replies, strict=True):
            if type(reply) is ReplyError:
                raise reply_error(str(args[0]), reply)
        return replies

    async def run_script(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any] = (), *, timeout: Timeout = DEFAULT
    ) -> Any:
        """Run ``script`` with ``KEYS`` and ``ARGV``; one round trip (two after a script cache flush).

        Raises:
            BackendError: the script failed (its message names the script).
        """
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        t = self.timeout if timeout is DEFAULT else timeout
        reply = await conn.send(("EVALSHA", script.sha, len(keys), *keys, *args), t)
        if type(reply) is ReplyError and str(reply).startswith("NOSCRIPT"):
            conn = self._conn
            if conn is None or conn.closed:
                conn = await self._connect()
            reply = await conn.send(("EVAL", script.source, len(keys), *keys, *args), t)
        if type(reply) is ReplyError:
            raise reply_error(f"script {script.name}", reply)
        return reply

    async def ping(self) -> None:
        """Check the server answers ``PING`` (connecting if needed)."""
        await self.execute("PING")

    @property
    def server_version(self) -> str | None:
        """The version the server reported when this client's connection opened (None: not known)."""
        conn = self._conn
        return None if conn is None else conn.server_version

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True after :meth:`aclose` (and, for a client made with ``opened=False``, before :meth:`open`)."""
        return self._closed

    async def open(self) -> None:
        """Open the client -- the first time, or again after :meth:`aclose` -- and check the server now
        (``PING``: a wrong URL fails here, not at the first message). A no-op while open and connected.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            ConfigurationError: it refused the credentials, or is not Redis.
            UnsupportedServerError: it is older than Redis 6.2.
        """
        self._closed = False
        try:
            await self.ping()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with BackendUnavailableError. Idempotent."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    def __repr__(self) -> str:
        return f"RedisClient({self.settings.address!r}, db={self.settings.db}, prefix={self.prefix!r})"
