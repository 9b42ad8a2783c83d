"""python-cqrs side of the ``mediator`` suite (imported only when its cases run).

Set up as python-cqrs recommends: ``cqrs.bootstrap.requests.bootstrap()`` (which always adds its
``LoggingMiddleware``) for ``send``, the bare ``setup_mediator(..., middlewares=[])`` for
``send_bare``, and ``cqrs.bootstrap.events.bootstrap()`` (an ``EventMediator``) for the publish case.
The handlers are as trivial as catga's: they count calls.

python-cqrs sets its ``cqrs`` logger to DEBUG when some of its modules are imported, so its logging
middleware builds a log record (and ``request.to_dict()``) per message even when nothing is printed.
The suite sets that logger to WARNING while it runs — the level an application would configure, and
the level catga's logger has by default — so the comparison measures the mediators, not a logging
side effect (this favours python-cqrs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cqrs
import di
from cqrs.bootstrap import events as ev_boot
from cqrs.bootstrap import requests as req_boot
from cqrs.container.di import DIContainer

__all__ = (
    "COUNTS",
    "Bump",
    "Bumped",
    "bare_mediator",
    "event_mediator",
    "quiet_logger",
    "request_mediator",
)

COUNTS = {"cmd": 0, "ev": 0}


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


@contextmanager
def quiet_logger(level: int = logging.WARNING) -> Iterator[None]:
    """Set python-cqrs's ``cqrs`` logger to ``level`` for the duration, then restore it."""
    logger = logging.getLogger("cqrs")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
