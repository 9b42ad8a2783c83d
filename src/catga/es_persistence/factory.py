"""The eventsourcing infrastructure factory that puts an application on a catga event store."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from eventsourcing.persistence import (
    InfrastructureFactory,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from catga.errors import BackendError, CatgaError
from catga.es_persistence._loop import LoopThread
from catga.es_persistence.recorders import CatgaAggregateRecorder, CatgaApplicationRecorder, record_registry
from catga.es_persistence.tracking import CatgaProcessRecorder, CatgaTrackingRecorder
from catga.protocols import EventStore, validate_identifier

__all__ = ("Factory", "open_store")

Closer = Callable[[], Awaitable[None]]


async def open_store(
    url: str, *, table: str | None = None, timeout: float = 5.0
) -> tuple[EventStore, Closer]:
    """Open the catga event store ``url`` names for the recorders; return it and its closer.

    Args:
        url: ``memory://``, ``nats://…``, ``redis://…`` (namespace with ``?prefix=``),
            ``postgresql://…`` or ``sqlite:///path/to/file.db``.
        table: the table of a PostgreSQL or SQLite store (default ``catga_events``).
        timeout: seconds for connecting and for each store call.

    Raises:
        ConfigurationError: a bad URL or a missing client library (the message says which).
        BackendUnavailableError: the server cannot be reached.
    """
    registry = record_registry()
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from catga.sqlite import SqliteEventStore

        sqlite = SqliteEventStore(url[len("sqlite://") :], table=table or "catga_events", registry=registry)
        return sqlite, sqlite.aclose
    if scheme in ("postgresql", "postgres"):
        from catga.postgres import PostgresEventStore

        pg = await PostgresEventStore.connect(url, table=table, timeout=timeout, registry=registry)
        return pg, pg.aclose
    from catga.backends import Backends, parse_url

    backends = Backends(name="catga-eventsourcing", registry=registry, timeout=timeout)
    store: EventStore = await backends.opened("store", parse_url(url, "store"))
    closers = backends.closers()

    async def close() -> None:
        for _, step in closers:
            await step()

    return store, close


def _check_url(url: str) -> None:
    """Refuse a bad ``CATGA_STORE_URL`` at construction, without connecting."""
    if url.split("://", 1)[0].lower() in ("sqlite", "postgresql", "postgres"):
        return
    from catga.backends import parse_url

    try:
        parse_url(url, "store")
    except CatgaError as exc:
        raise PersistenceError(f"CATGA_STORE_URL: {type(exc).__name__}: {exc}") from exc


async def _awaited(step: Closer) -> None:
    await step()


class Factory(InfrastructureFactory[CatgaTrackingRecorder]):
    """eventsourcing's infrastructure factory on a catga event store.

    Select it with ``PERSISTENCE_MODULE=catga.es_persistence`` in the application's environment.
    Settings (each may be prefixed with the application's name, as eventsourcing's own are):

    * ``CATGA_STORE_URL``: the store (default ``memory://``); see :func:`open_store`.
    * ``CATGA_STORE_TABLE``: the table of a PostgreSQL or SQLite store (default ``catga_events``).
    * ``CATGA_TIMEOUT``: seconds for connecting and each store call (default 5).
    * ``CATGA_CALL_TIMEOUT``: seconds one recorder call may take in all (default 30).

    The store is opened by the first recorder, on an event-loop thread of its own, and closed by
    :meth:`close` (``Application.close()``); a bad URL is refused at construction. Process recorders
    need a PostgreSQL store.

    Raises:
        PersistenceError: the settings are wrong (the message names the setting); from the first
            recorder, ``OperationalError`` when the store cannot be reached.
    """

    CATGA_STORE_URL = "CATGA_STORE_URL"
    CATGA_STORE_TABLE = "CATGA_STORE_TABLE"
    CATGA_TIMEOUT = "CATGA_TIMEOUT"
    CATGA_CALL_TIMEOUT = "CATGA_CALL_TIMEOUT"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self._url = self.env.get(self.CATGA_STORE_URL) or "memory://"
        _check_url(self._url)
        self._timeout = self._seconds(self.CATGA_TIMEOUT, 5.0)
        self._call_timeout = self._seconds(self.CATGA_CALL_TIMEOUT, 30.0)
        self._lock = threading.Lock()
        self._opened: tuple[LoopThread, EventStore, Closer] | None = None
        self._closed = False

    def _open(self) -> tuple[LoopThread, EventStore]:
        """The loop thread and the store, opened by the first recorder (a factory that only makes a
        mapper, as eventsourcing's followers do, never connects)."""
        with self._lock:
            if self._closed:
                raise ProgrammingError(
                    "the catga infrastructure factory is closed: construct a new application"
                )
            if self._opened is None:
                loop = LoopThread(f"catga-eventsourcing-{self.env.name or 'app'}")
                table = self.env.get(self.CATGA_STORE_TABLE) or None
                try:
                    store, close = loop.run(
                        open_store(self._url, table=table, timeout=self._timeout),
                        self._call_timeout,
                        "opening the catga store",
                    )
                except BaseException as exc:
                    loop.close()
                    if isinstance(exc, BackendError):
                        raise OperationalError(
                            f"{self.CATGA_STORE_URL}: {type(exc).__name__}: {exc}"
                        ) from exc
                    if isinstance(exc, CatgaError):
                        raise PersistenceError(
                            f"{self.CATGA_STORE_URL}: {type(exc).__name__}: {exc}"
                        ) from exc
                    raise
                self._opened = (loop, store, close)
            return self._opened[0], self._opened[1]

    @property
    def _loop(self) -> LoopThread:
        return self._open()[0]

    def _seconds(self, key: str, default: float) -> float:
        value = self.env.get(key)
        if not value:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:
            raise PersistenceError(f"{key} must be a number of seconds above 0, got {value!r}")
        return seconds

    @property
    def store(self) -> EventStore:
        """The catga event store the recorders use (it lives on the factory's loop thread; opened now
        if no recorder has opened it yet)."""
        return self._open()[1]

    @property
    def namespace(self) -> str:
        """Prefixed to every stream id of this factory's recorders: ``<application name>.``, or
        nothing for a factory without a name, so applications sharing one store keep apart.

        Raises:
            PersistenceError: the application name is not a valid catga identifier.
        """
        name = self.env.name
        if not name:
            return ""
        try:
            return validate_identifier(name, "application name") + "."
        except CatgaError as exc:
            raise PersistenceError(f"{exc}: name the application with ASCII letters and digits") from exc

    def aggregate_recorder(self, purpose: str = "events") -> CatgaAggregateRecorder:
        """A recorder of the streams ``<namespace><purpose>.<id>`` (snapshots: ``snapshots``)."""
        return CatgaAggregateRecorder(
            self.store, self._loop, purpose=purpose, namespace=self.namespace, timeout=self._call_timeout
        )

    def application_recorder(self) -> CatgaApplicationRecorder:
        """The application's recorder: the ``events`` streams, and notifications."""
        return CatgaApplicationRecorder(
            self.store, self._loop, purpose="events", namespace=self.namespace, timeout=self._call_timeout
        )

    def tracking_recorder(
        self, tracking_recorder_class: type[CatgaTrackingRecorder] | None = None
    ) -> CatgaTrackingRecorder:
        """A tracking recorder: ``tracking_recorder_class``, else the class the
        ``TRACKING_RECORDER_TOPIC`` setting names, else :class:`CatgaTrackingRecorder`.

        Raises:
            PersistenceError: the class is not a :class:`CatgaTrackingRecorder` subclass.
        """
        cls: Any = tracking_recorder_class
        if cls is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            cls = resolve_topic(topic) if topic else CatgaTrackingRecorder
        if not (isinstance(cls, type) and issubclass(cls, CatgaTrackingRecorder)):
            raise PersistenceError(
                f"{cls!r} is not a CatgaTrackingRecorder subclass: a tracking recorder (or view) on catga's "
                "stores subclasses catga.es_persistence.CatgaTrackingRecorder"
            )
        recorder: CatgaTrackingRecorder = cls(
            self.store, self._loop, namespace=self.namespace, timeout=self._call_timeout
        )
        return recorder

    def process_recorder(self) -> CatgaProcessRecorder:
        """A process recorder: events and the tracking record in one transaction (PostgreSQL only).

        Raises:
            NotSupportedError: the store is not PostgreSQL (it cannot write several streams atomically).
        """
        return CatgaProcessRecorder(
            self.store, self._loop, purpose="events", namespace=self.namespace, timeout=self._call_timeout
        )

    def close(self) -> None:
        """Close the store, then stop the loop thread (idempotent)."""
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, None
        if opened is None:
            return
        loop, _, close = opened
        try:
            loop.run(_awaited(close), self._call_timeout, "closing the catga store")
        finally:
            loop.close()
