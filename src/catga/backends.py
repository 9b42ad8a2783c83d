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

Each scheme is one :func:`register_backend` line here; what a URL builds lives in the backend's own
opener module, ``catga.<backend>._backend`` (one async function per role, ``transport``, ``store``,
``idempotency_store``, ``outbox``, plus ``worker_id_lock``, ``LOCK_RANK`` and, optionally,
``url_options`` for options of its own), so adding a backend touches its folder and one line here.

For anything a URL cannot say (an SSL context, a custom stream name, tuning), build the backend object
yourself and pass it instead of the URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
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
from catga.protocols import (
    EventStore,
    IdempotencyStore,
    OutboxStore,
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
    "ROLES",
    "import_backend",
    "register_backend",
    "nats_layout",
    "parse_url",
    "redact_url",
)

_log = logging.getLogger("catga.app")

T = TypeVar("T")
M = TypeVar("M")

#: The roles a URL can fill, as the ``App(...)`` arguments name them.
ROLES = ("transport", "store", "idempotency_store", "outbox")

#: URL scheme → backend name (see :func:`register_backend`).
SCHEMES: dict[str, str] = {}
_PACKAGES: dict[str, str] = {}  # backend name → its package
_BACKEND_ROLES: dict[str, frozenset[str]] = {}  # backend name → the roles its URLs can fill
_OWN_OPTIONS: dict[str, bool] = {}  # backend name → catga's options are parsed out of its URLs


def register_backend(
    scheme: str,
    backend: str,
    *,
    package: str | None = None,
    roles: Sequence[str] = ROLES,
    url_options: bool = True,
) -> None:
    """Make URLs ``scheme://...`` build the ``backend`` backend (no import happens here).

    What a URL builds comes from the opener module ``<package>._backend`` (see :class:`Backends`),
    imported the first time a URL names the backend.

    Args:
        scheme: the URL scheme (lower case).
        backend: the backend's name, ``catga.<backend>`` unless ``package`` says otherwise.
        package: the backend's package (its missing dependency becomes a ``pip install`` hint).
        roles: which of :data:`ROLES` its URLs can fill; other roles reject the scheme.
        url_options: True: catga's ``prefix`` / ``max_payload`` options are taken out of the URL;
            False: the URL goes to the client as given.
    """
    SCHEMES[scheme] = backend
    _PACKAGES[backend] = package or f"catga.{backend}"
    _BACKEND_ROLES[backend] = frozenset(roles)
    _OWN_OPTIONS[backend] = url_options


register_backend("memory", "memory")
register_backend("nats", "nats")
register_backend("tls", "nats")
register_backend("redis", "redis")
register_backend("rediss", "redis")
register_backend("redis+cluster", "redis")
register_backend("rediss+cluster", "redis")
register_backend("redis+sentinel", "redis")
register_backend("rediss+sentinel", "redis")
register_backend("postgresql", "postgres", roles=("idempotency_store", "outbox"), url_options=False)
register_backend("postgres", "postgres", roles=("idempotency_store", "outbox"), url_options=False)


def _fills(backend: str, role: str) -> bool:
    """True if ``backend`` URLs can fill ``role`` (any other role name: the transport and the store)."""
    roles = _BACKEND_ROLES[backend]
    return role in roles if role in ROLES else {"transport", "store"} <= roles


def _supported(role: str) -> str:
    return ", ".join(f"{scheme}://" for scheme, backend in SCHEMES.items() if _fills(backend, role))


_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


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
            f"{role} {shown!r} is not a URL: use one of {_supported(role)} with a host "
            "(e.g. nats://127.0.0.1:4222), or pass a backend object built yourself"
        )
    backend = SCHEMES.get(scheme)
    if backend is None or not _fills(backend, role):
        raise ConfigurationError(
            f"{role} URL {shown!r} has an unsupported scheme {scheme!r}: use one of {_supported(role)} "
            "(or pass a backend object built yourself)"
        )
    if backend == "memory" or not _OWN_OPTIONS[backend]:
        return BackendUrl(url, backend, url)
    base, _, query = url.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    prefix = options.pop("prefix", "catga")
    if _NAME.match(prefix) is None:
        raise ConfigurationError(
            f"{role} URL {shown!r}: invalid prefix {prefix!r}; use 1-64 letters, digits, '_' or '-'"
        )
    max_payload = _max_payload_option(options.pop("max_payload", None), role, shown)
    # The backend's own options (NATS: storage, replicas, the server list), else the client's.
    own = getattr(_opener(backend), "url_options", None)
    extra: dict[str, Any] = own(base, options, role, shown) if own is not None else {}
    address = extra.pop("address", None)
    if address is None:
        address = base + (f"?{urlencode(options)}" if options else "")
        try:
            urlsplit(base).port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
    return BackendUrl(url, backend, address, prefix=prefix, max_payload=max_payload, **extra)


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
        return import_module(_PACKAGES.get(backend, f"catga.{backend}"))
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

