"""The mediator's inline paths: a function handler behind quiet logging, idempotency and retry runs in
``send``'s own frame; the same messages through the composed chain (logging enabled, class handlers)
must give the same results and store the same records."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from catga import App, Command, Context, Event, Mediator, Metadata
from catga.errors import ErrorCode, NotFoundError, RetryableError
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.pipeline import IdempotencyBehavior, LoggingBehavior, RetryBehavior
from catga.result import Result


@dataclass(frozen=True)
class InlineWork(Command[str]):
    text: str


@dataclass(frozen=True)
class InlineFire(Command[None]):
    n: int


@dataclass(frozen=True)
class InlinePing(Event):
    n: int


def _pipeline(logger: logging.Logger, store: MemoryIdempotencyStore, slept: list[float]) -> list[Any]:
    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    return [
        LoggingBehavior(logger),
        IdempotencyBehavior(store),
        RetryBehavior(max_attempts=3, sleep=fake_sleep, random=lambda: 1.0),
    ]


@pytest.fixture(params=["quiet", "logging"])
def logged(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> logging.Logger:
    """The pipeline's logger: quiet (send runs the handler inline) or enabled (the composed chain)."""
    name = f"test.dispatch.{request.param}"
    caplog.set_level(logging.DEBUG if request.param == "logging" else logging.WARNING, logger=name)
    return logging.getLogger(name)


async def test_retries_then_stores_the_outcome_for_duplicates(logged: logging.Logger) -> None:
    store, slept = MemoryIdempotencyStore(), []
    m = Mediator(behaviors=_pipeline(logged, store, slept))
    runs: dict[str, int] = {}

    @m.handler
    async def work(cmd: InlineWork) -> str:
        runs[cmd.text] = runs.get(cmd.text, 0) + 1
        if cmd.text == "down" or runs[cmd.text] < 3:
            raise RetryableError("again")
        return f"{cmd.text} after {runs[cmd.text]}"

    up, down = Metadata(message_id=41), Metadata(message_id=42)
    assert (await m.send(InlineWork("up"), metadata=up)).value == "up after 3"
    assert (await m.send(InlineWork("up"), metadata=up)).value == "up after 3"  # replayed, not rerun
    failed = await m.send(InlineWork("down"), metadata=down)
    assert failed.retryable and failed.code == ErrorCode.RETRYABLE
    assert not (await m.send(InlineWork("down"), metadata=down)).ok  # released: run again
    assert runs == {"up": 3, "down": 6}
    assert slept == [0.05, 0.1] * 3


async def test_business_failures_are_stored_and_unexpected_ones_released(logged: logging.Logger) -> None:
    store, slept = MemoryIdempotencyStore(), []
    m = Mediator(behaviors=_pipeline(logged, store, slept))
    calls: list[str] = []

    @m.handler
    async def work(cmd: InlineWork) -> str:
        calls.append(cmd.text)
        if cmd.text == "missing":
            raise NotFoundError("no such thing")
        if cmd.text == "bug" and calls.count("bug") == 1:
            raise RuntimeError("secret detail")
        return cmd.text

    for text, mid in (("missing", 1), ("bug", 2)):
        first = await m.send(InlineWork(text), metadata=Metadata(message_id=mid))
        second = await m.send(InlineWork(text), metadata=Metadata(message_id=mid))
        if text == "missing":
            assert (first.code, second.code, second.error) == (ErrorCode.NOT_FOUND,) * 2 + ("no such thing",)
        else:
            assert (first.code, first.error) == (ErrorCode.INTERNAL, "internal error")
            assert second.value == "bug"
    assert calls == ["missing", "bug", "bug"]
    assert slept == []


async def test_a_none_result_is_the_shared_success_and_is_replayed(logged: logging.Logger) -> None:
    store, slept = MemoryIdempotencyStore(), []
    m = Mediator(behaviors=_pipeline(logged, store, slept))
    fired: list[int] = []

    @m.handler
    async def fire(cmd: InlineFire, ctx: Context) -> None:
        fired.append(cmd.n)

    md = Metadata(message_id=7)
    first = await m.send(InlineFire(1), metadata=md)
    again = await m.send(InlineFire(1), metadata=md)
    assert first is Result.success(None)
    assert again == Result(True) and again.ok and again.value is None
    assert fired == [1]
    assert (await m.send(InlineFire(2))).ok and fired == [1, 2]  # a new id runs again


async def test_cancellation_releases_the_claim(logged: logging.Logger) -> None:
    store, slept = MemoryIdempotencyStore(), []
    m = Mediator(behaviors=_pipeline(logged, store, slept))
    calls = 0

    @m.handler
    async def work(cmd: InlineWork) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "second"

    md = Metadata(message_id=99)
    task = asyncio.ensure_future(m.send(InlineWork("x"), metadata=md))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await m.send(InlineWork("x"), metadata=md)).value == "second"


async def test_requests_are_logged_only_while_the_logger_is_enabled(caplog: pytest.LogCaptureFixture) -> None:
    name = "test.dispatch.runtime"
    m = Mediator(
        behaviors=[LoggingBehavior(logging.getLogger(name)), IdempotencyBehavior(MemoryIdempotencyStore())]
    )

    @m.handler
    async def work(cmd: InlineWork) -> str:
        return cmd.text.upper()

    with caplog.at_level(logging.WARNING, logger=name):
        assert (await m.send(InlineWork("a"))).value == "A"  # quiet: handled inline, nothing logged
    with caplog.at_level(logging.DEBUG, logger=name):
        assert (await m.send(InlineWork("b"))).value == "B"  # enabled after composition: logged
    with caplog.at_level(logging.WARNING, logger=name):
        assert (await m.send(InlineWork("c"))).value == "C"
    records = [r for r in caplog.records if r.name == name]
    assert [r.getMessage().split()[1] for r in records] == ["InlineWork"]
    assert records[0].catga_ok is True  # type: ignore[attr-defined]


async def test_nested_sends_are_correlated_on_the_inline_path() -> None:
    app = App()
    seen: list[tuple[int, int, int | None]] = []

    @app.handler
    async def outer(cmd: InlineWork, ctx: Context) -> str:
        seen.append((ctx.message_id, ctx.correlation_id, ctx.causation_id))
        inner = await app.send(InlineFire(1))  # through the app, not ctx: found via the context variable
        assert inner.ok
        return "done"

    @app.handler
    async def fire(cmd: InlineFire, ctx: Context) -> None:
        seen.append((ctx.message_id, ctx.correlation_id, ctx.causation_id))

    async with app:
        assert (await app.send(InlineWork("x"))).value == "done"
    (root_id, root_corr, root_cause), (child_id, child_corr, child_cause) = seen
    assert root_corr == root_id and root_cause is None
    assert child_corr == root_id and child_cause == root_id and child_id > root_id


async def test_publish_returns_the_shared_success_and_reports_failures() -> None:
    app = App()
    seen: list[int] = []

    @app.handler
    async def first(e: InlinePing) -> None:
        seen.append(e.n)

    @app.handler
    async def second(e: InlinePing) -> None:
        if e.n < 0:
            raise NotFoundError("negative")
        seen.append(-e.n)

    async with app:
        assert (await app.publish(InlinePing(1))) is Result.success(None)
        failed = await app.publish(InlinePing(-2))
    assert seen == [1, -1, -2]
    assert not failed.ok and failed.code == ErrorCode.NOT_FOUND
    assert [f.handler.rsplit(".", 1)[-1] for f in failed.metadata["failures"]] == ["second"]  # type: ignore[index]
