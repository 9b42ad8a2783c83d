"""In-process mediator: send through the default pipeline, bare send, and publish to two handlers.

Cases (each run by ``catga``, ``python-cqrs`` and ``python-cqrs-quiet``; the handlers only count
calls):

* ``send`` — what an application gets by default. catga: ``catga.App()`` with its default pipeline
  (logging, validation, idempotency, retry) and a **new message id per send**, so idempotency does
  real work (a claim and a stored result per message, never a cache hit). python-cqrs:
  ``bootstrap()`` with its default ``LoggingMiddleware``.
* ``send_bare`` — no behaviors/middleware at all: ``catga.mediator.Mediator(behaviors=[])`` vs
  python-cqrs ``setup_mediator(..., middlewares=[])``.
* ``publish_2_handlers`` — an event with two handlers, each isolated (one failing does not stop the
  other): ``App.publish`` vs python-cqrs ``EventMediator.send`` from ``bootstrap()``.

Logging: both libraries are measured out of the box. catga's loggers keep their default (no level of
their own: the root logger's WARNING), so its logging behavior costs one cached level check per
message. ``python-cqrs`` is python-cqrs as shipped: importing it sets its ``cqrs`` logger to DEBUG, so
its ``LoggingMiddleware`` builds two log records per request (nothing is printed: no handler is
configured). ``python-cqrs-quiet`` is the same setup with the ``cqrs`` logger at WARNING while measured,
the level an application that configures logging would likely choose; that removes most of its
middleware's cost. Both share python-cqrs's one logger, so each sets it from its own operation when
the implementation being measured changes (see :mod:`._mediator_cqrs`).

The operation handed to the harness returns the library's own awaitable (``lambda w: send(msg)``, for
every implementation alike), so no wrapper coroutine is timed along with the mediator.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Command, Event

__all__ = ("SUITE", "Bump", "Bumped", "cases")

SUITE = "mediator"

_COUNTS = {"cmd": 0, "ev": 0}


@dataclass(frozen=True)
class Bump(Command[None]):
    """The benchmark command (catga side)."""

    agg_id: str
    amount: int


@dataclass(frozen=True)
class Bumped(Event):
    """The benchmark event (catga side)."""

    agg_id: str
    amount: int


async def _on_bump(cmd: Bump) -> None:
    _COUNTS["cmd"] += 1


async def _on_bumped_1(event: Bumped) -> None:
    _COUNTS["ev"] += 1


async def _on_bumped_2(event: Bumped) -> None:
    _COUNTS["ev"] += 1


def _check_ran(before: dict[str, int], key: str, expected: int, impl: str, case: str) -> None:
    ran = _COUNTS[key] - before[key]
    if ran != expected:
        raise BenchError(f"{impl} {case}: expected {expected} handler run(s) in the self-check, saw {ran}")


def _check_result(result: Any, impl: str, case: str) -> None:
    ok = getattr(result, "ok", True)
    if not ok:
        raise BenchError(f"{impl} {case}: the self-check send failed: {getattr(result, 'error', result)!r}")


def _calling(send: Callable[[Any], Awaitable[Any]], message: Any) -> Op:
    """The operation ``send(message)``: returns the library's awaitable itself, no wrapper coroutine."""

    def op(worker: int) -> Awaitable[Any]:
        return send(message)

    return op


@asynccontextmanager
async def _catga_send(env: BenchEnv) -> AsyncIterator[Op]:
    import catga

    app = catga.App()
    app.handler(_on_bump)
    cmd = Bump("a1", 1)
    async with app:
        send = app.send
        before = dict(_COUNTS)
        _check_result(await send(cmd), "catga", "send")
        _check_result(await send(cmd), "catga", "send")  # same message object, new message id: runs again
        _check_ran(before, "cmd", 2, "catga", "send")
        yield _calling(send, cmd)


@asynccontextmanager
async def _catga_send_bare(env: BenchEnv) -> AsyncIterator[Op]:
    from catga.mediator import Mediator

    mediator = Mediator(behaviors=[])
    mediator.register(_on_bump)
    cmd = Bump("a1", 1)
    send = mediator.send
    before = dict(_COUNTS)
    _check_result(await send(cmd), "catga", "send_bare")
    _check_ran(before, "cmd", 1, "catga", "send_bare")
    yield _calling(send, cmd)


@asynccontextmanager
async def _catga_publish(env: BenchEnv) -> AsyncIterator[Op]:
    import catga

    app = catga.App()
    app.handler(_on_bumped_1)
    app.handler(_on_bumped_2)
    evt = Bumped("a1", 1)
    async with app:
        publish = app.publish
        before = dict(_COUNTS)
        await publish(evt)
        _check_ran(before, "ev", 2, "catga", "publish_2_handlers")
        yield _calling(publish, evt)


def _cqrs_factory(kind: str, impl: str) -> Any:
    @asynccontextmanager
    async def factory(env: BenchEnv) -> AsyncIterator[Op]:
        from catga.bench.suites import _mediator_cqrs as peer

        if kind == "publish_2_handlers":
            mediator = peer.event_mediator()
            message: Any = peer.Bumped(agg_id="a1", amount=1)
            key, runs = "ev", 2
        else:
            mediator = peer.request_mediator() if kind == "send" else peer.bare_mediator()
            message = peer.Bump(agg_id="a1", amount=1)
            key, runs = "cmd", 1
        # Every implementation of a case is set up before any is measured, and both python-cqrs
        # variants share its logger: the operation itself puts the logger at its level.
        send = peer.at_level(logging.WARNING if impl == _CQRS_QUIET else peer.SHIPPED_LEVEL, mediator.send)
        try:
            before = dict(peer.COUNTS)
            await send(message)
            if peer.COUNTS[key] - before[key] != runs:
                raise BenchError(f"{impl} {kind}: the self-check did not run the handler(s)")
            yield _calling(send, message)
        finally:
            peer.restore_level()

    return factory


_CQRS = "python-cqrs"
_CQRS_QUIET = "python-cqrs-quiet"
_AS_SHIPPED = "logger as shipped (cqrs at DEBUG)"
_QUIET = "cqrs logger at WARNING"


def cases(env: BenchEnv) -> list[BenchCase]:
    """The mediator cases for catga, python-cqrs as shipped, and python-cqrs with a quiet logger."""
    peers = [(_CQRS, _AS_SHIPPED), (_CQRS_QUIET, _QUIET)]
    setups = {
        "send": "bootstrap() default middleware",
        "send_bare": "setup_mediator(middlewares=[])",
        "publish_2_handlers": "EventMediator from bootstrap(), 2 handlers",
    }
    catga_cases = {
        "send": (_catga_send, "App() default pipeline, new message id per send, default logging"),
        "send_bare": (_catga_send_bare, "Mediator(behaviors=[])"),
        "publish_2_handlers": (_catga_publish, "App().publish, 2 isolated handlers"),
    }
    out: list[BenchCase] = []
    for kind, setup in setups.items():
        factory, note = catga_cases[kind]
        out.append(BenchCase(kind, "catga", factory, note=note))
        out.extend(
            BenchCase(kind, impl, _cqrs_factory(kind, impl), note=f"{setup}, {logging}")
            for impl, logging in peers
        )
    return out