_WHAT = {
    "transport": "transport",
    "store": "event store",
    "idempotency_store": "idempotency store",
    "outbox": "outbox",
}


class Backends:
    """Builds backends from URLs, one connection per server, and closes what it opened.

    What a URL builds comes from its backend's opener module (``catga.<backend>._backend``, see
    :func:`register_backend`): one async function per role (``transport``, ``store``,
    ``idempotency_store``, ``outbox``), each ``(backends, spec) -> object``, plus
    ``worker_id_lock(backends, spec, opened) -> (description, lock)`` and ``LOCK_RANK`` (lower is
    preferred). Openers share connections through :meth:`shared` and register extra objects to
    close through :meth:`track`.

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
        self._late: list[tuple[BackendUrl, str, _Late[Any]]] = []

    # -- what the app hands out --------------------------------------------------------------------

    def _spec(self, role: str, value: object) -> BackendUrl | None:
        """Parse a URL (None: not a URL); import its backend now, so a missing extra fails early."""
        if not isinstance(value, str):
            return None
        spec = parse_url(value, role)
        if spec.backend != "memory":
            import_backend(spec.backend)
        return spec

    def _for(self, role: str, value: object, memory: Callable[[], Any]) -> Any:
        """``value`` itself (an object, or None), ``memory()`` for ``memory://``, a proxy for a URL."""
        spec = self._spec(role, value)
        if spec is None:
            return value
        if spec.backend == "memory":
            return memory()
        late = _LATE[role](_WHAT[role], spec.url)
        self._late.append((spec, role, late))
        return late

    def transport_for(self, value: object) -> Transport | None:
        """The app's transport for ``value``: None for ``memory://``/None, a proxy for a URL, else ``value``.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        transport: Transport | None = self._for("transport", value, lambda: None)
        return transport

    def store_for(self, value: object) -> EventStore:
        """The app's event store for ``value``: memory for None/``memory://``, a proxy for a URL, else it.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        store: EventStore = self._for(
            "store",
            "memory://" if value is None else value,
            lambda: MemoryEventStore(registry=self.registry, max_payload=self.max_payload),
        )
        return store

    def idempotency_store_for(self, value: object) -> IdempotencyStore:
        """Like :meth:`store_for`, for the idempotency store.

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        store: IdempotencyStore = self._for(
            "idempotency_store", "memory://" if value is None else value, MemoryIdempotencyStore
        )
        return store

    def outbox_for(self, value: object) -> OutboxStore | None:
        """Like :meth:`store_for`, for the outbox; None when ``value`` is None (no outbox).

        Raises:
            ConfigurationError: a bad URL or a missing optional dependency.
        """
        outbox: OutboxStore | None = self._for("outbox", value, MemoryOutboxStore)
        return outbox

    def manages(self, obj: object) -> bool:
        """True if ``obj`` is a proxy handed out by this object (opened and closed by it)."""
        return any(late is obj for _, _, late in self._late)

    async def open(self) -> None:
        """Open what the proxies stand for and bind them (idempotent while open).

        Raises:
            BackendUnavailableError: a server cannot be reached.
            ConfigurationError: a server refused the credentials or the configuration.
        """
        for spec, role, late in self._late:
            if not late.bound:
                late.bind(await self.build(role, spec))
                if spec.storage == "memory":
                    _log.warning(
                        "%s %s keeps its NATS streams on memory storage: a nats-server restart loses "
                        "every message in them, acknowledged or not; drop storage=memory for anything "
                        "you cannot lose",
                        late._role,
                        spec,
                    )

    async def _unbind(self) -> None:
        for _, _, late in self._late:
            late.unbind()

    # -- opening -------------------------------------------------------------------------------------

    @property
    def connections(self) -> tuple[Any, ...]:
        """The connections opened so far (NatsConnection / RedisClient objects)."""
        return tuple(self._connections.values())

    def track(self, what: str, obj: T) -> T:
        """Close ``obj`` (its ``aclose()``) with the backends, after what was opened later."""
        self._opened.append((what, obj))
        return obj

    async def shared(self, key: tuple[str, str], what: str, connect: Callable[[], Awaitable[T]]) -> T:
        """The connection ``key`` names, opened by ``connect()`` on first use, then shared and closed last."""
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = self.track(what, await connect())
        return conn

    async def build(self, role: str, spec: BackendUrl) -> Any:
        """Open the ``role`` (``transport``, ``store``, ``idempotency_store``, ``outbox``) ``spec`` names.

        Raises:
            ConfigurationError: the backend does not provide ``role``, or refused the configuration.
            BackendUnavailableError, BackendTimeoutError: the server failed.
        """
        opener = getattr(_opener(spec.backend), role, None)
        if opener is None:
            raise ConfigurationError(f"the {spec.backend} backend has no {_WHAT.get(role, role)}: {spec}")
        return self.track(f"{_WHAT.get(role, role)} {spec}", await opener(self, spec))

    async def transport(self, spec: BackendUrl) -> Transport:
        """Open the transport ``spec`` names, with a dead-letter queue on the same server."""
        transport: Transport = await self.build("transport", spec)
        return transport

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
        ranked = sorted(self._late, key=lambda entry: getattr(_opener(entry[0].backend), "LOCK_RANK", 0))
        for spec, _, late in ranked:
            opener = getattr(_opener(spec.backend), "worker_id_lock", None)
            if opener is not None:
                where, lock = await opener(self, spec, late.target)
                return where, self.track(f"worker id lock {spec}", lock)
        return None

    def closers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """``(description, aclose)`` of everything opened, last opened first; forgets them."""
        steps = [(what, obj.aclose) for what, obj in reversed(self._opened)]
        self._opened.clear()
        self._connections.clear()
        if self._late:
            steps.append(("unbinding the backend proxies", self._unbind))
        return steps


def _opener(backend: str) -> ModuleType:
    """The opener module of ``backend`` (``<package>._backend``)."""
    import_backend(backend)
    return import_module(f"{_PACKAGES.get(backend, f'catga.{backend}')}._backend")


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

    def __getattr__(self, name: str) -> Any:
        """A protocol method while not bound: it calls the target's at call time (or says it is not open).

        Once bound, the target's bound methods sit in the instance dict and this is not called.
        """
        if name not in type(self)._methods:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        def forward(*args: Any, **kwargs: Any) -> Any:
            return getattr(self.target, name)(*args, **kwargs)

        forward.__name__ = name
        return forward

    async def aclose(self) -> None:
        """No-op: the app owns and closes the real object."""

    def __repr__(self) -> str:
        state = repr(self._target) if self._target is not None else "not open"
        return f"{type(self).__name__}({self._url!r}, {state})"


class LateEventStore(_Late[EventStore]):
    """An :class:`~catga.protocols.EventStore` the app opens at start (see the module docs)."""

    _methods = ("append", "read", "version", "read_all", "subscribe_all")


class LateIdempotencyStore(_Late[IdempotencyStore]):
    """An :class:`~catga.protocols.IdempotencyStore` the app opens at start."""

    _methods = ("claim", "complete", "release")


class LateOutboxStore(_Late[OutboxStore]):
    """An :class:`~catga.protocols.OutboxStore` the app opens at start."""

    _methods = ("add", "fetch_pending", "mark_published", "mark_failed", "get", "count", "purge_published")


class LateTransport(_Late[Transport]):
    """A :class:`~catga.protocols.Transport` the app opens at start."""

    _methods = ("publish", "publish_batch", "send", "subscribe", "publish_raw", "replay", "request", "serve")


_LATE: dict[str, type[_Late[Any]]] = {
    "transport": LateTransport,
    "store": LateEventStore,
    "idempotency_store": LateIdempotencyStore,
    "outbox": LateOutboxStore,
}
