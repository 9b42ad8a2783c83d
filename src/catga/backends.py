"""Backends by URL: what ``catga.App(transport=URL, store=URL, idempotency_store=URL, outbox=URL)`` builds.

=====================================  =====================================================
URL                                    backend
=====================================  =====================================================
``memory://`` (or ``memory``)          in-process (:mod:`catga.memory`)
``nats://host:4222``, ``tls://...``    NATS JetStream (:mod:`catga.nats`, ``pip install "catga[nats]"``)
``redis://host:6379/0``, ``rediss://`` Redis (:mod:`catga.redis`, ``pip install "catga[redis]"``)
``postgresql://user@host/db``          PostgreSQL (:mod:`catga.postgres`, ``pip install "catga[postgres]"``):
``postgres://``                        ``idempotency_store=`` and ``outbox=`` only
=====================================  =====================================================

Credentials go in the URL as the clients accept them (``nats://user:pass@host:4222``,
``nats://token@host:4222``, ``redis://:pass@host:6379/0``, Redis ``ssl_*`` query options, a
comma-separated list of NATS servers: ``nats://n1:4222,nats://n2:4222,nats://n3:4222``, the query
after the last one). Three query options are catga's own and are removed before the URL reaches the
client:

* ``prefix=NAME`` (both; default ``catga``): the namespace, ``[A-Za-z0-9_-]``, 1-64 characters. On
  Redis every key starts with ``NAME:``; on NATS the event store is stream ``NAME_EVENTS`` (upper
  case) on subjects ``NAME.events.>``, the transport uses subjects ``NAME.evt/cmd/rpc.*`` (streams
  ``NAME_MESSAGES``...), the idempotency bucket is ``NAME_idempotency``, the outbox bucket
  ``NAME_outbox``, the dead letters ``NAME_dead_letters`` and the worker id leases ``NAME_locks`` (see
  :func:`nats_layout`).
* ``storage=file|memory`` (NATS only; default ``file``): JetStream storage of streams and buckets.
* ``max_payload=BYTES`` (both; default ``App(max_payload=...)``, 1 MiB): the payload limit of the
  transport and event store built from this URL (see ``docs/errors.md``).
* ``replicas=N`` (NATS only; 1-5, default 1): copies a JetStream cluster keeps of every stream and
  bucket the URL's part creates (the transport's streams, inbox and dead letters, the event store,
  the idempotency and outbox buckets, the worker id leases). Use ``replicas=3`` on a 3-node cluster.

The backend packages are imported only when a URL names them (never when ``catga`` is imported); a
missing optional dependency raises :class:`~catga.errors.ConfigurationError` with the ``pip install``
line. :class:`Backends` opens what URLs name when the app starts, with **one connection per server**
(one :class:`~catga.nats.NatsConnection` per NATS address, one :class:`~catga.redis.RedisClient` per
Redis URL and prefix) shared by the app's transport and stores, and closes it all, in reverse, when the
app stops. Until then the app hands out *late-bound* proxies (:class:`LateEventStore`,
:class:`LateTransport`, :class:`LateIdempotencyStore`, :class:`LateOutboxStore`) so that
``Repository(app.store, Order)`` can be written at import time; once bound, a proxy's methods are the
real object's bound methods (no extra call per operation).

For anything a URL cannot say (an SSL context, a custom stream name, tuning), build the backend object
yourself and pass it instead of the URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.memory.event_store import MemoryEventStore
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.memory.outbox import MemoryOutboxStore
from catga.messages import Metadata, QoS
from catga.protocols import (
    ANY,
    Claim,
    DeadLetter,
    EventStore,
    IdempotencyStore,
    OutboxMessage,
    OutboxStatus,
    OutboxStore,
    StoredEvent,
    Subscription,
    Transport,
)

if TYPE_CHECKING:
    from catga.serialization import TypeRegistry

__all__ = (
    "SCHEMES",
    "BackendUrl",
    "Backends",
    "LateEventStore",
    "LateIdempotencyStore",
    "LateOutboxStore",
    "LateTransport",
    "NatsLayout",
    "import_backend",
    "nats_layout",
    "parse_url",
    "redact_url",
)

_log = logging.getLogger("catga.app")

T = TypeVar("T")
M = TypeVar("M")
L = TypeVar("L", bound="_Late[Any]")

#: URL scheme → backend package.
SCHEMES: Mapping[str, str] = {
    "memory": "memory",
    "nats": "nats",
    "tls": "nats",
    "redis": "redis",
    "rediss": "redis",
}
_SUPPORTED = "memory://, nats://, tls://, redis://, rediss://"
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")
_MAX_REPLICAS = 5  # catga.nats.connection.MAX_REPLICAS (not imported: catga.nats is optional)
_NATS_OPTIONS = ("prefix", "storage", "max_payload", "replicas")


@dataclass(frozen=True)
class BackendUrl:
    """A parsed backend URL.

    Attributes:
        url: the URL as given (may hold a password: print :func:`redact_url` of it).
        backend: ``"memory"``, ``"nats"`` or ``"redis"``.
        address: what the client connects to (the URL without catga's own options).
        prefix: the namespace (``prefix=`` option), default ``"catga"``.
        storage: NATS JetStream storage, ``"file"`` (default) or ``"memory"``.
        max_payload: the ``max_payload=`` option in bytes, or None (the app's limit).
        replicas: NATS JetStream replicas of the streams and buckets created, 1 (default) to 5.
    """

    url: str
    backend: str
    address: str
    prefix: str = "catga"
    storage: str = "file"
    max_payload: int | None = None
    replicas: int = 1

    def __str__(self) -> str:
        return redact_url(self.url)


def parse_url(url: object, role: str = "backend") -> BackendUrl:
    """Check a backend URL and split catga's options from the client's.

    Args:
        url: the URL.
        role: what it is for (``"transport"``, ``"store"``...), used in error messages.

    Raises:
        ConfigurationError: not a string, an unknown scheme (the message lists the supported ones), an
            unknown NATS option, or an invalid ``prefix`` / ``storage`` / ``replicas`` / port.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{role} must be a URL string or a backend object, got {type(url).__name__}")
    shown = redact_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    if "://" not in url and scheme != "memory":
        raise ConfigurationError(
            f"{role} {shown!r} is not a URL: use one of {_SUPPORTED} with a host "
            "(e.g. nats://127.0.0.1:4222), or pass a backend object built yourself"
        )
    backend = SCHEMES.get(scheme)
    if backend is None:
        raise ConfigurationError(
            f"{role} URL {shown!r} has an unsupported scheme {scheme!r}: use one of {_SUPPORTED} "
            "(or pass a backend object built yourself)"
        )
    if backend == "memory":
        return BackendUrl(url, "memory", url)
    base, _, query = url.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    prefix = options.pop("prefix", "catga")
    if _NAME.match(prefix) is None:
        raise ConfigurationError(
            f"{role} URL {shown!r}: invalid prefix {prefix!r}; use 1-64 letters, digits, '_' or '-'"
        )
    max_payload = _max_payload_option(options.pop("max_payload", None), role, shown)
    storage, replicas = "file", 1
    if backend == "nats":
        storage = options.pop("storage", "file")
        if storage not in ("file", "memory"):
            raise ConfigurationError(
                f"{role} URL {shown!r}: storage must be 'file' or 'memory', got {storage!r}"
            )
        replicas = _replicas_option(options.pop("replicas", "1"), role, shown)
        if options:
            raise ConfigurationError(
                f"{role} URL {shown!r}: unknown option(s) {sorted(options)}; a nats:// URL takes "
                f"{', '.join(_NATS_OPTIONS)} (pass a NatsConnection for anything else)"
            )
        _check_nats_servers(base, role, shown)
        address = base
    else:
        address = base + (f"?{urlencode(options)}" if options else "")
        try:
            urlsplit(base).port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
    return BackendUrl(
        url, backend, address, prefix=prefix, storage=storage, max_payload=max_payload, replicas=replicas
    )


def _check_nats_servers(base: str, role: str, shown: str) -> None:
    """Each server of a (comma-separated) NATS URL has a host and a valid port, nats:// or tls://."""
    for server in base.split(","):
        server = server.strip()
        probe = server if "://" in server else f"nats://{server}"
        try:
            parts = urlsplit(probe)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
        if parts.scheme.lower() not in ("nats", "tls") or not parts.hostname:
            raise ConfigurationError(
                f"{role} URL {shown!r}: {redact_url(server)!r} is not a NATS server; list servers as "
                "nats://host:port (or tls://), separated by commas: nats://n1:4222,nats://n2:4222"
            )


def _replicas_option(text: str, role: str, shown: str) -> int:
    """The ``replicas=`` option of a NATS URL, checked (1-5)."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= _MAX_REPLICAS:
        raise ConfigurationError(
            f"{role} URL {shown!r}: replicas must be a whole number from 1 to {_MAX_REPLICAS}, got {text!r}; "
            "use replicas=3 on a 3-node JetStream cluster, 1 on a single server"
        )
    return int(text)


def _max_payload_option(value: str | None, role: str, shown: str) -> int | None:
    if value is None:
        return None
    try:
        return check_max_payload(int(value))
    except ValueError:
        raise ConfigurationError(
            f"{role} URL {shown!r}: max_payload must be a positive number of bytes, got {value!r}"
        ) from None


def import_backend(backend: str) -> ModuleType:
    """Import ``catga.<backend>``; a missing optional dependency becomes a ConfigurationError.

    Raises:
        ConfigurationError: the backend's client library is not installed (says what to install).
    """
    try:
        return import_module(f"catga.{backend}")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "its client library"
        if missing.startswith("catga"):
            raise
        raise ConfigurationError(
            f'the {backend} backend needs {missing!r}, which is not installed: pip install "catga[{backend}]"'
        ) from exc


class NatsLayout(NamedTuple):
    """Where a NATS-backed app keeps things for one ``prefix`` (see :func:`nats_layout`)."""

    events_stream: str
    events_subjects: str
    transport_prefix: str
    idempotency_bucket: str
    dead_letter_bucket: str
    outbox_bucket: str
    locks_bucket: str


def nats_layout(prefix: str = "catga") -> NatsLayout:
    """Stream, subject and bucket names of a NATS-backed app for ``prefix`` (``catga``: the defaults)."""
    return NatsLayout(
        f"{prefix.upper()}_EVENTS",
        f"{prefix}.events",
        prefix,
        f"{prefix}_idempotency",
        f"{prefix}_dead_letters",
        f"{prefix}_outbox",
        f"{prefix}_locks",
    )


# --------------------------------------------------------------------------------------------------
# Opening and sharing connections


class Backends:
    """Builds backends from URLs, one connection per server, and closes what it opened.

    Args:
        name: the client connection name shown by the servers.
        registry: message types allowed in stores and on the wire (default: the process registry).
        timeout: default seconds for connecting and for every network call.
        max_payload: the payload limit of the transports, event stores and outboxes it builds (bytes).
    """

    def __init__(
        self,
        *,
        name: str = "catga",
        registry: TypeRegistry | None = None,
        timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ):
        self.name = name
        self.registry = registry
        self.timeout = timeout
        self.max_payload = check_max_payload(max_payload)
        self._connections: dict[tuple[str, str], Any] = {}
        self._opened: list[tuple[str, Any]] = []
        self._late: list[tuple[BackendUrl, _Late[Any], Callable[[BackendUrl], Awaitable[Any]]]] = []

    # -- what the app hands out --------------------------------------------------------------------

    def _spec(self, role: str, value: object) -> BackendUrl | None:
        """Parse a URL (None: not a URL); import its backend now, so a missing extra fails early."""
        if not isinstance(value, str):
            return None
        spec = parse_url(value, role)
        if spec.backend != "memory":
            import_backend(spec.backend)
        return spec

    def _defer(self, spec: BackendUrl, late: L, opener: Callable[[BackendUrl], Awaitable[Any]]) -> L:
        self._late.append((spec, late, opener))
        return late

    def transport_for(self, value: object) -> Transport | None:
        """The app's transport for ``value``: None for ``memory://``/None, a proxy for a URL, else ``value``.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        spec = self._spec("transport", value)
        if spec is None:
            return value  # type: ignore[return-value]  # a transport object, or None
        if spec.backend == "memory":
            return None
        return self._defer(spec, LateTransport("transport", spec.url), self.transport)

    def store_for(self, value: object) -> EventStore:
        """The app's event store for ``value``: memory for None/``memory://``, a proxy for a URL, else it.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        spec = self._spec("store", value)
        if spec is None and value is not None:
            return value  # type: ignore[return-value]  # an event store object
        if spec is None or spec.backend == "memory":
            return MemoryEventStore(registry=self.registry, max_payload=self.max_payload)
        return self._defer(spec, LateEventStore("event store", spec.url), self.event_store)

    def idempotency_store_for(self, value: object) -> IdempotencyStore:
        """Like :meth:`store_for`, for the idempotency store.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        pg = _postgres_spec("idempotency_store", value)
        if pg is not None:
            return self._defer(pg, LateIdempotencyStore("idempotency store", pg.url), self.idempotency_store)
        spec = self._spec("idempotency_store", value)
        if spec is None and value is not None:
            return value  # type: ignore[return-value]  # an idempotency store object
        if spec is None or spec.backend == "memory":
            return MemoryIdempotencyStore()
        return self._defer(spec, LateIdempotencyStore("idempotency store", spec.url), self.idempotency_store)

    def outbox_for(self, value: object) -> OutboxStore | None:
        """Like :meth:`store_for`, for the outbox; None when ``value`` is None (no outbox).

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        if value is None:
            return None
        pg = _postgres_spec("outbox", value)
        if pg is not None:
            return self._defer(pg, LateOutboxStore("outbox", pg.url), self.outbox_store)
        spec = self._spec("outbox", value)
        if spec is None:
            return value  # type: ignore[return-value]  # an outbox store object
        if spec.backend == "memory":
            return MemoryOutboxStore()
        return self._defer(spec, LateOutboxStore("outbox", spec.url), self.outbox_store)

    def manages(self, obj: object) -> bool:
        """True if ``obj`` is a proxy handed out by this object (opened and closed by it)."""
        return any(late is obj for _, late, _ in self._late)

    async def open(self) -> None:
        """Open what the proxies stand for and bind them (idempotent while open).

        Raises:
            BackendUnavailableError: a server cannot be reached.
            ConfigurationError: a server refused the credentials or the configuration.
        """
        for spec, late, opener in self._late:
            if not late.bound:
                late.bind(await opener(spec))
                if spec.backend == "nats" and spec.storage == "memory":
                    _log.warning(
                        "%s %s keeps its NATS streams on memory storage: a nats-server restart loses "
                        "every message in them, acknowledged or not; drop storage=memory for anything "
                        "you cannot lose",
                        late._role,
                        spec,
                    )

    async def _unbind(self) -> None:
        for _, late, _ in self._late:
            late.unbind()

    # -- opening -------------------------------------------------------------------------------------

    @property
    def connections(self) -> tuple[Any, ...]:
        """The connections opened so far (NatsConnection / RedisClient objects)."""
        return tuple(self._connections.values())

    def _track(self, what: str, obj: T) -> T:
        self._opened.append((what, obj))
        return obj

    async def _nats(self, spec: BackendUrl) -> Any:
        key = ("nats", spec.address)
        conn = self._connections.get(key)
        if conn is None:
            import_backend("nats")
            from catga.nats import NatsConnection

            conn = await NatsConnection.connect(
                spec.address, name=self.name, connect_timeout=self.timeout, timeout=self.timeout
            )
            self._connections[key] = self._track(f"NATS connection {redact_url(spec.address)}", conn)
        return conn

    async def _redis(self, spec: BackendUrl) -> Any:
        key = ("redis", f"{spec.address}#{spec.prefix}")
        client = self._connections.get(key)
        if client is None:
            import_backend("redis")
            from catga.redis import RedisClient

            client = RedisClient.from_url(
                spec.address, prefix=spec.prefix, timeout=self.timeout, connect_timeout=self.timeout
            )
            self._connections[key] = self._track(f"Redis client {redact_url(spec.address)}", client)
            await client.ping()  # connect now: a wrong URL fails at start, not at the first message
            from catga.redis._durability import log_durability

            await log_durability(client, logging.getLogger("catga.redis"))  # WARNING if it can lose data
        return client

    async def event_store(self, spec: BackendUrl) -> EventStore:
        """Open the event store ``spec`` names (NATS or Redis)."""
        if spec.backend == "nats":
            from catga.nats import NatsEventStore

            layout = nats_layout(spec.prefix)
            nats_store = NatsEventStore(
                await self._nats(spec),
                stream=layout.events_stream,
                prefix=layout.events_subjects,
                registry=self.registry,
                storage=spec.storage,
                replicas=spec.replicas,
            )
            return self._track(f"event store {spec}", nats_store)
        from catga.redis import RedisEventStore

        redis_store = RedisEventStore(
            await self._redis(spec), registry=self.registry, max_payload=spec.max_payload or self.max_payload
        )
        return self._track(f"event store {spec}", redis_store)

    async def transport(self, spec: BackendUrl) -> Transport:
        """Open the transport ``spec`` names, with a dead-letter queue on the same server."""
        if spec.backend == "nats":
            from catga.nats import NatsDeadLetterQueue, NatsTransport

            conn, layout = await self._nats(spec), nats_layout(spec.prefix)
            dlq = self._track(
                f"dead letters {spec}",
                NatsDeadLetterQueue(
                    conn, bucket=layout.dead_letter_bucket, storage=spec.storage, replicas=spec.replicas
                ),
            )
            nats_transport = NatsTransport(
                conn,
                registry=self.registry,
                prefix=layout.transport_prefix,
                dead_letters=dlq,
                storage="memory" if spec.storage == "memory" else "file",
                replicas=spec.replicas,
                timeout=self.timeout,
                max_payload=spec.max_payload or self.max_payload,
            )
            return self._track(f"transport {spec}", nats_transport)
        from catga.redis import RedisDeadLetterQueue, RedisTransport

        client = await self._redis(spec)
        dead_letters = self._track(f"dead letters {spec}", RedisDeadLetterQueue(client))
        redis_transport = RedisTransport(
            client,
            registry=self.registry,
            dead_letters=dead_letters,
            max_payload=spec.max_payload or self.max_payload,
        )
        return self._track(f"transport {spec}", redis_transport)

    async def idempotency_store(self, spec: BackendUrl) -> IdempotencyStore:
        """Open the idempotency store ``spec`` names (NATS, Redis, or PostgreSQL: ``catga_idempotency``)."""
        if spec.backend == "postgres":
            from catga.postgres import PostgresIdempotencyStore

            pg_idem = await PostgresIdempotencyStore.connect(spec.address, timeout=self.timeout)
            return self._track(f"idempotency store {spec}", pg_idem)
        if spec.backend == "nats":
            from catga.nats import NatsIdempotencyStore

            bucket = nats_layout(spec.prefix).idempotency_bucket
            nats_idem = NatsIdempotencyStore(
                await self._nats(spec), bucket=bucket, storage=spec.storage, replicas=spec.replicas
            )
            return self._track(f"idempotency store {spec}", nats_idem)
        from catga.redis import RedisIdempotencyStore

        redis_idem = RedisIdempotencyStore(await self._redis(spec))
        return self._track(f"idempotency store {spec}", redis_idem)

    async def outbox_store(self, spec: BackendUrl) -> OutboxStore:
        """Open the outbox store ``spec`` names (NATS, Redis, or PostgreSQL: table ``catga_outbox``)."""
        if spec.backend == "postgres":
            from catga.postgres import PostgresOutboxStore

            pg_outbox = await PostgresOutboxStore.connect(spec.address, timeout=self.timeout)
            return self._track(f"outbox {spec}", pg_outbox)
        if spec.backend == "nats":
            from catga.nats import NatsOutboxStore

            bucket = nats_layout(spec.prefix).outbox_bucket
            nats_outbox = NatsOutboxStore(
                await self._nats(spec), bucket=bucket, storage=spec.storage, replicas=spec.replicas
            )
            return self._track(f"outbox {spec}", nats_outbox)
        from catga.redis import RedisOutboxStore

        redis_outbox = RedisOutboxStore(await self._redis(spec))
        return self._track(f"outbox {spec}", redis_outbox)

    async def worker_id_lock(self) -> tuple[str, Any] | None:
        """A distributed lock to lease worker ids through: on the first NATS or Redis backend the
        URLs name, else on the first PostgreSQL one (table ``catga_locks``, on the pool of that
        ``postgresql://`` store, created here if missing). Call it after :meth:`open`.

        Returns:
            ``(description, lock)`` on the shared connection or pool (closed with the backends), or
            None when no URL names a NATS, Redis or PostgreSQL server.

        Raises:
            ConfigurationError: PostgreSQL refused to create the ``catga_locks`` table (no ``CREATE``
                privilege); the message says how to create it or hand out worker ids instead.
            BackendUnavailableError, BackendTimeoutError: the server failed.
        """
        for spec, _, _ in self._late:
            if spec.backend == "nats":
                from catga.nats import NatsLock

                conn, bucket = await self._nats(spec), nats_layout(spec.prefix).locks_bucket
                lock = NatsLock(conn, bucket=bucket, storage=spec.storage, replicas=spec.replicas)
                return f"NATS {redact_url(spec.address)}", self._track(f"worker id lock {spec}", lock)
            if spec.backend == "redis":
                from catga.redis import RedisLock

                redis_lock = RedisLock(await self._redis(spec))
                return f"Redis {redact_url(spec.address)}", self._track(f"worker id lock {spec}", redis_lock)
        for spec, late, _ in self._late:
            if spec.backend == "postgres":
                return await self._postgres_lock(spec, late.target.pool)
        return None

    async def _postgres_lock(self, spec: BackendUrl, pool: Any) -> tuple[str, Any]:
        """A :class:`~catga.postgres.PostgresLock` on the pool of the store ``spec`` opened (the lock
        does not close the pool: the store does), its table set up now."""
        from catga.postgres import PostgresLock

        lock = PostgresLock(pool, timeout=self.timeout)
        try:
            await lock.ensure_schema()
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{exc}. The app leases its Snowflake worker id through table {lock.table} of "
                f"{spec}: create it (CREATE TABLE {lock.table} (key text PRIMARY KEY, token text, "
                "fencing bigint NOT NULL, expires_at timestamptz)), or hand out worker ids yourself "
                "(CATGA_WORKER_ID, or App(worker_id=N))"
            ) from exc
        return f"PostgreSQL {spec}", self._track(f"worker id lock {spec}", lock)

    def closers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """``(description, aclose)`` of everything opened, last opened first; forgets them."""
        steps = [(what, obj.aclose) for what, obj in reversed(self._opened)]
        self._opened.clear()
        self._connections.clear()
        if self._late:
            steps.append(("unbinding the backend proxies", self._unbind))
        return steps


def _postgres_spec(role: str, value: object) -> BackendUrl | None:
    """A ``postgresql://`` / ``postgres://`` URL as a spec (the outbox and idempotency stores take one)."""
    if not (isinstance(value, str) and value.split("://", 1)[0].lower() in ("postgresql", "postgres")):
        return None
    try:
        import catga.postgres  # noqa: F401 - fail now when asyncpg is missing
    except ImportError as exc:
        raise ConfigurationError(
            f"{role} URL {redact_url(value)!r} needs asyncpg: pip install 'catga[postgres]'"
        ) from exc
    return BackendUrl(value, "postgres", value)


# --------------------------------------------------------------------------------------------------
# Late-bound proxies


class _Late(Generic[T]):
    """Stands for a backend object the app opens at start; raises a clear error before that."""

    _methods: tuple[str, ...] = ()

    def __init__(self, role: str, url: str) -> None:
        self._role = role
        self._url = redact_url(url)
        self._target: T | None = None

    @property
    def target(self) -> T:
        """The real backend object.

        Raises:
            ConfigurationError: the app is not started (or already stopped).
        """
        target = self._target
        if target is None:
            raise ConfigurationError(
                f"the {self._role} {self._url!r} is not open: App.start() opens it and App.aclose() "
                "closes it; use it inside `async with app:` (or after `await app.start()`)"
            )
        return target

    @property
    def bound(self) -> bool:
        """True while the app is started and the real object open."""
        return self._target is not None

    def bind(self, target: T) -> None:
        """Forward to ``target`` from now on (its bound methods replace the forwarding ones)."""
        self._target = target
        for name in self._methods:
            self.__dict__[name] = getattr(target, name)

    def unbind(self) -> None:
        """Forget the target (the app closed it)."""
        self._target = None
        for name in self._methods:
            self.__dict__.pop(name, None)

    async def aclose(self) -> None:
        """No-op: the app owns and closes the real object."""

    def __repr__(self) -> str:
        state = repr(self._target) if self._target is not None else "not open"
        return f"{type(self).__name__}({self._url!r}, {state})"


class LateEventStore(_Late[EventStore]):
    """An :class:`~catga.protocols.EventStore` the app opens at start (see the module docs)."""

    _methods = ("append", "read", "version", "read_all", "subscribe_all")

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """See :meth:`EventStore.append <catga.protocols.EventStore.append>`."""
        return await self.target.append(stream_id, events, expected_version, metadata=metadata)

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.read <catga.protocols.EventStore.read>`."""
        return await self.target.read(stream_id, from_version, max_count)

    async def version(self, stream_id: str) -> int:
        """See :meth:`EventStore.version <catga.protocols.EventStore.version>`."""
        return await self.target.version(stream_id)

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """See :meth:`EventStore.read_all <catga.protocols.EventStore.read_all>`."""
        return await self.target.read_all(from_position, max_count)

    def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """See :meth:`EventStore.subscribe_all <catga.protocols.EventStore.subscribe_all>`."""
        return self.target.subscribe_all(from_position)


class LateIdempotencyStore(_Late[IdempotencyStore]):
    """An :class:`~catga.protocols.IdempotencyStore` the app opens at start."""

    _methods = ("claim", "complete", "release")

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        """See :meth:`IdempotencyStore.claim <catga.protocols.IdempotencyStore.claim>`."""
        return await self.target.claim(key, lock_ttl)

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        """See :meth:`IdempotencyStore.complete <catga.protocols.IdempotencyStore.complete>`."""
        await self.target.complete(key, result, ttl)

    async def release(self, key: str) -> None:
        """See :meth:`IdempotencyStore.release <catga.protocols.IdempotencyStore.release>`."""
        await self.target.release(key)


class LateOutboxStore(_Late[OutboxStore]):
    """An :class:`~catga.protocols.OutboxStore` the app opens at start."""

    _methods = ("add", "fetch_pending", "mark_published", "mark_failed", "get", "count", "purge_published")

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """See :meth:`OutboxStore.add <catga.protocols.OutboxStore.add>`."""
        await self.target.add(messages)

    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
        """See :meth:`OutboxStore.fetch_pending <catga.protocols.OutboxStore.fetch_pending>`."""
        return await self.target.fetch_pending(limit, lease)

    async def mark_published(self, ids: Sequence[str]) -> None:
        """See :meth:`OutboxStore.mark_published <catga.protocols.OutboxStore.mark_published>`."""
        await self.target.mark_published(ids)

    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None:
        """See :meth:`OutboxStore.mark_failed <catga.protocols.OutboxStore.mark_failed>`."""
        await self.target.mark_failed(id, error, retry_at)

    async def get(self, id: str) -> OutboxMessage | None:
        """See :meth:`OutboxStore.get <catga.protocols.OutboxStore.get>`."""
        return await self.target.get(id)

    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int:
        """See :meth:`OutboxStore.count <catga.protocols.OutboxStore.count>`."""
        return await self.target.count(status)

    async def purge_published(self, older_than: float) -> int:
        """See :meth:`OutboxStore.purge_published <catga.protocols.OutboxStore.purge_published>`."""
        return await self.target.purge_published(older_than)


class LateTransport(_Late[Transport]):
    """A :class:`~catga.protocols.Transport` the app opens at start."""

    _methods = ("publish", "publish_batch", "send", "subscribe", "publish_raw", "replay", "request", "serve")

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """See :meth:`Transport.publish <catga.protocols.Transport.publish>`."""
        await self.target.publish(message, metadata=metadata, destination=destination)

    async def publish_batch(self, messages: Sequence[object], *, destination: str | None = None) -> None:
        """See :meth:`Transport.publish_batch <catga.protocols.Transport.publish_batch>`."""
        await self.target.publish_batch(messages, destination=destination)

    async def send(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        """See :meth:`Transport.send <catga.protocols.Transport.send>`."""
        await self.target.send(message, metadata=metadata, destination=destination)

    async def subscribe(
        self,
        message_type: type[M],
        handler: Callable[[M, Metadata], Awaitable[None]],
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        group: str | None = None,
        destination: str | None = None,
        max_in_flight: int = 64,
        max_deliver: int = 5,
    ) -> Subscription:
        """See :meth:`Transport.subscribe <catga.protocols.Transport.subscribe>`."""
        return await self.target.subscribe(
            message_type,
            handler,
            qos=qos,
            group=group,
            destination=destination,
            max_in_flight=max_in_flight,
            max_deliver=max_deliver,
        )

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """See :meth:`Transport.publish_raw <catga.protocols.Transport.publish_raw>`."""
        await self.target.publish_raw(destination, body, headers)

    async def replay(self, letter: DeadLetter) -> None:
        """See :meth:`Transport.replay <catga.protocols.Transport.replay>`."""
        await self.target.replay(letter)

    async def request(
        self,
        destination: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, str]]:
        """See :meth:`Transport.request <catga.protocols.Transport.request>`."""
        return await self.target.request(destination, body, headers=headers, timeout=timeout)

    async def serve(
        self,
        destination: str,
        handler: Callable[[bytes, dict[str, str]], Awaitable[tuple[bytes, dict[str, str]]]],
        *,
        group: str | None = "rpc",
    ) -> Subscription:
        """See :meth:`Transport.serve <catga.protocols.Transport.serve>`."""
        return await self.target.serve(destination, handler, group=group)
