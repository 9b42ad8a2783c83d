"""In-process mediator: send through the default pipeline, bare send, and publish to two handlers.

Cases (each run by ``catga`` and by ``python-cqrs``; the handlers only count calls):

* ``send`` — what an application gets by default. catga: ``catga.App()`` with its default pipeline
  (logging, validation, idempotency, retry) and a **new message id per send**, so idempotency does
  real work (a claim and a stored result per message, never a cache hit). python-cqrs:
  ``bootstrap()`` with its default ``LoggingMiddleware``.
* ``send_bare`` — no behaviors/middleware at all: ``catga.mediator.Mediator(behaviors=[])`` vs
  python-cqrs ``setup_mediator(..., middlewares=[])``.
* ``publish_2_handlers`` — an event with two handlers, each isolated (one failing does not stop the
  other): ``App.publish`` vs python-cqrs ``EventMediator.send`` from ``bootstrap()``.

Both libraries' loggers are at WARNING while measured (see :mod:`._mediator_cqrs` for why).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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

        async def op(worker: int) -> None:
            await send(cmd)

        yield op


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

    async def op(worker: int) -> None:
        await send(cmd)

    yield op


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

        async def op(worker: int) -> None:
            await publish(evt)

        yield op


def _cqrs_factory(kind: str) -> Any:
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
        send = mediator.send
        with peer.quiet_logger():
            before = dict(peer.COUNTS)
            await send(message)
            if peer.COUNTS[key] - before[key] != runs:
                raise BenchError(f"python-cqrs {kind}: the self-check did not run the handler(s)")

            async def op(worker: int) -> None:
                await send(message)

            yield op

    return factory


def cases(env: BenchEnv) -> list[BenchCase]:
    """The mediator cases for catga and python-cqrs."""
    return [
        BenchCase("send", "catga", _catga_send, note="App() default pipeline, new message id per send"),
        BenchCase("send", "python-cqrs", _cqrs_factory("send"), note="bootstrap() default middleware"),
        BenchCase("send_bare", "catga", _catga_send_bare, note="Mediator(behaviors=[])"),
        BenchCase(
            "send_bare", "python-cqrs", _cqrs_factory("send_bare"), note="setup_mediator(middlewares=[])"
        ),
        BenchCase("publish_2_handlers", "catga", _catga_publish, note="App().publish, 2 isolated handlers"),
        BenchCase(
            "publish_2_handlers",
            "python-cqrs",
            _cqrs_factory("publish_2_handlers"),
            note="EventMediator from bootstrap(), 2 handlers",
        ),
    ]
