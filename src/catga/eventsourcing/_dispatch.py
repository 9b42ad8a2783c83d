"""The :class:`Projection` base class and :func:`handles` (what a projection does with each event).

Split from :mod:`catga.eventsourcing.projections` (the runner) to keep each module to one concept;
import both from :mod:`catga.eventsourcing`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol, TypeVar

from catga.errors import ConfigurationError
from catga.protocols import StoredEvent

__all__ = ("Projection", "SaveCheckpoint", "handles")

F = TypeVar("F", bound=Callable[..., Any])

_HANDLES_ATTR = "__catga_handles__"
_MISSING: Any = object()
# (function, awaitable?, takes the StoredEvent as second argument?)
_Handler = tuple[Callable[..., Any], bool, bool]


class SaveCheckpoint(Protocol):
    """Saves the runner's checkpoint; keyword options go to the store's ``save`` (e.g.
    ``connection=conn`` for :class:`~catga.postgres.PostgresCheckpointStore`)."""

    def __call__(self, **options: Any) -> Awaitable[None]: ...


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
        """Called before each checkpoint save (by the default :meth:`commit`): write buffered changes
        here. Default: nothing."""

    async def commit(self, position: int, save: SaveCheckpoint) -> None:
        """Make the events handled so far durable, then save the checkpoint at ``position``.

        The default calls :meth:`flush`, then ``save()``. Override it to commit a read model and its
        checkpoint in **one transaction** (then no event is applied twice, even across a crash or a
        takeover)::

            async def commit(self, position, save):
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.executemany("INSERT INTO totals ...", self.pending)
                    await save(connection=conn)     # PostgresCheckpointStore writes in this transaction
                self.pending.clear()

        ``save`` raises :class:`~catga.errors.StaleFencingTokenError` when another replica took the
        projection over: let it propagate (the transaction rolls back; the runner calls
        :meth:`discard` and stands by).
        """
        await self.flush()
        await save()

    async def discard(self) -> None:
        """Forget changes handled but not committed: the runner lost ownership of the projection (or a
        commit failed), and they will be handled again by whoever owns it. Default: nothing."""

    async def reset(self) -> None:
        """Clear the read model, for :meth:`ProjectionRunner.rebuild` (which then replays every event
        from position 1).

        Raises:
            ConfigurationError: not overridden (the default): a rebuild needs to know how to clear.
        """
        raise ConfigurationError(
            f"{type(self).__qualname__} cannot be rebuilt: override reset() to clear its read model"
        )


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
