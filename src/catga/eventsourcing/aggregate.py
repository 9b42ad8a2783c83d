"""Event-sourced aggregates: state rebuilt by applying events, changes recorded as new events.

An aggregate subclasses :class:`Aggregate`, keeps its state in plain attributes (or in ``self.state``,
see *Snapshots* below) and declares one *apply method* per event type with :func:`applies`::

    class Account(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.balance = 0

        def deposit(self, amount: int) -> None:      # a command method: validate, then raise
            if amount <= 0:
                raise ValidationError("amount must be positive")
            self.raise_event(Deposited(amount))

        @applies(Deposited)                          # an apply method: mutate, never validate
        def _deposited(self, event: Deposited) -> None:
            self.balance += event.amount

Dispatch is resolved once per class in ``__init_subclass__`` into a ``{event type: function}`` table, so
applying an event is one dict lookup and one call. Methods named ``apply_<EventName>`` (the event's wire
name or class name) are the implicit alternative to the decorator; they are resolved on the first event of
each type and cached. An event subclass without its own method uses its nearest base class's method.
Overriding an apply method in a subclass (same method name) replaces it, as in normal Python.

Events may be msgspec Structs, dataclasses or pydantic models: dispatch looks only at ``type(event)``.

Snapshots: :meth:`Aggregate.snapshot_state` / :meth:`Aggregate.restore_snapshot` default to the
``self.state`` attribute when it holds a msgspec Struct, a dataclass or a pydantic model (initialised in
``__init__``): it is encoded as JSON and converted back to the type of the fresh aggregate's
``self.state``. Aggregates with plain attributes override both hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from catga.errors import BackendError, ConfigurationError
from catga.eventsourcing._state import convert, is_record
from catga.messages import type_name
from catga.protocols import StoredEvent

__all__ = ("Aggregate", "applies")

A = TypeVar("A", bound="Aggregate")
F = TypeVar("F", bound=Callable[..., Any])

_APPLIES_ATTR = "__catga_applies__"
_MISSING: Any = object()
_ApplyFn = Callable[[Any, Any], None]


def applies(*event_types: type) -> Callable[[F], F]:
    """Mark an aggregate method as the apply method of one or more event types.

    Args:
        *event_types: the event classes this method applies.

    Returns:
        A decorator that returns the method unchanged (the mapping is read by ``__init_subclass__``).

    Raises:
        ConfigurationError: no event type, or something that is not a class, was given.

    Example:
        >>> class Counter(Aggregate):
        ...     @applies(Incremented)
        ...     def _incremented(self, event: Incremented) -> None:
        ...         self.count += event.by
    """
    if not event_types:
        raise ConfigurationError("@applies() needs at least one event type, e.g. @applies(OrderPlaced)")
    for t in event_types:
        if not isinstance(t, type):
            raise ConfigurationError(f"@applies() takes event classes, got {t!r}")

    def mark(fn: F) -> F:
        previous: tuple[type, ...] = getattr(fn, _APPLIES_ATTR, ())
        setattr(fn, _APPLIES_ATTR, previous + event_types)
        return fn

    return mark


class Aggregate:
    """Base class of event-sourced aggregates.

    Attributes:
        id: the aggregate id (the repository turns it into the stream id ``"<prefix>-<id>"``).
        version: the stream version this object was loaded at or last saved at; ``-1`` for a new
            aggregate. Raising events does not change it; a successful save does.
        ignore_unknown_events: class option; when True an event with no apply method is ignored instead
            of raising :class:`~catga.errors.ConfigurationError` (useful for retired event types).
        snapshot_version: class option; the schema version of :meth:`snapshot_state`'s output. Bump it
            when the state's shape changes: snapshots of another version are ignored (full replay).

    Subclasses must be constructible as ``cls(id)`` (or give the repository a ``factory``) and call
    ``super().__init__(id)``.
    """

    ignore_unknown_events: ClassVar[bool] = False
    snapshot_version: ClassVar[int] = 1

    _catga_apply_names: ClassVar[dict[type, str]] = {}
    _catga_handlers: ClassVar[dict[type, _ApplyFn | None]] = {}
    _catga_named: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: dict[type, str] = {}
        named: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # bases first, so subclasses win
            for attr, value in vars(klass).items():
                event_types = getattr(value, _APPLIES_ATTR, None)
                if event_types:
                    for et in event_types:
                        names[et] = attr
                if attr.startswith("apply_") and callable(value) and len(attr) > len("apply_"):
                    named[attr[len("apply_") :]] = attr
        cls._catga_apply_names = names
        cls._catga_named = named
        # Resolve names through getattr so that overriding a method by name replaces it.
        cls._catga_handlers = {et: getattr(cls, attr) for et, attr in names.items()}

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = -1
        self._uncommitted: list[object] = []

    # -- applying -----------------------------------------------------------------------------------

    def _apply(self, event: object) -> None:
        """Apply one event to the state (dispatch by ``type(event)``)."""
        handler = self._catga_handlers.get(type(event), _MISSING)
        if handler is _MISSING:
            handler = type(self)._resolve(type(event))
        if handler is None:
            if self.ignore_unknown_events:
                return
            raise ConfigurationError(
                f"{type(self).__qualname__} has no apply method for event {type(event).__qualname__}; "
                f"add a method decorated with @applies({type(event).__name__}) or named "
                f"apply_{type(event).__name__}, or set ignore_unknown_events = True"
            )
        handler(self, event)

    @classmethod
    def _resolve(cls, event_type: type) -> _ApplyFn | None:
        """Slow path for an event type not in the table: ``apply_<Name>``, then base classes; cached."""
        handler: _ApplyFn | None = None
        attr = cls._catga_named.get(type_name(event_type)) or cls._catga_named.get(event_type.__name__)
        if attr is not None:
            handler = getattr(cls, attr)
        else:
            for base in event_type.__mro__[1:]:
                attr = cls._catga_apply_names.get(base)
                if attr is not None:
                    handler = getattr(cls, attr)
                    break
        table = dict(cls._catga_handlers)  # copy-on-write: readers never see a dict being resized
        table[event_type] = handler
        cls._catga_handlers = table
        return handler

    def raise_event(self, event: object) -> None:
        """Apply a new event and record it as uncommitted (to be appended by the repository).

        The event is recorded only if applying it succeeds.

        Raises:
            ConfigurationError: the aggregate has no apply method for the event's type.
        """
        self._apply(event)
        self._uncommitted.append(event)

    @property
    def uncommitted_events(self) -> tuple[object, ...]:
        """Events raised since the last load or save, oldest first."""
        return tuple(self._uncommitted)

    def mark_committed(self, version: int | None = None) -> None:
        """Forget the uncommitted events after they were stored.

        Args:
            version: the stream version the store returned; default ``version + len(uncommitted)``.
        """
        self.version = self.version + len(self._uncommitted) if version is None else version
        self._uncommitted.clear()

    def load_from_history(self, events: Iterable[object]) -> None:
        """Apply past events without recording them.

        Args:
            events: :class:`~catga.protocols.StoredEvent` records (their ``data`` is applied and their
                ``version`` becomes the aggregate's version) or bare event objects (each adds 1 to the
                version).

        Raises:
            ConfigurationError: there are uncommitted events (history goes before new changes).
            BackendError: stored versions are not contiguous with the aggregate's version.
        """
        if self._uncommitted:
            raise ConfigurationError(
                f"aggregate {self.id!r} has {len(self._uncommitted)} uncommitted events; "
                "load history before raising new events"
            )
        handlers = self._catga_handlers
        version = self.version
        try:
            for item in events:
                if isinstance(item, StoredEvent):
                    if item.version != version + 1:
                        raise BackendError(
                            f"stream {item.stream_id!r} jumps from version {version} to {item.version} "
                            f"while loading aggregate {self.id!r}; the event store returned a gap",
                            backend="event store",
                        )
                    data = item.data
                else:
                    data = item
                handler = handlers.get(type(data))
                if handler is None:  # not resolved yet, or no method: the slow path decides
                    self._apply(data)
                    handlers = self._catga_handlers
                else:
                    handler(self, data)
                version += 1
        finally:
            self.version = version

    @classmethod
    def from_events(cls: type[A], id: str, events: Iterable[object]) -> A:
        """Build an aggregate from its history (``cls(id)``, then :meth:`load_from_history`)."""
        aggregate = cls(id)
        aggregate.load_from_history(events)
        return aggregate

    # -- snapshots ----------------------------------------------------------------------------------

    def snapshot_state(self) -> Any:
        """The state to snapshot: any value msgspec can encode as JSON (pydantic models too).

        The default returns ``self.state`` when it is a msgspec Struct, a dataclass or a pydantic model.

        Raises:
            ConfigurationError: there is no such ``state``; override this and :meth:`restore_snapshot`.
        """
        state = getattr(self, "state", _MISSING)
        if state is _MISSING or not is_record(state):
            raise ConfigurationError(
                f"{type(self).__qualname__} cannot be snapshotted: keep its state in self.state "
                "(a msgspec Struct, dataclass or pydantic model) or override snapshot_state() and "
                "restore_snapshot()"
            )
        return state

    def restore_snapshot(self, state: Any) -> None:
        """Restore the state from a snapshot, on a fresh aggregate made by ``cls(id)``.

        Args:
            state: the value :meth:`snapshot_state` returned, as plain JSON data (dicts, lists, str,
                numbers...). The default converts it to the type of the fresh ``self.state``.

        Raises:
            ConfigurationError: there is no ``self.state`` to take the type from.
            SerializationError: the data does not fit that type.
        """
        current = getattr(self, "state", _MISSING)
        if current is _MISSING or not is_record(current):
            raise ConfigurationError(
                f"{type(self).__qualname__} cannot restore a snapshot: initialise self.state in "
                "__init__ or override restore_snapshot()"
            )
        self.state = convert(state, type(current))

    def __repr__(self) -> str:
        pending = f", uncommitted={len(self._uncommitted)}" if self._uncommitted else ""
        return f"<{type(self).__qualname__} id={self.id!r} version={self.version}{pending}>"
