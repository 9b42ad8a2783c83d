"""Pipeline: composition and ordering, user behaviors, and every built-in behavior."""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest

import catga
from catga import Command, Context, Event, Mediator, Metadata, Query, Result
from catga.errors import (
    ConfigurationError,
    ErrorCode,
    NotFoundError,
    OperationTimeoutError,
    RetryableError,
    ValidationError,
)
from catga.handlers import HandlerInfo
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.pipeline import (
    Behavior,
    CachingBehavior,
    IdempotencyBehavior,
    LoggingBehavior,
    Next,
    Pipeline,
    RetryBehavior,
    TimeoutBehavior,
    ValidationBehavior,
    cached,
    default_pipeline,
)
from catga.protocols import Claim


@dataclass(frozen=True)
class Echo(Command[str]):
    text: str


@dataclass(frozen=True)
class Receipt:
    order_id: str
    total: int


@dataclass(frozen=True)
class PlaceOrder(Command[Receipt]):
    customer: str
    amount: int

    def validate(self) -> dict[str, str] | None:
        errors = {}
        if not self.customer:
            errors["customer"] = "must not be empty"
        if self.amount <= 0:
            errors["amount"] = "must be positive"
        return errors or None


class Signup(msgspec.Struct, Command[None], frozen=True):
    email: str

    def validate(self) -> None:
        if "@" not in self.email:
            raise ValidationError("bad signup", {"email": ["must contain @"]})


class PydanticCmd(pydantic.BaseModel, Command[int]):
    n: int


@dataclass(frozen=True)
class GetPrice(Query[int]):
    sku: str


@cached(ttl=5)
@dataclass(frozen=True)
class GetStock(Query[dict[str, int]]):
    sku: str


@dataclass(frozen=True)
class Tick(Event):
    n: int


# -- composition and user behaviors ----------------------------------------------------------------


