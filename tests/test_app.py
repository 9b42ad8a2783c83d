"""catga.App: the SPEC §9 example, delegation, components, hooks, shutdown and run()."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import catga
from catga import Command, Event, Metadata
from catga.errors import ConfigurationError, ErrorCode, RetryableError
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.pipeline import IdempotencyBehavior, LoggingBehavior, RetryBehavior, ValidationBehavior


@dataclass(frozen=True)
class OrderPlaced(Event):
    order_id: str
    total: int


@dataclass(frozen=True)
class PlaceOrder(Command[str]):
    customer_id: str
    amount: int


async def test_the_spec_example_runs_on_the_default_app() -> None:
    app = catga.App()
    emails: list[tuple[str, int]] = []

    @app.handler
    async def place_order(cmd: PlaceOrder, ctx: catga.Context) -> str:
        order_id = str(ctx.new_id())
        await ctx.publish(OrderPlaced(order_id, cmd.amount))
        return order_id

    @app.handler
    async def email_customer(event: OrderPlaced) -> None:
        emails.append((event.order_id, event.total))

    async with app:
        result = await app.send(PlaceOrder("c-1", 42))
    assert result.ok and result.value is not None
    assert emails == [(result.value, 42)]


async def test_default_pipeline_and_delegation() -> None:
    app = catga.App()
    kinds = [type(b) for b in app.mediator.behaviors]
    assert kinds == [LoggingBehavior, ValidationBehavior, IdempotencyBehavior, RetryBehavior]
    assert isinstance(app.idempotency_store, MemoryIdempotencyStore)
    assert app.idempotency_store in app.components
    calls = 0

    @app.handler
    async def place(cmd: PlaceOrder) -> str:
        nonlocal calls
        calls += 1
        if cmd.customer_id == "flaky" and calls == 1:
            raise RetryableError("once")
        return f"order-{calls}"

    seen: list[int] = []

    @app.handler
    async def placed(e: OrderPlaced) -> None:
        seen.append(e.total)

    md = Metadata(message_id=123)
    async with app:
        assert (await app.send(PlaceOrder("c", 1), metadata=md)).value == "order-1"
        assert (await app.send(PlaceOrder("c", 1), metadata=md)).value == "order-1"  # idempotent
        batch = await app.send_batch([PlaceOrder("c", 2), PlaceOrder("c", 3)])
        assert [r.value for r in batch] == ["order-2", "order-3"]
        assert [r.value async for r in app.send_stream([PlaceOrder("c", 4)])] == ["order-4"]
        assert (await app.publish(OrderPlaced("o", 7))).ok
        assert [r.ok for r in await app.publish_batch([OrderPlaced("o", 8), OrderPlaced("o", 9)])] == [
            True,
            True,
        ]
    assert sorted(seen) == [7, 8, 9]

    app2 = catga.App(behaviors=[RetryBehavior(sleep=_no_sleep)])
    app2.handler(place)
    calls = 0
    assert (await app2.send(PlaceOrder("flaky", 1))).value == "order-2"


async def _no_sleep(seconds: float) -> None:
    return None


async def test_scan_and_behavior_through_the_app() -> None:
    from mediator_scan_pkg.messages import ScanPing

    app = catga.App(behaviors=[])
    assert app.scan("mediator_scan_pkg") == 3
    trace: list[str] = []

    @app.behavior
    async def tag(message: Any, ctx: catga.Context, call_next: Any) -> catga.Result[Any]:
        trace.append(type(message).__name__)
        return await call_next(message, ctx)

    assert (await app.send(ScanPing("x"))).value == "pong:x"
    assert trace == ["ScanPing"]


@pytest.mark.parametrize("url", [None, "memory://", "MEMORY://", "memory"])
def test_memory_urls_are_accepted(url: str | None) -> None:
    catga.App(transport=url, store=url)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transport": "kafka://127.0.0.1:9092"}, "transport URL 'kafka://127.0.0.1:9092' has an"),
        ({"transport": "postgres://127.0.0.1/x"}, "transport URL 'postgres://"),
        ({"shutdown_timeout": 0}, "shutdown_timeout"),
    ],
)
def test_unsupported_configuration_is_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        catga.App(**kwargs)


class Component:
    def __init__(self, name: str, log: list[str], *, fail_start: bool = False, hang: bool = False) -> None:
        self.name, self.log, self.fail_start, self.hang = name, log, fail_start, hang

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def aclose(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        self.log.append(f"close {self.name}")


async def test_components_start_in_order_and_close_in_reverse_with_hooks() -> None:
    log: list[str] = []
    app = catga.App()
    a, b = Component("a", log), Component("b", log)
    assert app.add_component(a) is a
    app.add_component(b)
    app.add_component(a)  # added once

    class CloseOnly:
        async def aclose(self) -> None:
            log.append("close only")

    app.add_component(CloseOnly())

    @app.on_startup
    async def warm() -> None:
        log.append("startup async")

    @app.on_startup
    def warm_sync() -> None:
        log.append("startup sync")

    @app.on_shutdown
    async def bye() -> None:
        log.append("shutdown hook")

    async with app as entered:
        assert entered is app and app.running
        await app.start()  # idempotent
        with pytest.raises(ConfigurationError):
            app.add_component(Component("late", log))
    assert not app.running
    await app.aclose()  # idempotent
    assert log == [
        "start a",
        "start b",
        "startup async",
        "startup sync",
        "shutdown hook",
        "close only",
        "close b",
        "close a",
    ]
    with pytest.raises(ConfigurationError, match="aclose"):
        app.add_component(object())


async def test_a_failed_start_closes_what_was_started() -> None:
    log: list[str] = []
    app = catga.App()
    app.add_component(Component("a", log))
    app.add_component(Component("b", log, fail_start=True))
    app.add_component(Component("c", log))

    @app.on_shutdown
    def hook() -> None:
        log.append("shutdown hook")

    with pytest.raises(RuntimeError, match="b cannot start"):
        await app.start()
    assert log == ["start a", "close a"]
    assert not app.running


async def test_shutdown_is_time_limited_and_keeps_going_after_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    app = catga.App(shutdown_timeout=0.2)
    app.add_component(Component("first", log))
    app.add_component(Component("hangs", log, hang=True))

    @app.on_shutdown
    def broken() -> None:
        raise RuntimeError("hook failed")

    with caplog.at_level(logging.ERROR, logger="catga.app"):
        async with app:
            pass
    assert log == ["start first", "start hangs", "close first"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "did not stop within" in messages and "failed during shutdown" in messages


async def test_shutdown_finishes_even_when_the_closing_task_is_cancelled() -> None:
    log: list[str] = []
    app = catga.App()
    release = asyncio.Event()

    class Slow:
        async def aclose(self) -> None:
            await release.wait()
            log.append("slow closed")

    app.add_component(Slow())
    await app.start()
    closing = asyncio.ensure_future(app.aclose())
    await asyncio.sleep(0.01)
    closing.cancel()
    await asyncio.sleep(0.01)
    assert not closing.done()  # still finishing the shielded shutdown
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert log == ["slow closed"]


def test_run_returns_what_main_returns() -> None:
    app = catga.App()
    log: list[str] = []

    @app.handler
    async def place(cmd: PlaceOrder) -> str:
        return "o-1"

    @app.on_shutdown
    def bye() -> None:
        log.append("shutdown")

    async def main() -> str:
        assert app.running
        return (await app.send(PlaceOrder("c", 1))).unwrap()

    assert app.run(main) == "o-1"
    assert log == ["shutdown"]


def test_request_stop_ends_serve_and_cancels_main() -> None:
    app = catga.App()
    cancelled: list[bool] = []

    @app.on_startup
    def stop_soon() -> None:
        asyncio.get_running_loop().call_later(0.01, app.request_stop)

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    assert app.run(forever) is None
    assert cancelled == [True]

    app2 = catga.App()

    @app2.on_startup
    def stop_now() -> None:
        asyncio.get_running_loop().call_soon(app2.request_stop)

    assert app2.run() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_the_service_down_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    script = tmp_path / "service.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import catga

            app = catga.App()

            @app.on_startup
            def ready() -> None:
                print("ready", flush=True)

            @app.on_shutdown
            async def bye() -> None:
                print("graceful shutdown", flush=True)

            app.run()
            print("exited", flush=True)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.split() == ["graceful", "shutdown", "exited"]


async def test_failed_results_surface_through_the_app() -> None:
    app = catga.App()
    assert (await app.send(PlaceOrder("c", 1))).code == ErrorCode.HANDLER_NOT_FOUND
    assert "running=False" in repr(app)


@pytest.mark.parametrize(
    "module",
    [
        "catga",
        "catga.app",
        "catga.clock",
        "catga.context",
        "catga.messages",
        "catga.testing",
        "catga.testing.aggregates",
        "catga.testing.bus",
        "catga.testing.capture",
        "catga.testing.clock",
        "catga.testing.pytest_plugin",
        "catga.handlers",
        "catga.mediator",
        "catga._fanout",
        "catga.worker_lease",
        "catga.outbox",
        "catga.otel",
        "catga.web",
        "catga.health",
        "catga.postgres",
        "catga.nats.layout",
        "catga.backends",
        "catga.testing.postgres",
        "catga.postgres.idempotency",
        "catga.postgres.lock",
        "catga.postgres.event_store",
        "catga.postgres.unit_of_work",
        "catga.sqlite",
        "catga.sqlite.event_store",
        "catga.pipeline",
        "catga.pipeline.base",
        "catga.pipeline.caching",
        "catga.pipeline.idempotency",
        "catga.pipeline.logging",
        "catga.pipeline.retry",
        "catga.pipeline.timeout",
        "catga.pipeline.validation",
        "catga.memory.idempotency",
        "catga.memory.schedules",
        "catga.scheduling",
        "catga.es_persistence",
        "catga.es_persistence.factory",
        "catga.es_persistence.recorders",
        "catga.es_persistence.tracking",
        "catga.workflows",
        "catga.workflows.store",
        "catga.workflows.context",
        "catga.workflows.engine",
        "catga.workflows.events",
        "catga.workflows._values",
        "catga.memory.workflows",
    ],
)
def test_all_lists_only_what_the_module_defines(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert isinstance(mod.__all__, tuple)
    assert len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"
    for name in ("App", "Context", "Mediator", "handler", "current_context"):
        assert name in catga.__all__
