"""Connecting to NATS, lazy creation of streams and KV buckets, and the shared lean connection.

:class:`NatsConnection` bundles what every NATS store needs: the nats-py client (yours, or one it
opened from a URL), a JetStream context, a :class:`~catga.nats._wire.LeanConnection` for the hot paths
(publish with ack, direct get) and :meth:`NatsConnection.ensure_stream`, which creates a stream or checks
that an existing one is compatible.

Lazy initialisation follows the origin's lock review, option A (see ``docs/nats.md``): call sites test
a plain attribute, ``if not self._init.ready: await self._init()``, so once initialised no coroutine is
created and no lock is taken; the slow path (:class:`LazyInit`) takes an :class:`asyncio.Lock`,
re-checks, runs the initialiser and only then sets the flag. A failed or cancelled initialisation
leaves the flag unset, so the next call retries.

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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import DEFAULT_MAX_RECONNECT_ATTEMPTS, DEFAULT_RECONNECT_TIME_WAIT, Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo

from catga._lifecycle import AsyncCloseable
from catga._outage import OutageLog
from catga._urls import redact_url
from catga._versions import Version, require_version
from catga.errors import BackendUnavailableError, ConfigurationError
from catga.nats._errors import (
    ERR_NO_SUITABLE_PEERS,
    ERR_REPLICAS_NOT_SUPPORTED,
    ERR_STREAM_NAME_IN_USE,
    ERR_STREAM_STORE_FAILED,
    ERR_SUBJECTS_OVERLAP,
    translate_errors,
    unavailable_error,
)
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


def server_version(client: Client) -> str | None:
    """The version of the server ``client`` is connected to (from its ``INFO``), or None if not known."""
    if not client.is_connected:
        return None
    v = client.connected_server_version
    try:
        return f"{v.major}.{v.minor}.{v.patch}" + (f"-{v.dev}" if v.dev else "")
    except ValueError:  # not a semantic version: cannot tell
        return None


class LazyInit:
    """One-time async initialisation with a lock-free fast path (the origin's option A).

    Use it as ``if not init.ready: await init()``. The slow path runs ``initializer`` once for all the
    callers waiting at that moment (single flight): the first caller runs it, the others wait for that
    attempt and share its outcome -- its success, or its exception -- instead of each running an
    attempt of its own after it failed. So a caller waits for at most the attempt under way, not for a
    queue of attempts (after a lost stream leader, 16 writers queued behind one another's stream checks
    and an ``append()`` took 5 s with ``timeout=1.0``). :attr:`ready` is set only after ``initializer``
    returned; if it raises or is cancelled, :attr:`ready` stays False and the next call runs it again
    (the callers waiting on a cancelled attempt start a new one, unless they are cancelled themselves).

    Args:
        initializer: the coroutine function to run once.
    """

    __slots__ = ("_attempt", "_initializer", "ready")

    def __init__(self, initializer: Callable[[], Awaitable[None]]) -> None:
        self._initializer = initializer
        self._attempt: asyncio.Future[None] | None = None
        self.ready = False

    async def __call__(self) -> None:
        while not self.ready:
            attempt = self._attempt
            if attempt is not None:  # another caller is initialising: share its outcome
                try:
                    await asyncio.shield(attempt)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if attempt.cancelled() and (task is None or not task.cancelling()):
                        continue  # that caller was cancelled, not this one: try again
                    raise
                return
            attempt = self._attempt = asyncio.get_running_loop().create_future()
            try:
                await self._initializer()
            except BaseException as exc:
                self._attempt = None
                if isinstance(exc, asyncio.CancelledError):
                    attempt.cancel()
                else:
                    attempt.set_exception(exc)
                    attempt.exception()  # retrieved: no "never retrieved" log when nobody was waiting
                raise
            self.ready = True
            self._attempt = None
            attempt.set_result(None)

    def reset(self) -> None:
        """Forget the initialisation (e.g. the stream was deleted); the next call runs it again."""
        self.ready = False


#: nats-py errors that mean "the server is gone for now": logged once per outage, not per attempt.
_CONNECTION_ERRORS = (OSError, nats.errors.StaleConnectionError, nats.errors.ConnectionClosedError,
                      nats.errors.NoServersError)  # fmt: skip


def _raise_first_connect_error(where: str, errors: Sequence[Exception], exc: Exception) -> NoReturn:
    """Every server failed the first connect: raise why, not "no servers".

    A server's answer (credentials refused, TLS required...) says more than the reset that follows it,
    so the last protocol error wins over the last socket error.
    """
    causes = [e for e in errors if not isinstance(e, nats.errors.NoServersError)]
    if not causes:
        raise exc
    answers = [e for e in causes if not isinstance(e, OSError)]
    cause = answers[-1] if answers else causes[-1]
    if isinstance(cause, OSError):
        raise unavailable_error(
            f"connect to {where}", f"no server could be reached ({type(cause).__name__}: {cause})"
        ) from cause
    raise cause  # translated by the caller's translate_errors (credentials refused, TLS...)


def _error_logger(outage: OutageLog) -> Callable[[Exception], Awaitable[None]]:
    """nats-py's error callback: reconnect failures through ``outage``, anything else as it comes."""

    async def log_error(exc: Exception) -> None:
        if isinstance(exc, _CONNECTION_ERRORS):
            outage.failure(exc, "nats-py reconnects in the background")
        else:
            _log.warning("nats-py reported an error: %s: %s", type(exc).__name__, exc)

    return log_error


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return sorted(_plain(v) for v in value)
    return value


class NatsConnection(AsyncCloseable):
    """A nats-py client plus what catga's NATS stores share.

    Args:
        client: a connected ``nats.aio.client.Client``.
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
        UnsupportedServerError: the server is older than :data:`MIN_SERVER`.
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
        self.require(MIN_SERVER, "catga's NATS backend (its stores need 2.11+, the outbox 2.12+)")
        self.js = client.jetstream(prefix=api_prefix, timeout=timeout)
        name = client.options.get("name") or "catga"
        self.wire = LeanConnection(client, name=f"{name}-lean", connect_timeout=timeout)
        self._owns_client = owns_client
        self._closed = False
        self._users = 0
        self._memory_streams: set[str] = set()

    @property
    def address(self) -> str:
        """``host:port`` of the server the client is connected to (or of its first server)."""
        url = self.client.connected_url or next(iter(self.client.servers or ()), None)
        return f"{url.hostname}:{url.port}" if url is not None else "?"

    def require(self, needed: Version, feature: str) -> None:
        """Refuse a connected server older than ``needed`` (a store calls it once, when it is made).

        Reads the version from the server's ``INFO``; costs no network call. Not connected, or a
        version that cannot be read: not refused.

        Raises:
            UnsupportedServerError: the server is older than ``needed``; the message names both versions.
        """
        require_version("nats", self.address, server_version(self.client), needed, feature)

    async def ping(self) -> None:
        """Check the server answers a ``PING`` within :attr:`timeout` (a health check).

        Raises:
            BackendUnavailableError: the client is closed or reconnecting.
            BackendTimeoutError: no ``PONG`` in time.
        """
        client = self.client
        if self._closed or client.is_closed or not client.is_connected:
            raise BackendUnavailableError(
                f"the NATS connection is {'closed' if self._closed or client.is_closed else 'not connected'}",
                backend="nats",
            )
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
        servers = [u.strip() for u in url.split(",")] if isinstance(url, str) else list(url)
        where = ", ".join(redact_url(u) for u in servers)
        for server in servers:  # refused here, not by nats-py after its connect attempt
            if not urlsplit(server if "://" in server else f"nats://{server}").hostname:
                raise ConfigurationError(
                    f"NATS server URL {redact_url(server)!r} has no host; write the server's address, "
                    "e.g. nats://127.0.0.1:4222"
                )
        outage = OutageLog(_log, f"NATS connection to {where}", tracebacks=False)
        kwargs: dict[str, Any] = {
            "name": name,
            "connect_timeout": connect_timeout,
            "error_cb": _error_logger(outage),
            "tls_handshake_first": tls_handshake_first,
        }
        for key, value in (
            ("user", user),
            ("password", password),
            ("token", token),
            ("user_credentials", str(user_credentials) if user_credentials else None),
            ("nkeys_seed", str(nkeys_seed) if nkeys_seed else None),
            ("tls", tls),
            ("tls_hostname", tls_hostname),
        ):
            if value is not None:
                kwargs[key] = value
        if user is None and password is None and token is None and not (user_credentials or nkeys_seed):
            for key, value in _shared_credentials(servers).items():
                kwargs.setdefault(key, value)
        kwargs.update(options)
        user_reconnected_cb = kwargs.get("reconnected_cb")

        async def reconnected() -> None:
            outage.recovered()
            if user_reconnected_cb is not None:
                await user_reconnected_cb()

        kwargs["reconnected_cb"] = reconnected
        errors: list[Exception] = []
        user_error_cb = kwargs["error_cb"]
        forward_connect_errors = "error_cb" in options  # the default logger would say "reconnects"

        async def record(exc: Exception) -> None:
            errors.append(exc)
            if forward_connect_errors:
                await user_error_cb(exc)

        kwargs["error_cb"] = record
        # nats-py applies its reconnect policy to the first connect too (nats.py issues #352, #663): it
        # retries each server up to max_reconnect_attempts (60) times, sleeping reconnect_time_wait
        # (2 s) between rounds, so a refused port waited the whole connect_timeout. The first connect
        # tries each server twice without sleeping and reports why; the policy applies from then on.
        reconnect_policy = {
            "max_reconnect_attempts": kwargs.get("max_reconnect_attempts", DEFAULT_MAX_RECONNECT_ATTEMPTS),
            "reconnect_time_wait": kwargs.get("reconnect_time_wait", DEFAULT_RECONNECT_TIME_WAIT),
        }
        kwargs.update(max_reconnect_attempts=1, reconnect_time_wait=0)
        client = Client()
        ok = False
        try:
            with translate_errors(f"connect to {where}", connect_timeout):
                try:
                    await asyncio.wait_for(client.connect(servers, **kwargs), connect_timeout)
                except TimeoutError as exc:
                    last = f"{type(errors[-1]).__name__}: {errors[-1]}" if errors else "no answer"
                    raise unavailable_error(
                        f"connect to {where}", f"no server accepted within {connect_timeout} s ({last})"
                    ) from exc
                except nats.errors.NoServersError as exc:
                    _raise_first_connect_error(where, errors, exc)
            client.options.update(reconnect_policy)
            client._error_cb = user_error_cb
            prefix = f"$JS.{domain}.API" if domain else "$JS.API"
            conn = cls(client, owns_client=True, timeout=timeout, api_prefix=prefix)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 1.0)
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
                        raise _replicas_error(str(name), replicas, exc) from exc
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
        """Close the lean connection, and the nats-py client if this object opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.wire.aclose()
        if self._owns_client and not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.drain(), self.timeout)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                _log.warning("draining the NATS connection failed (%s); closing it", exc)
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    await asyncio.wait_for(self.client.close(), self.timeout)


def _shared_credentials(servers: Sequence[str]) -> dict[str, str]:
    """The user/password or token written in the server URLs, if every URL that has some has the same.

    Parsed as nats-py parses them (no percent-decoding), so what is sent does not change.
    """
    found: set[tuple[str, str | None]] = set()
    for server in servers:
        try:
            parts = urlsplit(server if "://" in server else f"nats://{server}")
        except ValueError:
            return {}
        if parts.username is not None:
            found.add((parts.username, parts.password))
    if len(found) != 1:
        return {}
    name, secret = found.pop()
    return {"token": name} if secret is None else {"user": name, "password": secret}


def _replicas_error(name: str, replicas: int, exc: nats.js.errors.APIError) -> ConfigurationError:
    if exc.err_code == ERR_REPLICAS_NOT_SUPPORTED:
        hint = "this server runs JetStream without clustering (one copy): use replicas=1, or a cluster"
    else:
        hint = (
            f"the cluster has fewer than {replicas} JetStream servers with room for it: "
            "lower replicas or add servers"
        )
    return ConfigurationError(
        f"cannot create NATS stream {name!r} with {replicas} replicas: {exc.description} "
        f"(err_code {exc.err_code}); {hint}"
    )


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
