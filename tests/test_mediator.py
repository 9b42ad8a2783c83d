"""Mediator: registration, dispatch, batches and streams, fan-out isolation, safe handlers, correlation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import catga
from catga import Command, Context, Event, Mediator, Metadata, Query, Result
from catga.errors import (
    ConfigurationError,
    DuplicateHandlerError,
    ErrorCode,
    HandlerNotFoundError,
    NotFoundError,
    RetryableError,
)
from catga.mediator import HandlerFailure
from preempt import run_preempted


@dataclass(frozen=True)
class Echo(Command[str]):
    text: str


@dataclass(frozen=True)
class Add(Query[int]):
    a: int
    b: int


@dataclass(frozen=True)
class Sleepy(Command[int]):
    n: int
    delay: float = 0.0


@dataclass(frozen=True)
class Happened(Event):
    n: int


@dataclass(frozen=True)
class SpecialHappened(Happened):
    pass


@dataclass(frozen=True)
class Pinged(Event):
    pass


@dataclass(frozen=True)
class Nested(Command[list[int]]):
    depth: int


@dataclass(frozen=True)
class Orphan(Command[None]):
    pass


# -- registration ----------------------------------------------------------------------------------


async def test_function_handler_with_and_without_context() -> None:
    m = Mediator()
    contexts: list[Context] = []

    @m.handler
    async def echo(cmd: Echo, ctx: Context) -> str:
        contexts.append(ctx)
        return cmd.text.upper()

    @m.handler
    async def add(q: Add) -> int:
        return q.a + q.b

    assert (await m.send(Echo("hi"))).value == "HI"
    assert (await m.send(Add(2, 3))).value == 5
    assert isinstance(contexts[0], Context)
    assert echo.__name__ == "echo"  # the decorator returns the function unchanged


async def test_class_handler_is_instantiated_per_message_by_default() -> None:
    m = Mediator()
    instances: list[object] = []

    @m.handler
    class EchoHandler:
        def __init__(self) -> None:
            instances.append(self)

        async def handle(self, cmd: Echo, ctx: Context) -> str:
            return cmd.text * 2

    assert (await m.send(Echo("a"))).value == "aa"
    assert (await m.send(Echo("b"))).value == "bb"
    assert len(instances) == 2 and instances[0] is not instances[1]


async def test_singleton_class_handler_is_instantiated_once() -> None:
    m = Mediator()
    instances: list[object] = []

    class Counter:
        def __init__(self) -> None:
            instances.append(self)
            self.count = 0

        async def handle(self, q: Add) -> int:
            self.count += 1
            return self.count

    m.register(Counter, lifetime="singleton")
    assert [(await m.send(Add(0, 0))).value for _ in range(3)] == [1, 2, 3]
    assert len(instances) == 1


async def test_factory_may_take_the_context_for_per_message_scopes() -> None:
    m = Mediator()
    made: list[int] = []

    class EchoHandler:
        def __init__(self, scope: int) -> None:
            self.scope = scope

        async def handle(self, cmd: Echo, ctx: Context) -> str:
            return f"{cmd.text}@{self.scope == ctx.message_id}"

    def factory(ctx: Context) -> EchoHandler:
        made.append(ctx.message_id)
        return EchoHandler(ctx.message_id)

    m.register(EchoHandler, factory=factory)
    assert (await m.send(Echo("x"))).value == "x@True"
    assert (await m.send(Echo("y"))).value == "y@True"
    assert len(set(made)) == 2

    m2 = Mediator()
    m2.register(EchoHandler, factory=lambda: EchoHandler(7))
    assert (await m2.send(Echo("z"))).value == "z@False"


async def test_an_instance_registers_as_a_singleton_with_its_compensate_hook() -> None:
    m = Mediator()
    undone: list[str] = []

    class Failing:
        async def handle(self, cmd: Echo) -> str:
            raise NotFoundError(f"no {cmd.text}")

        async def compensate(self, cmd: Echo, ctx: Context, exc: BaseException) -> None:
            undone.append(cmd.text)

    m.register(Failing())
    result = await m.send(Echo("thing"))
    assert result.code == ErrorCode.NOT_FOUND
    assert undone == ["thing"]


@pytest.mark.parametrize("path", ["inline", "in_turn", "gather"])
async def test_class_event_handlers_run_per_message_and_compensate_on_every_fan_out_path(path: str) -> None:
    """A factory-made event handler goes through the one generic handler call on each path."""

    async def passthrough(message: Any, ctx: Context, call_next: Any) -> Result[Any]:
        return await call_next(message, ctx)  # a behavior that applies to events: no inline fan-out

    m = Mediator(behaviors=[passthrough] if path == "in_turn" else [])
    made: list[object] = []
    undone: list[int] = []
    ran: list[tuple[str, int]] = []

    class Flaky:
        def __init__(self, ctx: Context) -> None:
            made.append(self)
            self.ctx = ctx

        async def handle(self, e: Happened, ctx: Context) -> None:
            assert ctx is self.ctx
            ran.append(("flaky", e.n))
            if e.n < 0:
                raise NotFoundError(f"no {e.n}")

        async def compensate(self, e: Happened, ctx: Context, exc: BaseException) -> None:
            undone.append(e.n)

    async def plain(e: Happened) -> None:
        ran.append(("plain", e.n))

    m.register(Flaky, factory=Flaky)
    m.register(plain)
    concurrent = True if path == "gather" else None
    assert (await m.publish(Happened(1), concurrent=concurrent)).ok
    failed = await m.publish(Happened(-1), concurrent=concurrent)
    assert not failed.ok and failed.code == ErrorCode.NOT_FOUND
    assert [f.handler for f in failed.metadata["failures"]] == [m.handlers_for(Happened)[0].name]
    assert len(made) == 2 and undone == [-1]
    assert sorted(ran) == [("flaky", -1), ("flaky", 1), ("plain", -1), ("plain", 1)]


async def test_explicit_message_type_overrides_annotations() -> None:
    m = Mediator()

    async def anything(msg: Any) -> str:
        return "ok"

    m.register(anything, Echo)
    assert (await m.send(Echo("x"))).value == "ok"


def test_second_handler_for_a_command_is_rejected_at_registration() -> None:
    m = Mediator()

    async def first(cmd: Echo) -> str:
        return "1"

    async def second(cmd: Echo) -> str:
        return "2"

    m.register(first)
    m.register(first)  # the same handler again is a no-op
    with pytest.raises(DuplicateHandlerError) as info:
        m.register(second)
    assert info.value.message_type is Echo
    assert "first" in str(info.value) and "second" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda cmd: None, id="not-async"),
        pytest.param("not callable", id="not-a-handler"),
    ],
)
def test_invalid_handlers_are_configuration_errors(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        Mediator().register(bad, Echo)


def test_handler_needs_a_message_annotation_or_explicit_type() -> None:
    async def unannotated(cmd):  # type: ignore[no-untyped-def]
        return None

    async def too_many(cmd: Echo, ctx: Context, extra: int) -> None:
        return None

    class NoHandle:
        pass

    m = Mediator()
    with pytest.raises(ConfigurationError, match="annotate"):
        m.register(unannotated)
    with pytest.raises(ConfigurationError, match="parameters"):
        m.register(too_many)
    with pytest.raises(ConfigurationError, match="handle"):
        m.register(NoHandle)
    with pytest.raises(ConfigurationError, match="factory"):
        m.register(unannotated, Echo, factory=lambda: None)


async def test_scan_registers_marked_handlers_once() -> None:
    from mediator_scan_pkg.messages import SEEN, ScanHappened, ScanPing

    m = Mediator()
    assert m.scan("mediator_scan_pkg") == 3
    assert (await m.send(ScanPing("x"))).value == "pong:x"
    SEEN.clear()
    assert (await m.publish(ScanHappened(1))).ok
    assert sorted(SEEN) == ["a:1", "b:1"]  # re-exported handler not registered twice, unmarked ignored
    assert len(m.handlers_for(ScanHappened)) == 2


async def test_no_handler_is_a_failed_result_not_an_exception() -> None:
    m = Mediator()
    result = await m.send(Orphan())
    assert not result.ok
    assert result.code == ErrorCode.HANDLER_NOT_FOUND
    assert isinstance(result.exception, HandlerNotFoundError)
    assert "Orphan" in (result.error or "")

    @m.handler
    async def late(cmd: Orphan) -> None:
        return None

    assert (await m.send(Orphan())).ok  # registering later replaces the cached not-found chain


async def test_an_event_is_not_sent_and_a_publish_without_handlers_succeeds() -> None:
    m = Mediator()

    @m.handler
    async def on(e: Happened) -> None:
        return None

    sent = await m.send(Happened(1))  # type: ignore[arg-type]
    assert sent.code == ErrorCode.CONFIGURATION and "Happened is an Event: publish it" in (sent.error or "")

    @dataclass(frozen=True)
    class Unheard(Event):
        pass

    assert (await m.publish(Unheard())).ok


# -- events ----------------------------------------------------------------------------------------


async def test_publish_runs_every_handler_including_base_class_handlers() -> None:
    m = Mediator()
    calls: list[str] = []

    @m.handler
    async def exact(e: SpecialHappened) -> None:
        calls.append(f"special:{e.n}")

    @m.handler
    async def base(e: Happened, ctx: Context) -> None:
        calls.append(f"base:{e.n}")

    @m.handler
    async def everything(e: Event) -> None:
        calls.append("any")

    assert (await m.publish(SpecialHappened(1))).ok
    assert sorted(calls) == ["any", "base:1", "special:1"]
    calls.clear()
    assert (await m.publish(Happened(2))).ok
    assert sorted(calls) == ["any", "base:2"]


async def test_a_failing_event_handler_is_isolated_logged_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Mediator()
    calls: list[str] = []

    @m.handler
    async def first(e: Happened) -> None:
        calls.append("first")

    @m.handler
    async def broken(e: Happened) -> None:
        raise RuntimeError("database password is hunter2")

    @m.handler
    async def rejecting(e: Happened) -> None:
        raise NotFoundError("no such order")

    @m.handler
    async def last(e: Happened) -> None:
        calls.append("last")

    with caplog.at_level(logging.WARNING, logger="catga.mediator"):
        result = await m.publish(Happened(1), metadata=Metadata(message_id=4242))
    assert calls == ["first", "last"]
    assert not result.ok
    failures = result.metadata["failures"]  # type: ignore[index]
    assert [type(f) for f in failures] == [HandlerFailure, HandlerFailure]
    assert [f.code for f in failures] == [ErrorCode.INTERNAL, ErrorCode.NOT_FOUND]
    assert "broken" in failures[0].handler and "rejecting" in failures[1].handler
    assert "hunter2" not in (result.error or "")
    assert "2 of 4 handlers" in (result.error or "")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "4242" in errors[0].getMessage() and errors[0].catga_message_id == 4242  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["mediator", "per-publish"])
async def test_concurrent_event_handlers_overlap(how: str) -> None:
    m = Mediator(concurrent_events=how == "mediator")
    first_started = asyncio.Event()
    order: list[str] = []

    @m.handler
    async def waits(e: Happened) -> None:
        first_started.set()
        await asyncio.sleep(0.01)
        order.append("slow done")

    @m.handler
    async def quick(e: Happened) -> None:
        assert first_started.is_set()  # started while the slow one was waiting
        order.append("quick done")

    result = await m.publish(Happened(1), concurrent=True if how == "per-publish" else None)
    assert result.ok
    assert order == ["quick done", "slow done"]


async def test_sequential_fan_out_runs_handlers_in_registration_order() -> None:
    m = Mediator()
    order: list[str] = []

    @m.handler
    async def slow(e: Happened) -> None:
        await asyncio.sleep(0.01)
        order.append("slow")

    @m.handler
    async def quick(e: Happened) -> None:
        order.append("quick")

    assert (await m.publish(Happened(1))).ok
    assert order == ["slow", "quick"]


async def test_concurrent_fan_out_still_isolates_failures() -> None:
    m = Mediator(concurrent_events=True)
    ran: list[str] = []

    @m.handler
    async def bad(e: Happened) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("x")

    @m.handler
    async def good(e: Happened) -> None:
        await asyncio.sleep(0)
        ran.append("good")

    result = await m.publish(Happened(1))
    assert ran == ["good"]
    assert result.code == ErrorCode.INTERNAL
    assert len(result.metadata["failures"]) == 1  # type: ignore[index]


# -- batches and streams ---------------------------------------------------------------------------


def _sleepy_mediator() -> tuple[Mediator, dict[str, int]]:
    m = Mediator()
    stats = {"in_flight": 0, "max": 0}

    @m.handler
    async def sleepy(cmd: Sleepy) -> int:
        stats["in_flight"] += 1
        stats["max"] = max(stats["max"], stats["in_flight"])
        try:
            await asyncio.sleep(cmd.delay)
        finally:
            stats["in_flight"] -= 1
        if cmd.n < 0:
            raise NotFoundError("negative")
        return cmd.n * 10

    return m, stats


async def test_send_batch_keeps_order_and_bounds_concurrency() -> None:
    m, stats = _sleepy_mediator()
    requests = [Sleepy(i, delay=0.02 if i % 2 == 0 else 0.0) for i in range(10)]
    results = await m.send_batch(requests, max_concurrency=3)
    assert [r.value for r in results] == [i * 10 for i in range(10)]
    assert stats["max"] == 3


async def test_send_batch_sequential_and_with_failures() -> None:
    m, stats = _sleepy_mediator()
    results = await m.send_batch([Sleepy(1), Sleepy(-1), Sleepy(2)], max_concurrency=1)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].code == ErrorCode.NOT_FOUND
    assert stats["max"] == 1


async def test_send_stream_from_an_async_iterator_keeps_order() -> None:
    m, stats = _sleepy_mediator()

    async def source() -> AsyncIterator[Sleepy]:
        for i in range(12):
            yield Sleepy(i, delay=0.001 * (12 - i))

    out = [r.value async for r in m.send_stream(source(), max_concurrency=4)]
    assert out == [i * 10 for i in range(12)]
    assert 1 < stats["max"] <= 4


async def test_closing_a_stream_early_cancels_in_flight_requests() -> None:
    m = Mediator()
    cancelled: list[int] = []

    @m.handler
    async def slow(cmd: Sleepy) -> int:
        try:
            await asyncio.sleep(cmd.delay)
        except asyncio.CancelledError:
            cancelled.append(cmd.n)
            raise
        return cmd.n

    stream = m.send_stream([Sleepy(0, 0.0)] + [Sleepy(i, 10.0) for i in range(1, 4)], max_concurrency=4)
    first = await stream.__anext__()
    assert first.value == 0
    await stream.aclose()  # type: ignore[attr-defined]
    assert sorted(cancelled) == [1, 2, 3]


async def test_publish_batch_returns_one_result_per_event() -> None:
    m = Mediator()
    seen: list[int] = []

    @m.handler
    async def on(e: Happened) -> None:
        if e.n == 2:
            raise NotFoundError("two")
        seen.append(e.n)

    results = await m.publish_batch([Happened(i) for i in range(4)], max_concurrency=2)
    assert [r.ok for r in results] == [True, True, False, True]
    assert sorted(seen) == [0, 1, 3]


# -- safe handler semantics ------------------------------------------------------------------------


async def test_business_error_becomes_a_failed_result_with_its_code() -> None:
    m = Mediator()

    @m.handler
    async def missing(cmd: Echo) -> str:
        raise NotFoundError(f"order {cmd.text} not found")

    result = await m.send(Echo("o-1"))
    assert (result.ok, result.code, result.error) == (False, "not_found", "order o-1 not found")
    assert isinstance(result.exception, NotFoundError)
    with pytest.raises(NotFoundError):
        result.unwrap()


async def test_unexpected_error_leaks_nothing_and_is_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Mediator()

    @m.handler
    async def boom(cmd: Echo) -> str:
        raise KeyError("secret-column")

    with caplog.at_level(logging.ERROR, logger="catga.mediator"):
        result = await m.send(Echo("x"), metadata=Metadata(message_id=777))
    assert (result.ok, result.code, result.error) == (False, ErrorCode.INTERNAL, "internal error")
    assert "secret" not in repr(result)
    assert isinstance(result.exception, KeyError)
    (record,) = caplog.records
    assert record.exc_info is not None and "777" in record.getMessage() and "boom" in record.getMessage()


async def test_hooks_run_and_may_replace_the_result() -> None:
    seen: list[tuple[str, str, int]] = []

    async def on_business(message: Any, ctx: Context, exc: BaseException) -> Result[Any] | None:
        seen.append(("business", type(exc).__name__, ctx.message_id))
        return None

    async def on_unexpected(message: Any, ctx: Context, exc: BaseException) -> Result[Any] | None:
        seen.append(("unexpected", type(exc).__name__, ctx.message_id))
        return Result.failure("try again later", code="busy")

    m = Mediator(on_business_error=on_business, on_unexpected_error=on_unexpected)
    undone: list[str] = []

    async def undo(cmd: Echo, ctx: Context, exc: BaseException) -> None:
        undone.append(f"{cmd.text}:{type(exc).__name__}")

    @m.handler(compensate=undo)
    async def handle(cmd: Echo) -> str:
        if cmd.text == "biz":
            raise NotFoundError("nope")
        raise ZeroDivisionError

    biz = await m.send(Echo("biz"), metadata=Metadata(message_id=1))
    crash = await m.send(Echo("crash"), metadata=Metadata(message_id=2))
    assert biz.code == ErrorCode.NOT_FOUND
    assert (crash.error, crash.code) == ("try again later", "busy")
    assert seen == [("business", "NotFoundError", 1), ("unexpected", "ZeroDivisionError", 2)]
    assert undone == ["biz:NotFoundError", "crash:ZeroDivisionError"]


async def test_subclass_hooks_and_a_failing_compensation_keep_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class MyMediator(Mediator):
        calls = 0

        async def on_unexpected_error(
            self, message: Any, ctx: Context, exc: BaseException
        ) -> Result[Any] | None:
            MyMediator.calls += 1
            return None

    m = MyMediator()

    class Handler:
        async def handle(self, cmd: Echo) -> str:
            raise RuntimeError("first")

        async def compensate(self, cmd: Echo, ctx: Context, exc: BaseException) -> None:
            raise RuntimeError("compensation broke")

    m.register(Handler)
    with caplog.at_level(logging.ERROR, logger="catga.mediator"):
        result = await m.send(Echo("x"))
    assert result.code == ErrorCode.INTERNAL
    assert MyMediator.calls == 1
    assert any("compensation" in r.getMessage() for r in caplog.records)


async def test_cancellation_always_propagates() -> None:
    m = Mediator()

    @m.handler
    async def cancelled(cmd: Echo) -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await m.send(Echo("x"))

    @m.handler
    async def on(e: Happened) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await m.publish(Happened(1))


async def test_retryable_failures_are_flagged() -> None:
    m = Mediator()

    @m.handler
    async def flaky(cmd: Echo) -> str:
        raise RetryableError("try later")

    result = await m.send(Echo("x"))
    assert result.retryable and result.code == ErrorCode.RETRYABLE


# -- context and correlation -----------------------------------------------------------------------


async def test_correlation_and_causation_flow_through_nested_sends_and_publishes() -> None:
    m = Mediator()
    seen: dict[str, tuple[int, int, int | None]] = {}

    def record(name: str, ctx: Context) -> None:
        seen[name] = (ctx.message_id, ctx.correlation_id, ctx.causation_id)

    @m.handler
    async def root(cmd: Nested, ctx: Context) -> list[int]:
        record("root", ctx)
        await ctx.send(Echo("via ctx"))
        await m.send(Add(1, 2))  # not through ctx: the contextvar still carries the parent
        await ctx.publish(Happened(1))
        return [ctx.message_id]

    @m.handler
    async def echo(cmd: Echo, ctx: Context) -> str:
        record("echo", ctx)
        await m.publish(SpecialHappened(2))  # grandchild
        return cmd.text

    @m.handler
    async def add(q: Add, ctx: Context) -> int:
        record("add", ctx)
        return q.a + q.b

    @m.handler
    async def happened(e: Happened, ctx: Context) -> None:
        record(f"event{e.n}", ctx)

    assert catga.current_context() is None
    result = await m.send(Nested(1))
    assert catga.current_context() is None
    root_id, root_corr, root_cause = seen["root"]
    assert result.value == [root_id]
    assert (root_corr, root_cause) == (root_id, None)
    for child in ("echo", "add", "event1"):
        assert seen[child][1:] == (root_id, root_id), child
        assert seen[child][0] != root_id
    echo_id = seen["echo"][0]
    assert seen["event2"][1:] == (root_id, echo_id)
    assert len({v[0] for v in seen.values()}) == 5


async def test_parent_names_the_cause_or_makes_a_root_message() -> None:
    """``parent=`` (default: the running handler's context) for send and publish alike."""
    m = Mediator(behaviors=[], id_factory=iter(range(100, 200)).__next__)
    seen: dict[str, tuple[int, int, int | None]] = {}

    def record(name: str, ctx: Context) -> None:
        seen[name] = (ctx.message_id, ctx.correlation_id, ctx.causation_id)

    @m.handler
    async def root(cmd: Nested, ctx: Context) -> list[int]:
        record("root", ctx)
        await m.send(Echo("fresh"), parent=None)  # a new conversation, from inside a handler
        await m.publish(Happened(1), parent=None)
        await m.send(Echo("child"))  # default: caused by the running handler
        await m.publish(Happened(2), parent=ctx)
        return []

    @m.handler
    async def echo(cmd: Echo, ctx: Context) -> str:
        record(cmd.text, ctx)
        return cmd.text

    @m.handler
    async def happened(e: Happened, ctx: Context) -> None:
        record(f"event{e.n}", ctx)

    outer: list[Context] = []

    @m.handler
    async def other(q: Add, ctx: Context) -> int:
        outer.append(ctx)
        return 0

    assert (await m.send(Nested(1))).ok
    root_id = seen["root"][0]
    for name in ("fresh", "event1"):
        mid, corr, cause = seen[name]
        assert (corr, cause) == (mid, None) and mid != root_id, name
    for name in ("child", "event2"):
        assert seen[name][1:] == (root_id, root_id), name
    # Outside any handler, an explicit parent still names the cause.
    ctx = Context(m, 7, 5)
    assert (await m.send(Add(1, 1), parent=ctx)).ok
    assert (outer[0].correlation_id, outer[0].causation_id) == (5, 7)


async def test_explicit_metadata_is_kept_and_its_correlation_continues() -> None:
    m = Mediator()
    seen: list[Context] = []

    @m.handler
    async def parent(cmd: Echo, ctx: Context) -> str:
        seen.append(ctx)
        await ctx.send(Add(1, 1))
        return ""

    @m.handler
    async def child(q: Add, ctx: Context) -> int:
        seen.append(ctx)
        return 0

    md = Metadata(message_id=10, correlation_id=5, causation_id=3, headers={"traceparent": "t"})
    await m.send(Echo("x"), metadata=md)
    parent_ctx, child_ctx = seen
    assert parent_ctx.metadata is md
    assert (parent_ctx.message_id, parent_ctx.correlation_id, parent_ctx.causation_id) == (10, 5, 3)
    assert (child_ctx.correlation_id, child_ctx.causation_id) == (5, 10)
    assert child_ctx.metadata.correlation_id == 5 and child_ctx.metadata.causation_id == 10


async def test_context_metadata_items_and_ids() -> None:
    m = Mediator(id_factory=iter(range(100, 200)).__next__)
    seen: list[Context] = []

    @m.handler
    async def handle(cmd: Echo, ctx: Context) -> str:
        ctx.items["user"] = "alice"
        seen.append(ctx)
        return str(ctx.new_id())

    result = await m.send(Echo("x"))
    (ctx,) = seen
    assert ctx.message_id == 100 and result.value == "101"
    md = ctx.metadata
    assert (md.message_id, md.correlation_id, md.causation_id) == (100, 100, None)
    assert md.created_at > 0 and ctx.metadata is md
    assert ctx.items == {"user": "alice"}
    child = ctx.child_metadata()
    assert (child.message_id, child.correlation_id, child.causation_id) == (102, 100, 100)
    assert "message_id=100" in repr(ctx)


async def test_an_event_draws_its_id_when_first_read_and_keeps_it() -> None:
    m = Mediator(behaviors=[], id_factory=iter(range(100, 200)).__next__)
    seen: list[tuple[int, int, int, int]] = []

    @m.handler
    async def quiet(evt: Pinged) -> None:  # never looks at the id
        pass

    @m.handler
    async def curious(evt: Pinged, ctx: Context) -> None:
        inner = ctx.new_id()  # drawn before the event's own id is read
        seen.append((inner, ctx.message_id, ctx.correlation_id, ctx.message_id))

    assert (await m.publish(Pinged())).ok
    assert seen == [(100, 101, 101, 101)]
    assert m.new_id() == 102


async def test_an_event_without_readers_costs_no_id() -> None:
    m = Mediator(behaviors=[], id_factory=iter(range(100, 200)).__next__)

    @m.handler
    async def quiet(evt: Pinged) -> None:
        pass

    for _ in range(3):
        assert (await m.publish(Pinged())).ok
    assert m.new_id() == 100


async def test_a_child_of_a_lazy_event_carries_the_events_id() -> None:
    m = Mediator(behaviors=[], id_factory=iter(range(100, 200)).__next__)
    children: list[Context] = []

    @m.handler
    async def on_ping(evt: Pinged) -> None:
        await m.send(Echo("child"))  # correlation and causation from the current (lazy) context

    @m.handler
    async def echo(cmd: Echo, ctx: Context) -> str:
        children.append(ctx)
        return cmd.text

    assert (await m.publish(Pinged())).ok
    (child,) = children
    assert (child.causation_id, child.correlation_id, child.message_id) == (100, 100, 101)


def test_threads_reading_a_fresh_context_id_agree() -> None:
    m = Mediator(behaviors=[])
    contexts = [Context(m) for _ in range(300)]
    seen: list[list[int]] = [[] for _ in range(4)]

    def read(index: int) -> None:
        seen[index].extend(ctx.message_id for ctx in contexts)

    run_preempted(read, 4)
    assert seen[0] == seen[1] == seen[2] == seen[3]
    assert len(set(seen[0])) == 300


def test_invalid_mediator_options() -> None:
    with pytest.raises(ConfigurationError):
        Mediator(behaviors=[], pipeline=[])
    with pytest.raises(ConfigurationError):
        Mediator(max_concurrency=0)


async def test_a_zero_max_concurrency_is_rejected() -> None:
    m, _ = _sleepy_mediator()
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        await m.send_batch([Sleepy(1)], max_concurrency=0)
