"""Connecting to NATS, lazy creation of streams and KV buckets, and the shared lean connection.

:class:`NatsConnection` bundles what every NATS store needs: the nats-py client (yours, or one it
opened from a URL), a JetStream context, a :class:`~catga.nats._wire.LeanConnection` for the hot paths
(publish with ack, direct get) and :meth:`NatsConnection.ensure_stream`, which creates a stream or checks
that an existing one is compatible.

A connection can be built unconnected (:meth:`NatsConnection.lazy`, what an ``App`` builds for a
``nats://`` URL) and opened later, running the version gates its stores asked for. How the client
connects: :mod:`catga.nats._connect`; :class:`LazyInit` (first-use initialisation): :mod:`catga.nats._lazy`.

Example:
    >>> conn = await NatsConnection.connect("nats://127.0.0.1:4222", token="s3cret")  # doctest: +SKIP
    >>> store = NatsEventStore(conn)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo

from catga._lifecycle import AsyncCloseable
from catga._versions import Version, require_version
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.nats._connect import ConnectPlan, guard, not_open, server_version
from catga.nats._errors import (
    ERR_NO_SUITABLE_PEERS,
    ERR_REPLICAS_NOT_SUPPORTED,
    ERR_STREAM_NAME_IN_USE,
    ERR_STREAM_STORE_FAILED,
    ERR_SUBJECTS_OVERLAP,
    replicas_error,
    translate_errors,
    unavailable_error,
)
from catga.nats._lazy import LazyInit
from catga.nats._wire import LeanConnection

__all__ = (
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "MAX_REPLICAS",
    "MIN_SERVER",
    "OUTBOX_SERVER",
    "STORES_SERVER",
    "LazyInit",
    "NatsConnection",
    "as_connection",
    "check_replicas",
    "server_version",
)

_log = logging.getLogger("catga.nats")

#: Default seconds for every network call of the NATS backend (overridable per object).
DEFAULT_TIMEOUT = 5.0
DEFAULT_URL = "nats://127.0.0.1:4222"
#: JetStream keeps at most 5 copies of a stream.
MAX_REPLICAS = 5


def check_replicas(value: object, what: str = "replicas") -> int:
    """Check a JetStream replica count: an int from 1 to :data:`MAX_REPLICAS` (3 on a 3-node cluster).

    Args:
        value: the count to check.
        what: the setting's name, for the message.

    Returns:
        ``value``.

    Raises:
        ConfigurationError: not an int (``True``, ``"3"``, ``3.0`` are refused) or not in 1..5.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{what} must be an int from 1 to {MAX_REPLICAS}, got {value!r} ({type(value).__name__})"
        )
    if not 1 <= value <= MAX_REPLICAS:
        raise ConfigurationError(
            f"{what} must be from 1 to {MAX_REPLICAS} (JetStream keeps at most {MAX_REPLICAS} copies of "
            f"a stream), got {value}; use 3 on a 3-node cluster, 1 on a single server"
        )
    return value


#: The oldest nats-server the NATS backend accepts at all (the transport's documented minimum).
MIN_SERVER: Version = (2, 10, 0)
#: ... for the event store (batch direct get) and the KV-layout stores: idempotency/inbox, lock,
#: cache, dead letters (per-message TTL, ``Nats-TTL``).
STORES_SERVER: Version = (2, 11, 0)
#: ... for the outbox (atomic batch publish).
OUTBOX_SERVER: Version = (2, 12, 0)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return sorted(_plain(v) for v in value)
    return value


