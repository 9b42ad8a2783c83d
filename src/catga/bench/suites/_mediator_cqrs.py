"""python-cqrs side of the ``mediator`` suite (imported only when its cases run).

Set up as python-cqrs recommends: ``cqrs.bootstrap.requests.bootstrap()`` (which always adds its
``LoggingMiddleware``) for ``send``, the bare ``setup_mediator(..., middlewares=[])`` for
``send_bare``, and ``cqrs.bootstrap.events.bootstrap()`` (an ``EventMediator``) for the publish case.
The handlers are as trivial as catga's: they count calls.

Its logger, as shipped: importing ``cqrs`` sets the ``cqrs`` logger to DEBUG, so the
``LoggingMiddleware`` that ``bootstrap()`` installs builds two log records (and ``request.to_dict()``)
per request even though, with no handler configured, nothing is printed. That is python-cqrs out of
the box, and what the suite's ``python-cqrs`` rows measure. The ``python-cqrs-quiet`` rows run the
same mediators with the ``cqrs`` logger at WARNING (what an application that configures logging
would likely set), so readers see both. catga is always measured at its default: its loggers have no
level of their own and inherit the root logger's WARNING.

Both python-cqrs variants share the one ``cqrs`` logger, and the runner sets up every implementation
of a case before measuring them one after another; so the level is not set for the lifetime of a
set-up but by the operation itself: :func:`at_level` switches the logger when the implementation
being run changes (once per run, during the warm-up), at the cost of one comparison per call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import cqrs
import di
from cqrs.bootstrap import events as ev_boot
from cqrs.bootstrap import requests as req_boot
from cqrs.container.di import DIContainer

__all__ = (
    "COUNTS",
    "SHIPPED_LEVEL",
    "Bump",
    "Bumped",
    "at_level",
    "bare_mediator",
    "event_mediator",
    "request_mediator",
    "restore_level",
)

COUNTS = {"cmd": 0, "ev": 0}

SHIPPED_LEVEL = logging.getLogger("cqrs").level
"""The ``cqrs`` logger's level right after importing python-cqrs (DEBUG: it sets it itself)."""

_current_level: list[int | None] = [None]  # the level at_level() last set, None: not switched yet


class Bump(cqrs.Request):
    """The benchmark command."""

    agg_id: str
    amount: int


class BumpHandler(cqrs.RequestHandler[Bump, None]):
    """Counts the command."""

    @property
    def events(self) -> list[Any]:
        return []

    async def handle(self, request: Bump) -> None:
        COUNTS["cmd"] += 1


class Bumped(cqrs.DomainEvent):
    """The benchmark event."""

    agg_id: str
    amount: int


class BumpedHandler1(cqrs.EventHandler[Bumped]):
    """First event handler: counts."""

    async def handle(self, event: Bumped) -> None:
        COUNTS["ev"] += 1


class BumpedHandler2(cqrs.EventHandler[Bumped]):
    """Second event handler: counts."""

    async def handle(self, event: Bumped) -> None:
        COUNTS["ev"] += 1


def _commands(mapper: Any) -> None:
    mapper.bind(Bump, BumpHandler)


def _events(mapper: Any) -> None:
    mapper.bind(Bumped, BumpedHandler1)
    mapper.bind(Bumped, BumpedHandler2)


def request_mediator() -> Any:
    """The mediator ``cqrs.bootstrap.requests.bootstrap()`` builds (default middleware)."""
    return req_boot.bootstrap(di_container=di.Container(), commands_mapper=_commands)


def bare_mediator() -> Any:
    """A ``RequestMediator`` from ``setup_mediator`` with no middleware."""
    container = DIContainer()
    container.attach_external_container(di.Container())
    emitter = req_boot.setup_event_emitter(container)
    return req_boot.setup_mediator(emitter, container, middlewares=[], commands_mapper=_commands)


def event_mediator() -> Any:
    """The ``EventMediator`` ``cqrs.bootstrap.events.bootstrap()`` builds, two handlers bound."""
    return ev_boot.bootstrap(di_container=di.Container(), events_mapper=_events)


def at_level(level: int, send: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """``send`` run with the ``cqrs`` logger at ``level``, set when the previous call used another.

    Returns the mediator's own awaitable (no wrapper coroutine). Call :func:`restore_level` when done.
    """
    logger = logging.getLogger("cqrs")
    current = _current_level

    def leveled(message: Any) -> Awaitable[Any]:
        if current[0] != level:
            logger.setLevel(level)
            current[0] = level
        return send(message)

    return leveled


def restore_level() -> None:
    """Put the ``cqrs`` logger back at :data:`SHIPPED_LEVEL` after :func:`at_level` switched it."""
    if _current_level[0] is not None:
        logging.getLogger("cqrs").setLevel(SHIPPED_LEVEL)
        _current_level[0] = None
