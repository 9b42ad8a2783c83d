"""Backends by URL: what ``catga.App(transport=URL, store=URL, idempotency_store=URL, outbox=URL,
scheduler=URL)`` builds.

The schemes and the roles each fills are the :func:`register_backend` lines below; the options a URL
takes (``prefix``, ``max_payload``, NATS ``storage`` and ``replicas``) and where credentials go are in
``docs/getting-started.md``; catga's own options never reach the client.

**Registration.** Each scheme is one :func:`register_backend` line here; what a URL builds lives in
the backend's opener module, ``catga.<backend>._backend``: one function per role (``transport``,
``store``, ``idempotency_store``, ``outbox``), ``(backends, spec) -> object``, building it on a
connection shared through :meth:`Backends.shared`; ``async worker_id_lock(backends, spec) ->
(description, lock)`` and ``LOCK_RANK`` (lower is preferred) if it can lease worker ids; optionally
``url_options`` for options of its own. A backend package is imported only when a URL names it; a
missing optional dependency raises :class:`~catga.errors.ConfigurationError` with the ``pip install``.

**Lifecycle.** The objects are built in ``App(...)`` (``Repository(app.store, Order)`` works at import
time) on **one connection per server** (a :class:`~catga.nats.NatsConnection` per NATS server list, a
:class:`~catga.redis.RedisClient` per Redis URL and prefix, a :class:`~catga.postgres.PgPool` per
PostgreSQL URL), opened at ``App.start()``, closed in reverse at ``App.aclose()``, opened again by the
next start. A call through a connection that is not open raises
:class:`~catga.errors.ConfigurationError` ("not open: App.start() opens it"); nothing connects on
demand. For what a URL cannot say (an SSL context, tuning), pass an object built yourself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga._urls import redact_url
from catga.errors import ConfigurationError

if TYPE_CHECKING:
    from catga.serialization import TypeRegistry

__all__ = (
    "ROLES",
    "SCHEMES",
    "BackendUrl",
    "Backends",
    "import_backend",
    "parse_url",
    "redact_url",
    "register_backend",
)

T = TypeVar("T")

#: The roles a URL can fill, as the ``App(...)`` arguments name them.
ROLES = ("transport", "store", "idempotency_store", "outbox", "scheduler", "workflows")

#: URL scheme → backend name (see :func:`register_backend`).
SCHEMES: dict[str, str] = {}
_PACKAGES: dict[str, str] = {}  # backend name → its package
_BACKEND_ROLES: dict[str, frozenset[str]] = {}  # backend name → the roles its URLs can fill
_OWN_OPTIONS: dict[str, bool] = {}  # backend name → catga's options are parsed out of its URLs
_HOSTLESS: set[str] = set()  # schemes that may be written without "://"


def register_backend(
    scheme: str,
    backend: str,
    *,
    package: str | None = None,
    roles: Sequence[str] = ROLES,
    url_options: bool = True,
    hostless: bool = False,
) -> None:
    """Make URLs ``scheme://...`` build the ``backend`` backend (imported when a URL first names it).

    Args:
        scheme: the URL scheme (lower case).
        backend: the backend's name, ``catga.<backend>`` unless ``package`` says otherwise.
        package: the backend's package (its missing dependency becomes a ``pip install`` hint).
        roles: which of :data:`ROLES` its URLs can fill; other roles reject the scheme.
        url_options: take catga's ``prefix`` / ``max_payload`` out of the URL (False: give it as is).
        hostless: the URL may be the bare scheme (``memory``).
    """
    SCHEMES[scheme] = backend
    _PACKAGES[backend] = package or f"catga.{backend}"
    _BACKEND_ROLES[backend] = frozenset(roles)
    _OWN_OPTIONS[backend] = url_options
    if hostless:
        _HOSTLESS.add(scheme)


register_backend("memory", "memory", url_options=False, hostless=True)
register_backend("nats", "nats")
register_backend("tls", "nats")
register_backend("redis", "redis")
register_backend("rediss", "redis")
register_backend("redis+cluster", "redis")
register_backend("rediss+cluster", "redis")
register_backend("redis+sentinel", "redis")
register_backend("rediss+sentinel", "redis")
_PG_ROLES = ("store", "idempotency_store", "outbox", "scheduler", "workflows")
register_backend("postgresql", "postgres", roles=_PG_ROLES, url_options=False)
register_backend("postgres", "postgres", roles=_PG_ROLES, url_options=False)


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
        backend: the registered backend's name (``"memory"``, ``"nats"``, ``"redis"``, ``"postgres"``).
        address: what the client connects to (the URL without catga's own options).
        prefix: the namespace (``prefix=`` option), default ``"catga"``.
        storage, replicas: the NATS ``storage=`` (``"file"``/``"memory"``) and ``replicas=`` options.
        max_payload: the ``max_payload=`` option in bytes, or None (the app's limit).
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
    if "://" not in url and scheme not in _HOSTLESS:
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
    if not _OWN_OPTIONS[backend]:
        return BackendUrl(url, backend, url)
    base, _, query = url.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    prefix = options.pop("prefix", "catga")
    if _NAME.match(prefix) is None:
        msg = f"{role} URL {shown!r}: invalid prefix {prefix!r}; use 1-64 letters, digits, '_' or '-'"
        raise ConfigurationError(msg)
    limit = options.pop("max_payload", None)
    try:
        max_payload = None if limit is None else check_max_payload(int(limit))
    except ValueError:
        msg = f"{role} URL {shown!r}: max_payload must be a positive number of bytes, got {limit!r}"
        raise ConfigurationError(msg) from None
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


def _opener(backend: str) -> ModuleType:
    """The opener module of ``backend`` (``<package>._backend``)."""
    import_backend(backend)
    return import_module(f"{_PACKAGES.get(backend, f'catga.{backend}')}._backend")


class Backends:
    """Builds backend objects from URLs on shared connections; opens and closes the connections.

    Objects are built at once (:meth:`build`, in ``App(...)``) and are the app's components
    (:attr:`built`); their connections open in :meth:`open` (``App.start()``) and close, last opened
    first, through :meth:`closers` (``App.aclose()``, after the components).

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
        #: The objects built, in order (a transport's dead-letter queue before it).
        self.built: list[Any] = []
        self._connections: dict[tuple[str, str], tuple[str, Any, Callable[[], Awaitable[None]]]] = {}
        self._specs: list[BackendUrl] = []
        self._opened: list[tuple[str, Any]] = []

    def for_role(self, role: str, value: object, default: str | None = None) -> Any:
        """``value`` itself if it is an object (or None without a ``default``), else what the URL
        ``value`` (or ``default``) builds for ``role`` (see :meth:`build`)."""
        value = default if value is None else value
        if not isinstance(value, str):
            return value
        return self.build(role, parse_url(value, role))

    def build(self, role: str, spec: BackendUrl) -> Any:
        """Build the ``role`` (one of :data:`ROLES`) ``spec`` names, on the shared connection to its
        server (not opened here); None for no transport.

        Raises:
            ConfigurationError: a bad URL, the backend cannot fill ``role``, a missing optional dependency.
        """
        builder = getattr(_opener(spec.backend), role, None)
        if builder is None:
            raise ConfigurationError(f"the {spec.backend} backend cannot be the {role}: {spec}")
        obj = builder(self, spec)
        self._specs.append(spec)
        return obj if obj is None else self.track(obj)

    def track(self, obj: T) -> T:
        """Add ``obj`` to :attr:`built`: the app starts it and closes it with its components."""
        self.built.append(obj)
        return obj

    def shared(
        self, key: tuple[str, str], what: str, make: Callable[[], T], opener: Callable[[T], Awaitable[None]]
    ) -> T:
        """The connection ``key`` names: made by ``make()`` on first use (not connected), then shared;
        :meth:`open` runs ``opener(connection)``, :meth:`closers` its ``aclose()``."""
        if key not in self._connections:
            conn = make()
            self._connections[key] = (what, conn, lambda: opener(conn))
        connection: T = self._connections[key][1]
        return connection

    @property
    def connections(self) -> tuple[Any, ...]:
        """The connections of the objects built (NatsConnection / RedisClient / PgPool), open or not."""
        return tuple(conn for _, conn, _ in self._connections.values())

    async def open(self) -> None:
        """Open every connection, in the order the objects needed them (idempotent while open).

        Raises:
            BackendUnavailableError: a server cannot be reached.
            ConfigurationError: a server refused the credentials or the configuration.
            UnsupportedServerError: a server is older than a part on it needs.
        """
        for what, conn, open_ in self._connections.values():
            if all(c is not conn for _, c in self._opened):
                await open_()
                self._opened.append((what, conn))

    async def opened(self, role: str, spec: BackendUrl) -> Any:
        """Build the ``role`` ``spec`` names and open it, outside an app (``catga dlq``, ``catga tail``):
        :meth:`closers` closes it and what was built with it (a transport's dead-letter queue)."""
        before = len(self.built)
        obj = self.build(role, spec)
        await self.open()
        self._opened += [(f"{type(o).__name__} {spec}", o) for o in self.built[before:]]
        return obj

    async def worker_id_lock(self) -> tuple[str, Any] | None:
        """``(description, lock)`` to lease worker ids through, on the connection of the first URL whose
        backend offers one, lowest ``LOCK_RANK`` first (NATS and Redis, then PostgreSQL, table
        ``catga_locks``); None if none does. Call it after :meth:`open`; closed by :meth:`closers`.

        Raises:
            ConfigurationError: PostgreSQL refused to create ``catga_locks``; says what to do instead.
            BackendUnavailableError, BackendTimeoutError: the server failed.
        """
        specs = sorted(self._specs, key=lambda s: getattr(_opener(s.backend), "LOCK_RANK", 0))
        for spec in specs:
            builder = getattr(_opener(spec.backend), "worker_id_lock", None)
            if builder is not None:
                where, lock = await builder(self, spec)
                self._opened.append((f"worker id lock {spec}", lock))
                return where, lock
        return None

    def closers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """``(description, aclose)`` of what :meth:`open` and :meth:`worker_id_lock` opened, last
        opened first; forgets them (the next :meth:`open` opens the connections again)."""
        steps = [(what, obj.aclose) for what, obj in reversed(self._opened)]
        self._opened.clear()
        return steps
