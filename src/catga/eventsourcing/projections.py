"""Projections: read models built from the global event stream, with resumable checkpoints.

A :class:`Projection` declares handlers per event type with :func:`handles`. A :class:`ProjectionRunner`
feeds it every stored event in global position order: first it *catches up* with
:meth:`~catga.protocols.EventStore.read_all` in batches from the checkpoint + 1 (saving the checkpoint after
each batch), then it goes *live* with :meth:`~catga.protocols.EventStore.subscribe_all` (saving the
checkpoint after each event). Restarted with the same name and checkpoint store, it continues after the
last checkpoint.

Delivery to the projection is **at-least-once**: a crash (or a forced stop) between handling an event and
saving the checkpoint replays that event on restart. Write idempotent projections: upserts keyed by
stream id, or remember ``stored.position`` with the read model and ignore older positions.

A handler that raises stops the runner (events are never skipped silently): the error is logged with the
event's stream, version and position, the checkpoint stays at the last handled event, and
:meth:`ProjectionRunner.run` re-raises it. Fix the cause and start the runner again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from catga.errors import CatgaError, ConfigurationError, OperationTimeoutError
from catga.eventsourcing.checkpoints import CheckpointStore
from catga.protocols import EventStore, StoredEvent, validate_identifier

__all__ = ("Projection", "ProjectionRunner", "handles")

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("catga.eventsourcing")

_HANDLES_ATTR = "__catga_handles__"
_MISSING: Any = object()
# (function, awaitable?, takes the StoredEvent as second argument?)
_Handler = tuple[Callable[..., Any], bool, bool]


def handles(*event_types: type) -> Callable[[F], F]:
    """Mark a projection method as the handler of one or more event types.

    The method is ``def``/``async def`` taking ``(self, event)`` or ``(self, event, stored)`` where
    ``stored`` is the :class:`~catga.protocols.StoredEvent` (stream id, version, position, metadata).

    Raises:
        ConfigurationError: no event type, or something that is not a class, was given.
    """
    if not event_types:
        raise ConfigurationError("@handles() needs at least one event type, e.g. @handles(OrderPlaced)")
    for t in event_types:
        if not isinstance(t, type):
            raise ConfigurationError(f"@handles() takes event classes, got {t!r}")

    def mark(fn: F) -> F:
        previous: tuple[type, ...] = getattr(fn, _HANDLES_ATTR, ())
        setattr(fn, _HANDLES_ATTR, previous + event_types)
        return fn

    return mark


class Projection:
    """Base class of projections. Events without a handler are ignored.

    Handlers are resolved once per class (``__init_subclass__``); an event subclass without its own
    handler uses its nearest base class's handler.
    """

    _catga_handlers: ClassVar[dict[type, _Handler | None]] = {}
    _catga_names: ClassVar[dict[type, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: dict[type, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for et in getattr(value, _HANDLES_ATTR, ()):
                    names[et] = attr
        cls._catga_names = names
        cls._catga_handlers = {et: _describe(cls, attr) for et, attr in names.items()}

    @classmethod
    def _resolve(cls, event_type: type) -> _Handler | None:
        handler: _Handler | None = None
        for base in event_type.__mro__[1:]:
            attr = cls._catga_names.get(base)
            if attr is not None:
                handler = _describe(cls, attr)
                break
        table = dict(cls._catga_handlers)
        table[event_type] = handler
        cls._catga_handlers = table
        return handler

    async def handle(self, stored: StoredEvent) -> None:
        """Dispatch one stored event to its handler (override for custom routing)."""
        event = stored.data
        handler = self._catga_handlers.get(type(event), _MISSING)
        if handler is _MISSING:
            handler = type(self)._resolve(type(event))
        if handler is None:
            return
        fn, is_async, with_stored = handler
        result = fn(self, event, stored) if with_stored else fn(self, event)
        if is_async:
            await result

    async def flush(self) -> None:
        """Called before each checkpoint save: write buffered changes here. Default: nothing."""


def _describe(cls: type, attr: str) -> _Handler:
    fn = getattr(cls, attr)
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) not in (2, 3):
        raise ConfigurationError(
            f"projection handler {cls.__qualname__}.{attr} must take (self, event) or "
            f"(self, event, stored), not {len(params)} positional parameters"
        )
    return fn, inspect.iscoroutinefunction(fn), len(params) == 3


class ProjectionRunner:
    """Feeds a projection from an event store: catch-up in batches, then live, with checkpoints.

    Args:
        store: any :class:`~catga.protocols.EventStore`.
        projection: the projection to feed.
        checkpoints: where the last handled position is saved.
        name: the checkpoint name (one per projection); a valid identifier.
        batch_size: events per ``read_all`` call while catching up.

    Attributes:
        position: global position of the last handled event (the checkpoint once saved).
        live: True once caught up and following ``subscribe_all``.
        error: the handler (or store) error that stopped the runner, if any.

    Example:
        >>> runner = ProjectionRunner(store, BalanceView(), MemoryCheckpointStore(), "balances")
        >>> async with runner:              # start() ... stop()
        ...     await runner.wait_for_position(await last_position())
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        checkpoints: CheckpointStore,
        name: str,
        *,
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.projection = projection
        self.checkpoints = checkpoints
        self.name = validate_identifier(name, "projection name")
        self.batch_size = batch_size
        self.position = 0
        self.live = False
        self.error: BaseException | None = None
        self._saved = 0
        self._task: asyncio.Task[Any] | None = None
        self._own_task: asyncio.Task[None] | None = None
        self._running = False
        self._stopping = False
        self._waiting = False
        self._stop_cancelled = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._live_waiters: list[asyncio.Future[None]] = []
        self._finished_runs = 0

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is in progress."""
        return self._running

    async def run(self) -> None:
        """Catch up from the checkpoint, then follow new events until :meth:`stop` (or the store ends).

        Raises:
            ConfigurationError: the runner is already running.
            Exception: whatever a projection handler or the store raised (the runner stops).
        """
        if self._running:
            raise ConfigurationError(f"projection runner {self.name!r} is already running")
        self._running = True
        self.error = None
        task = self._task = asyncio.current_task()
        try:
            self.position = self._saved = await self.checkpoints.get(self.name)
            self._notify()
            await self._catch_up()
            if not self._stopping:
                await self._follow()
        except asyncio.CancelledError:
            if self._stop_cancelled and task is not None and task.uncancel() == 0:
                return  # our own interruption of an idle wait (see stop())
            raise
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self._running = self._waiting = self._stopping = self._stop_cancelled = False
            self._task = None
            self._finished_runs += 1
            self._fail_waiters()

    async def _catch_up(self) -> None:
        while not self._stopping:
            batch = await self.store.read_all(self.position + 1, self.batch_size)
            if not batch:
                return
            try:
                await self._handle_all(batch)
            except Exception:
                await self._checkpoint_after_error()
                raise
            await self._checkpoint()
            if len(batch) < self.batch_size:
                return

    async def _handle_all(self, batch: Sequence[StoredEvent]) -> None:
        for stored in batch:
            await self._handle(stored)
            if self._stopping:
                return

    async def _handle(self, stored: StoredEvent) -> None:
        if stored.position <= self.position:
            return  # already handled (a store may replay the checkpoint's event)
        try:
            await self.projection.handle(stored)
        except Exception:
            logger.exception(
                "projection %r failed on event %s (stream %r, version %d, position %d); stopping",
                self.name,
                stored.type_name,
                stored.stream_id,
                stored.version,
                stored.position,
            )
            raise
        self.position = stored.position
        if self._waiters:
            self._notify()

    async def _follow(self) -> None:
        events: AsyncIterator[StoredEvent] = self.store.subscribe_all(self.position + 1)
        self.live = True
        live_waiters, self._live_waiters = self._live_waiters, []
        for future in live_waiters:
            if not future.done():
                future.set_result(None)
        try:
            while not self._stopping:
                self._waiting = True
                try:
                    stored = await anext(events)
                except StopAsyncIteration:
                    return
                finally:
                    self._waiting = False
                try:
                    await self._handle(stored)
                except Exception:
                    await self._checkpoint_after_error()
                    raise
                await self._checkpoint()
        finally:
            self.live = False
            close: Callable[[], Awaitable[None]] | None = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _checkpoint(self) -> None:
        if self.position == self._saved:
            return
        await self.projection.flush()
        await self.checkpoints.save(self.name, self.position)
        self._saved = self.position

    async def _checkpoint_after_error(self) -> None:
        try:
            await self._checkpoint()  # keep the events handled before the failure
        except Exception:
            logger.exception("projection %r: saving checkpoint %d failed", self.name, self.position)

    # -- control ------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run in a background task owned by this runner; :meth:`stop` or :meth:`aclose` ends it."""
        if self._own_task is not None and not self._own_task.done():
            raise ConfigurationError(f"projection runner {self.name!r} is already started")
        self._own_task = asyncio.create_task(self.run(), name=f"catga-projection-{self.name}")
        return self._own_task

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop after the event in hand is handled and checkpointed; idle waits are interrupted at once.

        After ``timeout`` seconds the run is cancelled (the event in hand is then replayed on restart).
        Errors of the run are not raised here: see :attr:`error` (they were logged when they happened).
        When :meth:`run` is awaited by a task of yours, this only signals it: await that task.
        """
        own = self._own_task
        if not self._running and (own is None or own.done()):
            self._own_task = None
            return
        self._stopping = True
        task = self._task
        if task is not None and self._waiting:
            self._stop_cancelled = True
            task.cancel()
        if own is None:
            return
        done, _ = await asyncio.wait({own}, timeout=timeout)
        if not done:
            self._stop_cancelled = True
            own.cancel()
            await asyncio.wait({own})
        self._own_task = None
        if not own.cancelled():
            own.exception()  # retrieved: recorded in self.error and logged already

    async def aclose(self) -> None:
        """Stop the runner (see :meth:`stop`). Idempotent."""
        await self.stop()

    async def __aenter__(self) -> ProjectionRunner:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- waiting ------------------------------------------------------------------------------------

    async def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        """Wait until the projection has handled every event up to global ``position``.

        Raises:
            OperationTimeoutError: not reached within ``timeout`` seconds.
            CatgaError: the runner stopped (or failed) before reaching it, or has already stopped.
        """
        if self.position >= position:
            return
        own = self._own_task
        if self._finished_runs and not self._running and (own is None or own.done()):
            raise self._stopped_error(position)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (position, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise OperationTimeoutError(
                f"projection {self.name!r} reaching position {position} (at {self.position})", timeout
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_until_live(self, timeout: float = 10.0) -> None:
        """Wait until the runner has caught up and follows new events live.

        Raises:
            OperationTimeoutError: not live within ``timeout`` seconds.
            CatgaError: the runner stopped (or failed) before going live, or has already stopped.
        """
        if self.live:
            return
        own = self._own_task
        if self._finished_runs and not self._running and (own is None or own.done()):
            raise self._stopped_error(None)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._live_waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise OperationTimeoutError(f"projection {self.name!r} going live", timeout) from None
        finally:
            if future in self._live_waiters:
                self._live_waiters.remove(future)

    def _notify(self) -> None:
        position = self.position
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if target <= position:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for target, future in waiters:
            if not future.done():
                future.set_exception(self._stopped_error(target))
        live_waiters, self._live_waiters = self._live_waiters, []
        for future in live_waiters:
            if not future.done():
                future.set_exception(self._stopped_error(None))

    def _stopped_error(self, target: int | None) -> CatgaError:
        goal = "going live" if target is None else f"reaching {target}"
        error = CatgaError(
            f"projection runner {self.name!r} stopped at position {self.position} before {goal}"
            + (f": {self.error}" if self.error else "; start it again")
        )
        error.__cause__ = self.error
        return error