class NatsConnection(AsyncCloseable):
    """A nats-py client plus what catga's NATS stores share.

    Build it from a connected client (``NatsConnection(client)``), connect it from a URL
    (:meth:`connect`), or build it unconnected from a URL (:meth:`lazy`) and :meth:`open` it later --
    what ``App(transport="nats://...")`` does: the app's stores are built on the connection in the
    constructor, ``App.start()`` opens it, ``App.aclose()`` closes it, and a restart opens it again.
    Until it is open, every call through it raises :class:`~catga.errors.ConfigurationError` saying
    so (no connect on demand: an app's connections open and close with the app).

    Args:
        client: a nats-py client (connected, unless the connection is opened by :meth:`open`).
        owns_client: close the client in :meth:`aclose` (True when made by :meth:`connect`).
        timeout: default seconds for JetStream API calls.
        api_prefix: JetStream API prefix (``"$JS.API"``, or ``"$JS.<domain>.API"``).

    Attributes:
        client: the nats-py client.
        js: a JetStream context with :attr:`timeout`.
        wire: the lean connection used by the hot paths (connected lazily, on first use).
        timeout: default seconds for network calls.
        api_prefix: the JetStream API prefix.

    Not thread-safe: use a connection, and the stores on it, from the event loop it was made on.

    Raises:
        UnsupportedServerError: the (connected) server is older than :data:`MIN_SERVER`.
    """

    def __init__(
        self,
        client: Client,
        *,
        owns_client: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        api_prefix: str = "$JS.API",
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.api_prefix = api_prefix
        self._plan: ConnectPlan | None = None
        self._open = True
        self._required: list[tuple[Version, str]] = []
        self.require(MIN_SERVER, "catga's NATS backend (its stores need 2.11+, the outbox 2.12+)")
        self.js = client.jetstream(prefix=api_prefix, timeout=timeout)
        name = client.options.get("name") or "catga"
        self.wire = LeanConnection(client, name=f"{name}-lean", connect_timeout=timeout)
        self._owns_client = owns_client
        self._users = 0
        self._memory_streams: set[str] = set()

    @property
    def address(self) -> str:
        """``host:port`` of the server the client is connected to (or of its first server)."""
        url = self.client.connected_url or next(iter(self.client.servers or ()), None)
        if url is None and self._plan is not None:  # not connected yet: the first server listed
            url = urlparse(
                self._plan.servers[0] if "://" in self._plan.servers[0] else f"nats://{self._plan.servers[0]}"
            )
        return f"{url.hostname}:{url.port or 4222}" if url is not None else "?"

    @property
    def opened(self) -> bool:
        """True between :meth:`open` (or connecting) and :meth:`aclose`."""
        return self._open

    def require(self, needed: Version, feature: str) -> None:
        """Refuse a server older than ``needed`` (a store calls it once, when it is made).

        Reads the version from the server's ``INFO``; costs no network call. Not connected yet: checked
        when :meth:`open` connects (and refused there). A version that cannot be read: not refused.

        Raises:
            UnsupportedServerError: the server is older than ``needed``; the message names both versions.
        """
        self._required.append((needed, feature))
        require_version("nats", self.address, server_version(self.client), needed, feature)

    async def ping(self) -> None:
        """Check the server answers a ``PING`` within :attr:`timeout` (a health check).

        Raises:
            BackendUnavailableError: the connection is not open, or the client is reconnecting.
            BackendTimeoutError: no ``PONG`` in time.
        """
        client = self.client
        if not self._open or client.is_closed or not client.is_connected:
            state = "not open" if not self._open else "closed" if client.is_closed else "not connected"
            raise BackendUnavailableError(f"the NATS connection is {state}", backend="nats")
        with translate_errors("ping", self.timeout):
            async with asyncio.timeout(self.timeout):
                await client.flush()

    def attach(self) -> None:
        """Count one more store using this connection (see :meth:`detach`)."""
        self._users += 1

    async def detach(self) -> None:
        """A store stopped using this connection; the last one out closes the lean socket.

        The nats-py client is left alone (it belongs to whoever made it); the lean socket reconnects if
        a store uses the connection again.
        """
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.wire.disconnect()

    @classmethod
    def lazy(
        cls,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        domain: str | None = None,
        **options: Any,
    ) -> NatsConnection:
        """A connection to ``url`` that connects at :meth:`open` (and again after :meth:`aclose`).

        Nothing touches the network here: stores can be built on it at once; the version gates they
        ask for (:meth:`require`) run when it opens. The arguments are those of :meth:`connect`.
        """
        plan = ConnectPlan(url, **options)
        prefix = f"$JS.{domain}.API" if domain else "$JS.API"
        conn = cls(plan.new_client(), owns_client=True, timeout=timeout, api_prefix=prefix)
        conn._plan = plan
        conn._open = False
        conn._refuse()
        return conn

    def _refuse(self) -> None:
        """Until :meth:`open`: every call through the client or the lean socket raises "not open"."""
        if self._plan is not None:
            where = self._plan.where
            guard(self.client, where)
            self.wire.refuse(lambda: not_open(where))

    async def open(self) -> None:
        """Connect a connection made by :meth:`lazy` (or closed by :meth:`aclose`); no-op while open.

        Raises:
            BackendUnavailableError: no server could be reached in time, or this connection wraps a
                client someone else connected and was closed.
            ConfigurationError: the server refused the credentials.
            UnsupportedServerError: the server is older than this connection or a store on it needs.
        """
        if self._open:
            return
        plan = self._plan
        if plan is None:
            raise BackendUnavailableError("this NatsConnection was closed; create a new one", backend="nats")
        client = self.client
        await plan.connect(client)
        try:
            version = server_version(client)
            for needed, feature in self._required:
                require_version("nats", self.address, version, needed, feature)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)
            raise
        guard(client, None)
        self.wire.reopen()
        self._open = True

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        user_credentials: str | Path | None = None,
        nkeys_seed: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        tls_handshake_first: bool = False,
        name: str = "catga",
        connect_timeout: float = DEFAULT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        domain: str | None = None,
        **options: Any,
    ) -> NatsConnection:
        """Open a nats-py client and wrap it (the connection owns and closes it).

        ``url`` may hold credentials (``nats://user:pass@host:4222``, ``nats://token@host:4222``) or
        be a comma-separated list / sequence of servers; ``tls://`` turns TLS on. Credentials written
        in the URL(s) apply to every server -- those listed without them, and those the cluster
        announces -- so a reconnect to another node authenticates (nats-py alone sends them only to the
        very server whose URL holds them); servers listed with different credentials keep their own.
        Everything else is passed to ``nats.connect`` unchanged (``reconnect_time_wait``,
        ``max_reconnect_attempts``, ``inbox_prefix``...). nkeys and creds files need the ``nkeys`` package.

        The first connect fails fast: each server is tried twice without waiting, and when none
        accepts, the error says why (refused, credentials...) instead of waiting out
        ``connect_timeout`` as nats-py's reconnect loop would; ``max_reconnect_attempts`` and
        ``reconnect_time_wait`` govern the reconnects after it.

        Args:
            url: server URL(s).
            user: user name (with ``password``).
            password: password.
            token: authentication token.
            user_credentials: path of a ``.creds`` file (JWT + nkey seed).
            nkeys_seed: path of an nkey seed file.
            tls: an SSL context for TLS (client certificates, custom CA).
            tls_hostname: the host name to verify the server certificate against.
            tls_handshake_first: do the TLS handshake before the server's INFO (server option).
            name: the connection name shown by the server.
            connect_timeout: seconds allowed to connect.
            timeout: default seconds for every later network call.
            domain: a JetStream domain (sets the API prefix to ``$JS.<domain>.API``).
            **options: more ``nats.connect`` keyword arguments.

        Raises:
            BackendUnavailableError: no server could be reached in time.
            ConfigurationError: the server refused the credentials, or a server URL has no host.
            UnsupportedServerError: the server is older than :data:`MIN_SERVER`.
        """
        conn = cls.lazy(
            url,
            user=user,
            password=password,
            token=token,
            user_credentials=user_credentials,
            nkeys_seed=nkeys_seed,
            tls=tls,
            tls_hostname=tls_hostname,
            tls_handshake_first=tls_handshake_first,
            name=name,
            connect_timeout=connect_timeout,
            timeout=timeout,
            domain=domain,
            **options,
        )
        await conn.open()
        return conn

    async def ensure_stream(
        self, config: StreamConfig, check: Sequence[str] = (), *, timeout: float | None = None
    ) -> StreamInfo:
        """Create the stream, or check that the existing one has the same ``check`` fields.

        Safe to race with other processes: creating an identical stream twice is not an error.

        Args:
            config: the wanted configuration (``config.name`` is the stream name).
            check: field names whose existing values must equal ``config``'s (``subjects`` compares
                as a set).
            timeout: seconds per JetStream API call (default: :attr:`timeout`). A store passes its own,
                so recovering from a lost stream leader waits for the store's timeout, not the
                connection's.

        Returns:
            The stream's info.

        Raises:
            ConfigurationError: the stream exists with an incompatible configuration (the message lists
                each differing field) or with fewer replicas than ``config.num_replicas``, its subjects
                overlap another stream's, or the replicas cannot be placed (a single server, or fewer
                JetStream servers than replicas).
            BackendUnavailableError / BackendTimeoutError: the server did not answer.
        """
        name = config.name
        replicas = check_replicas(config.num_replicas or 1, f"replicas of NATS stream {name!r}")
        seconds = self.timeout if timeout is None else timeout
        js = (
            self.js
            if seconds == self.timeout
            else self.client.jetstream(prefix=self.api_prefix, timeout=seconds)
        )
        with translate_errors(f"create stream {name!r}", seconds):
            try:
                info: StreamInfo = await js.stream_info(str(name))
            except nats.js.errors.NotFoundError:
                try:
                    info = await self._add_stream(config, js)
                    self._check_storage(info)
                    return info
                except nats.js.errors.APIError as exc:
                    if exc.err_code == ERR_SUBJECTS_OVERLAP:
                        raise ConfigurationError(
                            f"cannot create NATS stream {name!r}: its subjects {config.subjects} overlap "
                            "with an existing stream's; choose another prefix/bucket name"
                        ) from exc
                    if exc.err_code == ERR_NO_SUITABLE_PEERS and "offline" in (exc.description or ""):
                        raise unavailable_error(  # a node is down or not yet known to the meta leader
                            f"create stream {name!r} with {replicas} replicas",
                            f"{exc.description}; retry once every server of the cluster is up",
                        ) from exc
                    if exc.err_code in (ERR_REPLICAS_NOT_SUPPORTED, ERR_NO_SUITABLE_PEERS):
                        raise replicas_error(str(name), replicas, exc) from exc
                    if exc.err_code != ERR_STREAM_NAME_IN_USE:
                        raise
                    info = await js.stream_info(str(name))
        existing = info.config.num_replicas or 1
        if existing < replicas:  # more copies than asked for is fine; fewer breaks a durability promise
            raise ConfigurationError(
                f"NATS stream {name!r} exists with {existing} replica(s), wanted {replicas}: raise it with "
                f"`nats stream edit {name} --replicas {replicas}` (or ask for replicas={existing})"
            )
        self._check_storage(info)
        differences = []
        for field in check:
            want, have = _plain(getattr(config, field)), _plain(getattr(info.config, field))
            if want != have:
                differences.append(f"{field}: existing {have!r}, wanted {want!r}")
        if differences:
            raise ConfigurationError(
                f"NATS stream {name!r} exists with an incompatible configuration ("
                + "; ".join(differences)
                + "); use another stream/bucket name, or migrate/delete the existing stream"
            )
        return info

    def _check_storage(self, info: StreamInfo) -> None:
        """Warn (once per stream) that a stream on memory storage loses everything on a restart."""
        name = info.config.name or "?"
        if info.config.storage == StorageType.MEMORY and name not in self._memory_streams:
            self._memory_streams.add(name)
            _log.warning(
                "NATS stream %r is on memory storage: a nats-server restart loses every message in it, "
                "acknowledged or not; use storage='file' (the default) for anything you cannot lose",
                name,
            )

    async def _add_stream(self, config: StreamConfig, js: JetStreamContext) -> StreamInfo:
        """Create a stream, retrying once when the server fails to create its store.

        nats-server removes an account's storage directory when its last stream is deleted; a stream
        created at that moment fails with err_code 10049 ("error creating store for stream").
        """
        try:
            info: StreamInfo = await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != ERR_STREAM_STORE_FAILED:
                raise
            await asyncio.sleep(0.05)
            info = await js.add_stream(config)
        return info

    async def aclose(self) -> None:
        """Close the lean connection, and the nats-py client if this object opened it. Idempotent.

        A connection made by :meth:`lazy` or :meth:`connect` can be opened again (:meth:`open`).
        """
        if not self._open:
            return
        self._open = False
        await self.wire.aclose()
        if self._owns_client and not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.drain(), self.timeout)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                _log.warning("draining the NATS connection failed (%s); closing it", exc)
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    await asyncio.wait_for(self.client.close(), self.timeout)
        self._refuse()


_shared: weakref.WeakKeyDictionary[Client, NatsConnection] = weakref.WeakKeyDictionary()


def as_connection(source: NatsConnection | Client) -> NatsConnection:
    """Return ``source`` if it is a :class:`NatsConnection`, else the one shared by that nats-py client.

    All stores built on one nats-py client share one :class:`NatsConnection` (and one lean socket);
    the client itself is never closed by catga.

    Raises:
        ConfigurationError: ``source`` is neither.
    """
    if isinstance(source, NatsConnection):
        return source
    if isinstance(source, Client):
        conn = _shared.get(source)
        if conn is None:
            conn = _shared[source] = NatsConnection(source)
        return conn
    raise ConfigurationError(
        f"expected a catga NatsConnection or a nats-py Client, got {type(source).__name__}; "
        "use the store's connect(url) classmethod to connect from a URL"
    )