async def test_user_behaviors_run_in_order_around_the_handler() -> None:
    trace: list[str] = []

    def tracer(name: str) -> Callable[[Any, Context, Next], Awaitable[Result[Any]]]:
        async def behavior(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
            trace.append(f"{name}>")
            result = await call_next(message, ctx)
            trace.append(f"<{name}")
            return result

        return behavior

    m = Mediator(behaviors=[tracer("a"), tracer("b")])
    m.add_behavior(tracer("c"))
    m.add_behavior(tracer("0"), index=0)

    @m.behavior
    async def inner(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
        trace.append("inner")
        return await call_next(message, ctx)

    @m.handler
    async def handle(cmd: Echo) -> str:
        trace.append("handler")
        return cmd.text

    assert (await m.send(Echo("x"))).value == "x"
    assert trace == ["0>", "a>", "b>", "c>", "inner", "handler", "<c", "<b", "<a", "<0"]
    assert len(m.behaviors) == 5


async def test_a_behavior_can_short_circuit_or_change_the_message() -> None:
    async def gate(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
        if isinstance(message, Echo) and message.text == "stop":
            return Result.failure("stopped", code="forbidden")
        if isinstance(message, Echo):
            message = Echo(message.text + "!")
        return await call_next(message, ctx)

    m = Mediator(behaviors=[gate])
    calls: list[str] = []

    @m.handler
    async def handle(cmd: Echo) -> str:
        calls.append(cmd.text)
        return cmd.text

    assert (await m.send(Echo("stop"))).code == "forbidden"
    assert (await m.send(Echo("go"))).value == "go!"
    assert calls == ["go!"]


async def test_a_raising_behavior_gives_a_safe_result() -> None:
    async def raises_business(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
        if message.text == "biz":
            raise NotFoundError("missing tenant")
        if message.text == "bug":
            raise RuntimeError("internal detail")
        return await call_next(message, ctx)

    m = Mediator(behaviors=[raises_business])

    @m.handler
    async def handle(cmd: Echo) -> str:
        return cmd.text

    biz, bug = await m.send(Echo("biz")), await m.send(Echo("bug"))
    assert (biz.code, biz.error) == (ErrorCode.NOT_FOUND, "missing tenant")
    assert (bug.code, bug.error) == (ErrorCode.INTERNAL, "internal error")


async def test_adding_a_behavior_after_the_first_dispatch_raises() -> None:
    m = Mediator()

    @m.handler
    async def handle(cmd: Echo) -> str:
        return cmd.text

    async def late(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
        return await call_next(message, ctx)

    await m.send(Echo("x"))
    with pytest.raises(ConfigurationError, match="after the first message"):
        m.add_behavior(late)


async def test_behaviors_that_have_nothing_to_do_for_a_type_are_skipped_at_composition() -> None:
    async def terminal(message: Any, ctx: Context) -> Result[Any]:
        return Result.success(message)

    info = HandlerInfo(Echo, (), str)
    assert ValidationBehavior().wrap(info, terminal) is terminal  # Echo has no validator
    assert CachingBehavior().wrap(info, terminal) is terminal  # not a cached query
    assert TimeoutBehavior(None).wrap(info, terminal) is terminal
    assert RetryBehavior(max_attempts=1).wrap(info, terminal) is terminal
    assert RetryBehavior().wrap(HandlerInfo(Tick, (), None), terminal) is terminal  # events not retried
    assert (
        IdempotencyBehavior(MemoryIdempotencyStore()).wrap(HandlerInfo(Tick, (), None), terminal) is terminal
    )


def test_pipeline_builder() -> None:
    log, val, retry = LoggingBehavior(), ValidationBehavior(), RetryBehavior()
    p = Pipeline([log, retry]).add_before(RetryBehavior, val)
    assert list(p) == [log, val, retry]
    p.remove(ValidationBehavior).insert(0, val)
    assert list(p) == [val, log, retry]
    assert len(p) == 3 and "LoggingBehavior" in repr(p)
    with pytest.raises(ConfigurationError):
        p.add(42)  # type: ignore[arg-type]
    kinds = [type(b) for b in default_pipeline(MemoryIdempotencyStore())]
    assert kinds == [LoggingBehavior, ValidationBehavior, IdempotencyBehavior, RetryBehavior]


async def test_a_behavior_subclass_with_call_and_an_ad_hoc_call_of_a_wrap_behavior() -> None:
    class Upper(Behavior):
        async def __call__(self, message: Any, context: Context, call_next: Next) -> Result[Any]:
            result = await call_next(message, context)
            return Result.success(str(result.value).upper())

    m = Mediator(pipeline=Pipeline([Upper()]))

    @m.handler
    async def handle(cmd: Echo) -> str:
        return cmd.text

    assert (await m.send(Echo("abc"))).value == "ABC"

    async def terminal(message: Any, ctx: Context) -> Result[Any]:
        return Result.success("ran")

    ctx = Context(m, 1, 1)
    result = await ValidationBehavior()(PlaceOrder("", 1), ctx, terminal)
    assert result.code == ErrorCode.VALIDATION
    with pytest.raises(ConfigurationError):
        Behavior().wrap(HandlerInfo(Echo, (), str), terminal)


# -- logging ---------------------------------------------------------------------------------------


async def test_logging_behavior_emits_structured_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.pipeline.logging")
    m = Mediator(behaviors=[LoggingBehavior(logger)])

    @m.handler
    async def handle(cmd: Echo) -> str:
        if cmd.text == "bad":
            raise NotFoundError("nope")
        return cmd.text

    with caplog.at_level(logging.DEBUG, logger="test.pipeline.logging"):
        await m.send(Echo("ok"), metadata=Metadata(message_id=11))
        await m.send(Echo("bad"), metadata=Metadata(message_id=12))
    ok, bad = [r for r in caplog.records if r.name == "test.pipeline.logging"]
    assert ok.levelno == logging.DEBUG and bad.levelno == logging.INFO
    assert ok.catga_message_id == 11 and ok.catga_ok is True  # type: ignore[attr-defined]
    assert bad.catga_code == "not_found" and "nope" in bad.getMessage()  # type: ignore[attr-defined]
    assert ok.catga_message_type == "Echo" and ok.catga_elapsed_ms >= 0  # type: ignore[attr-defined]


async def test_logging_behavior_is_silent_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.pipeline.quiet")
    m = Mediator(behaviors=[LoggingBehavior(logger)])

    @m.handler
    async def handle(cmd: Echo) -> str:
        return cmd.text

    with caplog.at_level(logging.WARNING, logger="test.pipeline.quiet"):
        assert (await m.send(Echo("x"))).value == "x"
    assert not [r for r in caplog.records if r.name == "test.pipeline.quiet"]


# -- validation ------------------------------------------------------------------------------------


async def test_validate_method_returning_field_errors_stops_the_handler() -> None:
    m = Mediator(behaviors=[ValidationBehavior()])
    calls: list[PlaceOrder] = []

    @m.handler
    async def place(cmd: PlaceOrder) -> Receipt:
        calls.append(cmd)
        return Receipt("o-1", cmd.amount)

    bad = await m.send(PlaceOrder("", 0))
    assert (bad.ok, bad.code) == (False, ErrorCode.VALIDATION)
    assert bad.metadata == {
        "field_errors": {"customer": ["must not be empty"], "amount": ["must be positive"]}
    }
    assert isinstance(bad.exception, ValidationError)
    assert bad.exception.field_errors["amount"] == ["must be positive"]
    assert calls == []
    assert (await m.send(PlaceOrder("c", 3))).value == Receipt("o-1", 3)


async def test_validate_raising_and_registered_validators_are_merged() -> None:
    async def no_example_com(msg: Signup) -> dict[str, list[str]] | None:
        return {"email": ["example.com is not allowed"]} if msg.email.endswith("example.com") else None

    def never(msg: Signup) -> None:
        raise ValidationError("nope")

    validation = ValidationBehavior().add(Signup, no_example_com)
    m = Mediator(behaviors=[validation])
    ran: list[str] = []

    @m.handler
    async def signup(cmd: Signup) -> None:
        ran.append(cmd.email)

    r1 = await m.send(Signup("bob"))
    assert r1.metadata == {"field_errors": {"email": ["must contain @"]}}
    r2 = await m.send(Signup("bob@example.com"))
    assert r2.metadata == {"field_errors": {"email": ["example.com is not allowed"]}}
    assert (await m.send(Signup("bob@corp.io"))).ok
    assert ran == ["bob@corp.io"]

    m2 = Mediator(behaviors=[ValidationBehavior({Signup: [never]})])
    m2.register(signup)
    assert (await m2.send(Signup("a@b.c"))).metadata == {"field_errors": {"": ["nope"]}}


async def test_pydantic_messages_are_not_revalidated() -> None:
    m = Mediator(behaviors=[ValidationBehavior()])

    @m.handler
    async def handle(cmd: PydanticCmd) -> int:
        return cmd.n

    assert ValidationBehavior().validators_for(PydanticCmd) == []
    assert (await m.send(PydanticCmd(n=3))).value == 3


# -- idempotency -----------------------------------------------------------------------------------


class AsyncOnlyStore:
    """The memory store behind the plain async protocol (no *_nowait fast path)."""

    def __init__(self) -> None:
        self.inner = MemoryIdempotencyStore()
        self.calls: list[str] = []

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        self.calls.append("claim")
        assert isinstance(key, str)
        return await self.inner.claim(key, lock_ttl)

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        self.calls.append("complete")
        await self.inner.complete(key, result, ttl)

    async def release(self, key: str) -> None:
        self.calls.append("release")
        await self.inner.release(key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def passthrough(message: Any, ctx: Context, call_next: Next) -> Result[Any]:
    return await call_next(message, ctx)


@dataclass
class IdemSetup:
    store: Any
    behaviors: list[Any]


@pytest.fixture(params=["memory-fused", "memory-layer", "async-protocol"])
def idem(request: pytest.FixtureRequest) -> IdemSetup:
    """The three ways the idempotency behavior runs: fused into the handler call (memory store right
    around the handler), as its own layer over the sync store, and over the async protocol."""
    store: Any = AsyncOnlyStore() if request.param == "async-protocol" else MemoryIdempotencyStore()
    behaviors: list[Any] = [IdempotencyBehavior(store)]
    if request.param == "memory-layer":
        behaviors.append(passthrough)
    return IdemSetup(store, behaviors)


async def test_a_duplicate_returns_the_stored_typed_result_without_rerunning(idem: IdemSetup) -> None:
    m = Mediator(behaviors=idem.behaviors)
    calls: list[PlaceOrder] = []

    @m.handler
    async def place(cmd: PlaceOrder) -> Receipt:
        calls.append(cmd)
        return Receipt(f"o-{len(calls)}", cmd.amount)

    md = Metadata(message_id=900)
    first = await m.send(PlaceOrder("c", 5), metadata=md)
    again = await m.send(PlaceOrder("c", 5), metadata=md)
    fresh = await m.send(PlaceOrder("c", 5))
    assert first.value == again.value == Receipt("o-1", 5)
    assert isinstance(again.value, Receipt)
    assert fresh.value == Receipt("o-2", 5)
    assert len(calls) == 2
    if isinstance(idem.store, AsyncOnlyStore):
        assert idem.store.calls[:3] == ["claim", "complete", "claim"]


async def test_concurrent_duplicates_run_the_handler_once(idem: IdemSetup) -> None:
    m = Mediator(behaviors=idem.behaviors)
    gate = asyncio.Event()
    calls = 0

    @m.handler
    async def slow(cmd: Echo) -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "done"

    md = Metadata(message_id=901)
    first = asyncio.ensure_future(m.send(Echo("x"), metadata=md))
    await asyncio.sleep(0)
    dupes = await asyncio.gather(*(m.send(Echo("x"), metadata=md) for _ in range(5)))
    assert all(d.code == ErrorCode.CONFLICT for d in dupes)
    assert "901" in (dupes[0].error or "")
    gate.set()
    assert (await first).value == "done"
    assert (await m.send(Echo("x"), metadata=md)).value == "done"
    assert calls == 1


async def test_business_failures_are_replayed_and_transient_ones_released(idem: IdemSetup) -> None:
    m = Mediator(behaviors=idem.behaviors)
    calls: list[str] = []

    @m.handler
    async def handle(cmd: Echo) -> str:
        calls.append(cmd.text)
        if cmd.text == "missing":
            raise NotFoundError("no such thing")
        if cmd.text == "flaky" and calls.count("flaky") == 1:
            raise RetryableError("later")
        if cmd.text == "bug" and calls.count("bug") == 1:
            raise RuntimeError("bug")
        return cmd.text

    for text, mid in (("missing", 1), ("flaky", 2), ("bug", 3)):
        await m.send(Echo(text), metadata=Metadata(message_id=mid))
        await m.send(Echo(text), metadata=Metadata(message_id=mid))
    assert calls == ["missing", "flaky", "flaky", "bug", "bug"]
    replay = await m.send(Echo("missing"), metadata=Metadata(message_id=1))
    assert (replay.code, replay.error) == (ErrorCode.NOT_FOUND, "no such thing")


async def test_a_cancelled_handler_releases_its_claim(idem: IdemSetup) -> None:
    m = Mediator(behaviors=idem.behaviors)
    calls = 0

    @m.handler
    async def handle(cmd: Echo) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "second"

    md = Metadata(message_id=77)
    task = asyncio.ensure_future(m.send(Echo("x"), metadata=md))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await m.send(Echo("x"), metadata=md)).value == "second"


async def test_events_are_deduplicated_as_a_whole_when_enabled() -> None:
    m = Mediator(behaviors=[IdempotencyBehavior(MemoryIdempotencyStore(), events=True)])
    seen: list[int] = []

    @m.handler
    async def a(e: Tick) -> None:
        seen.append(e.n)

    @m.handler
    async def b(e: Tick) -> None:
        seen.append(-e.n)

    md = Metadata(message_id=5)
    assert (await m.publish(Tick(1), metadata=md)).ok
    assert (await m.publish(Tick(1), metadata=md)).ok
    assert seen == [1, -1]


async def test_unencodable_results_are_returned_but_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    m = Mediator(behaviors=[IdempotencyBehavior(MemoryIdempotencyStore())])
    calls = 0

    class Opaque:
        pass

    @m.handler
    async def handle(cmd: Echo) -> Any:
        nonlocal calls
        calls += 1
        return Opaque()

    md = Metadata(message_id=3)
    with caplog.at_level(logging.WARNING, logger="catga.pipeline"):
        assert isinstance((await m.send(Echo("x"), metadata=md)).value, Opaque)
        assert isinstance((await m.send(Echo("x"), metadata=md)).value, Opaque)
    assert calls == 2
    assert len([r for r in caplog.records if "not stored" in r.getMessage()]) == 1


async def test_idempotency_fused_with_retry_stores_the_final_outcome() -> None:
    retry, slept = _retry(max_attempts=3)
    m = Mediator(behaviors=[IdempotencyBehavior(MemoryIdempotencyStore()), retry])
    runs: dict[str, int] = {}

    class Flaky:  # a class handler: the fused terminal builds one instance per attempt
        async def handle(self, cmd: Echo) -> str:
            runs[cmd.text] = runs.get(cmd.text, 0) + 1
            if cmd.text == "down" or runs[cmd.text] < 3:
                raise RetryableError("again")
            return f"{cmd.text} after {runs[cmd.text]}"

    m.register(Flaky)
    recovers, down = Metadata(message_id=31), Metadata(message_id=32)
    assert (await m.send(Echo("up"), metadata=recovers)).value == "up after 3"
    assert (await m.send(Echo("up"), metadata=recovers)).value == "up after 3"  # stored, not rerun
    assert (await m.send(Echo("down"), metadata=down)).retryable
    assert not (await m.send(Echo("down"), metadata=down)).ok  # released, so run again
    assert runs == {"up": 3, "down": 6}
    assert len(slept) == 2 + 2 + 2


# -- retry -----------------------------------------------------------------------------------------


def _retry(**kw: Any) -> tuple[RetryBehavior, list[float]]:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryBehavior(sleep=fake_sleep, random=lambda: 1.0, **kw), slept


async def test_retry_retries_only_retryable_failures_with_capped_backoff() -> None:
    retry, slept = _retry(max_attempts=5, base_delay=0.1, max_delay=0.3)
    m = Mediator(behaviors=[retry])
    attempts: dict[str, int] = {}

    @m.handler
    async def handle(cmd: Echo) -> str:
        attempts[cmd.text] = attempts.get(cmd.text, 0) + 1
        if cmd.text == "flaky" and attempts["flaky"] < 4:
            raise RetryableError("again")
        if cmd.text == "down":
            raise RetryableError("still down")
        if cmd.text == "business":
            raise NotFoundError("no")
        if cmd.text == "bug":
            raise RuntimeError("bug")
        return "ok"

    assert (await m.send(Echo("flaky"))).value == "ok"
    assert attempts["flaky"] == 4
    assert slept == pytest.approx([0.1, 0.2, 0.3])
    slept.clear()
    down = await m.send(Echo("down"))
    assert (down.ok, down.retryable, attempts["down"]) == (False, True, 5)
    assert slept == pytest.approx([0.1, 0.2, 0.3, 0.3])
    slept.clear()
    assert (await m.send(Echo("business"))).code == ErrorCode.NOT_FOUND
    assert (await m.send(Echo("bug"))).code == ErrorCode.INTERNAL
    assert (attempts["business"], attempts["bug"], slept) == (1, 1, [])


def test_retry_uses_full_jitter_and_validates_options() -> None:
    retry = RetryBehavior(base_delay=1.0, max_delay=10.0, random=lambda: 0.5)
    assert [retry.delay(n) for n in (1, 2, 3, 5)] == [0.5, 1.0, 2.0, 5.0]
    with pytest.raises(ConfigurationError):
        RetryBehavior(max_attempts=0)
    with pytest.raises(ConfigurationError):
        RetryBehavior(base_delay=-1)


async def test_retry_can_be_enabled_for_events() -> None:
    retry, slept = _retry(max_attempts=2, events=True)
    m = Mediator(behaviors=[retry])
    runs = 0

    @m.handler
    async def on(e: Tick) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RetryableError("once")

    assert (await m.publish(Tick(1))).ok
    assert runs == 2 and len(slept) == 1


# -- timeout ---------------------------------------------------------------------------------------


async def test_timeout_cancels_slow_handlers_with_a_retryable_result() -> None:
    m = Mediator(behaviors=[TimeoutBehavior(0.05, per_type={GetPrice: None})])
    cancelled: list[bool] = []

    @m.handler
    async def slow(cmd: Echo) -> str:
        if cmd.text == "fast":
            return "fast"
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "never"

    @m.handler
    async def price(q: GetPrice) -> int:
        await asyncio.sleep(0.06)  # longer than the default limit, but GetPrice has none
        return 3

    result = await m.send(Echo("slow"), metadata=Metadata(message_id=8))
    assert (result.code, result.retryable) == (ErrorCode.TIMEOUT, True)
    assert isinstance(result.exception, OperationTimeoutError)
    assert "Echo 8" in (result.error or "")
    assert cancelled == [True]
    assert (await m.send(Echo("fast"))).value == "fast"
    assert (await m.send(GetPrice("x"))).value == 3
    with pytest.raises(ConfigurationError):
        TimeoutBehavior(0)


async def test_retry_outside_timeout_retries_timed_out_attempts() -> None:
    retry, slept = _retry(max_attempts=3)
    m = Mediator(behaviors=[retry, TimeoutBehavior(0.02)])
    attempts = 0

    @m.handler
    async def handle(cmd: Echo) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await asyncio.sleep(10)
        return "third time"

    assert (await m.send(Echo("x"))).value == "third time"
    assert attempts == 3
    assert len(slept) == 2  # not fused (the timeout sits between): the retry layer slept twice


# -- caching ---------------------------------------------------------------------------------------


class DictCache:
    """A minimal protocols.Cache for the test (TTL ignored)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[bytes]], ttl: float | None = None
    ) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


async def test_caching_serves_equal_queries_from_the_cache_until_the_ttl() -> None:
    now = [0.0]
    caching = CachingBehavior(types={GetPrice: 10.0}, clock=lambda: now[0])
    m = Mediator(behaviors=[caching])
    calls: list[str] = []

    @m.handler
    async def price(q: GetPrice) -> int:
        calls.append(q.sku)
        return len(calls)

    @m.handler
    async def echo(cmd: Echo) -> str:
        calls.append("echo")
        return cmd.text

    assert [(await m.send(GetPrice("a"))).value for _ in range(3)] == [1, 1, 1]
    assert (await m.send(GetPrice("b"))).value == 2
    now[0] = 11.0
    assert (await m.send(GetPrice("a"))).value == 3
    assert await caching.invalidate(GetPrice("a"))
    assert (await m.send(GetPrice("a"))).value == 4
    await m.send(Echo("x"))
    await m.send(Echo("x"))
    assert calls.count("echo") == 2  # commands are never cached


async def test_caching_with_a_cache_backend_and_the_cached_decorator() -> None:
    cache = DictCache()
    m = Mediator(behaviors=[CachingBehavior(cache)])
    calls = 0

    @m.handler
    async def stock(q: GetStock) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if q.sku == "gone":
            raise NotFoundError("gone")
        return {q.sku: calls}

    assert (await m.send(GetStock("a"))).value == {"a": 1}
    assert (await m.send(GetStock("a"))).value == {"a": 1}
    assert len(cache.data) == 1 and next(iter(cache.data)).startswith("catga.cache.GetStock.")
    assert not (await m.send(GetStock("gone"))).ok
    assert not (await m.send(GetStock("gone"))).ok
    assert calls == 3  # failures are not cached
    assert CachingBehavior.key_for(GetStock("a")) != CachingBehavior.key_for(GetStock("b"))


async def test_logging_of_events_follows_the_level_at_run_time(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.pipeline.events")
    m = Mediator(behaviors=[LoggingBehavior(logger)])
    seen: list[int] = []

    @m.handler
    async def on(e: Tick) -> None:
        seen.append(e.n)

    with caplog.at_level(logging.WARNING, logger="test.pipeline.events"):
        assert (await m.publish(Tick(1))).ok  # quiet: the fan-out runs inline, nothing logged
    with caplog.at_level(logging.DEBUG, logger="test.pipeline.events"):
        assert (await m.publish(Tick(2))).ok  # the level changed after composition: logged now
    assert seen == [1, 2]
    records = [r for r in caplog.records if r.name == "test.pipeline.events"]
    assert len(records) == 1 and records[0].catga_message_type == "Tick"  # type: ignore[attr-defined]


_CORE = ("context", "errors", "handlers", "mediator", "_fanout", "messages", "result", "pipeline")
_BACKENDS = ("catga.memory", "catga.nats", "catga.redis", "catga.postgres")


def test_the_core_imports_no_backend() -> None:
    """The mediator and the pipeline know no backend, not even lazily (a store comes from the caller)."""
    root = Path(catga.__file__).parent
    files = [root / f"{name}.py" for name in _CORE if name != "pipeline"]
    files += sorted((root / "pipeline").glob("*.py"))
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}: {n}" for n in names if n.startswith(_BACKENDS)]
    assert len(files) > 10 and found == []
