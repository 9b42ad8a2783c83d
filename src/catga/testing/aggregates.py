"""Given / when / then for event-sourced aggregates, with no store and no event loop.

::

    from catga.testing import given

    def test_shipping_a_placed_order() -> None:
        given(Order, OrderPlaced("o-1", 42), id="o-1").when(lambda o: o.ship()).then(OrderShipped("o-1"))

    def test_an_order_ships_once() -> None:
        outcome = given(Order, OrderPlaced("o-1", 42), OrderShipped("o-1")).when(lambda o: o.ship())
        outcome.then_raises(ConflictError, match="already shipped")

* **given** builds the aggregate from its history (``Aggregate.from_events``: every event applied,
  nothing uncommitted);
* **when** calls the command method; an exception is kept for ``then_raises``, never swallowed: every
  other ``then`` re-raises it as the reason of the failure;
* **then** compares the events the command raised with the expected ones, in order, by ``==``
  (dataclasses, msgspec Structs and pydantic models compare by value), and returns the aggregate for
  further checks on its state.

A failed expectation raises :class:`AssertionError` listing expected and raised events side by side,
so it reads well under pytest and plain ``unittest`` alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from catga.eventsourcing.aggregate import Aggregate

__all__ = ("AggregateOutcome", "AggregateScenario", "given")

A = TypeVar("A", bound=Aggregate)
E = TypeVar("E", bound=BaseException)


def given(
    aggregate_type: type[A],
    *history: object,
    id: str = "test-aggregate",
    factory: Callable[[str], A] | None = None,
) -> AggregateScenario[A]:
    """Start a scenario: an aggregate of ``aggregate_type`` with ``history`` applied.

    Args:
        aggregate_type: the :class:`~catga.eventsourcing.Aggregate` subclass.
        *history: past events, oldest first (none: a new aggregate).
        id: the aggregate id.
        factory: builds the empty aggregate from its id (default ``aggregate_type(id)``), for
            aggregates whose constructor takes more.
    """
    aggregate = aggregate_type(id) if factory is None else factory(id)
    aggregate.load_from_history(history)
    return AggregateScenario(aggregate)


class AggregateScenario(Generic[A]):
    """An aggregate with its history applied, waiting for a command (see :func:`given`).

    Attributes:
        aggregate: the aggregate (version = number of history events - 1).
    """

    def __init__(self, aggregate: A) -> None:
        self.aggregate = aggregate

    def when(self, command: Callable[[A], object]) -> AggregateOutcome[A]:
        """Run ``command(aggregate)`` (e.g. ``lambda order: order.ship()``) and keep what it did."""
        error: BaseException | None = None
        try:
            command(self.aggregate)
        except Exception as exc:  # kept for then_raises; every other expectation re-raises it
            error = exc
        return AggregateOutcome(self.aggregate, error)


class AggregateOutcome(Generic[A]):
    """What a command did to an aggregate: the events it raised, or the exception.

    Attributes:
        aggregate: the aggregate after the command.
        error: the exception the command raised, or None.
    """

    def __init__(self, aggregate: A, error: BaseException | None) -> None:
        self.aggregate = aggregate
        self.error = error

    @property
    def events(self) -> tuple[object, ...]:
        """The events the command raised (the aggregate's uncommitted events), oldest first."""
        return self.aggregate.uncommitted_events

    def then(self, *expected: object) -> A:
        """Expect the command to succeed and raise exactly ``expected``, in order.

        Returns:
            the aggregate, to check its state.

        Raises:
            AssertionError: the command raised an exception (chained as the cause), or other events.
        """
        self._no_error(f"events {_listing(expected)}")
        if tuple(self.events) != tuple(expected):
            raise AssertionError(
                f"{_name(self.aggregate)} raised other events than expected\n"
                f"expected: {_listing(expected)}\nraised:   {_listing(self.events)}"
            )
        return self.aggregate

    def then_nothing(self) -> A:
        """Expect the command to succeed and raise no event (an idempotent command, say)."""
        return self.then()

    def then_raises(self, error_type: type[E], *, match: str | None = None) -> E:
        """Expect the command to raise ``error_type`` (and ``match``, a regex searched in its message).

        Returns:
            the exception, to check its attributes.

        Raises:
            AssertionError: it succeeded (the events it raised are listed) or raised something else.
        """
        error = self.error
        if error is None:
            raise AssertionError(
                f"{_name(self.aggregate)}: expected {error_type.__name__}, but the command succeeded "
                f"and raised events {_listing(self.events)}"
            )
        if not isinstance(error, error_type):
            raise AssertionError(
                f"{_name(self.aggregate)}: expected {error_type.__name__}, "
                f"got {type(error).__name__}: {error}"
            ) from error
        if match is not None and re.search(match, str(error)) is None:
            raise AssertionError(
                f"{_name(self.aggregate)}: {type(error).__name__} message {str(error)!r} "
                f"does not match {match!r}"
            ) from error
        return error

    def _no_error(self, wanted: str) -> None:
        if self.error is not None:
            raise AssertionError(
                f"{_name(self.aggregate)}: expected {wanted}, but the command raised "
                f"{type(self.error).__name__}: {self.error}"
            ) from self.error


def _name(aggregate: Aggregate) -> str:
    return f"{type(aggregate).__qualname__} {aggregate.id!r}"


def _listing(events: tuple[Any, ...]) -> str:
    return "(none)" if not events else "[" + ", ".join(repr(e) for e in events) + "]"
