"""catga.otel: spans and metrics per handled message, trace context carried by exported events."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import catga
import catga._observe
import catga.otel
from catga import Command, Event
from catga.errors import (
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    LockNotAcquiredError,
    NotFoundError,
)
from catga.eventsourcing import Aggregate, Repository, applies
from catga.memory import (
    MemoryBroker,
    MemoryDeadLetterQueue,
    MemoryEventStore,
    MemoryLock,
    MemoryOutboxStore,
    MemoryTransport,
)
from catga.messages import message_name
from catga.outbox import OutboxRelay
from catga.protocols import OutboxMessage


@dataclass(frozen=True)
class Ship(Command[str]):
    order_id: str


@dataclass(frozen=True)
class Charge(Command[None]):
    order_id: str


@catga.otel.trace_tags("order_id")
@message_name("test_otel.Shipped")
@dataclass(frozen=True)
class Shipped(Event):
    order_id: str


class Telemetry:
    """An SDK tracer and meter that keep what they record in memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, app: catga.App) -> None:
        catga.otel.instrument(app, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def sums(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """A counter's value per attribute set."""
        data = self.reader.get_metrics_data()
        out: dict[frozenset[tuple[str, Any]], Any] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        for p in metric.data.data_points:
                            out[frozenset(dict(p.attributes or {}).items())] = p.value
        return out

    def points(self, name: str) -> dict[tuple[str, str], Any]:
        data = self.reader.get_metrics_data()
        out: dict[tuple[str, str], Any] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        for p in metric.data.data_points:
                            a = p.attributes
                            out[(a["catga.message.type"], a["catga.outcome"])] = p
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield Telemetry()
    catga.otel.uninstrument_backends()  # the backend probe is process-wide


async def test_a_send_gets_a_span_with_the_message_ids_and_metrics(telemetry: Telemetry) -> None:
    app = catga.App()
    telemetry.instrument(app)

    @app.handler
    async def ship(cmd: Ship) -> str:
        return f"shipped {cmd.order_id}"

    result = await app.send(Ship("o-1"))
    assert result.value == "shipped o-1"
    [span] = telemetry.finished()
    assert span.name.startswith("send ") and span.name.endswith("Ship")
    assert span.kind == SpanKind.INTERNAL and span.status.status_code == StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs["messaging.system"] == "catga"
    assert attrs["messaging.message.id"] == attrs["catga.correlation_id"]  # a root message
    assert int(attrs["messaging.message.id"]) > 0 and "catga.causation_id" not in attrs
    handled = telemetry.points("catga.messages.handled")
    [(type_name, outcome)] = handled
    assert type_name.endswith("Ship") and outcome == "ok" and handled[(type_name, outcome)].value == 1
    [duration] = telemetry.points("catga.message.duration").values()
    assert duration.count == 1 and duration.sum > 0
    # seconds-sized buckets, not the SDK's millisecond-sized defaults (every message in the first)
    assert (
        tuple(duration.explicit_bounds) == catga.otel.DURATION_BUCKETS and duration.explicit_bounds[0] < 0.001
    )


async def test_a_failure_marks_the_span_and_a_nested_send_is_a_child(telemetry: Telemetry) -> None:
    app = catga.App()
    telemetry.instrument(app)

    @app.handler
    async def charge(cmd: Charge) -> None:
        raise NotFoundError(f"no order {cmd.order_id}")

    @app.handler
    async def ship(cmd: Ship, ctx: catga.Context) -> str:
        await ctx.send(Charge(cmd.order_id))
        return "shipped anyway"

    assert (await app.send(Ship("o-2"))).ok
    child, parent = telemetry.finished()  # the child ends first
    assert child.name.endswith("Charge") and parent.name.endswith("Ship")
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.status.status_code == StatusCode.ERROR and "no order o-2" in (child.status.description or "")
    assert dict(child.attributes or {})["catga.error.code"] == "not_found"
    assert (
        dict(child.attributes or {})["catga.causation_id"]
        == dict(parent.attributes or {})["messaging.message.id"]
    )
    outcomes = {outcome for _, outcome in telemetry.points("catga.messages.handled")}
    assert outcomes == {"ok", "failed"}


@pytest.fixture(
    params=[
        "memory",
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def two_transports(request: pytest.FixtureRequest, unique_name: str) -> tuple[str, object, object]:
    """``(system, publisher's transport, consumer's transport)`` on one broker or server namespace."""
    if request.param == "memory":
        broker = MemoryBroker()
        return "memory", MemoryTransport(broker=broker), MemoryTransport(broker=broker)
    if request.param == "nats":
        url = f"{request.getfixturevalue('nats_url')}?prefix={unique_name}&storage=memory"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix={unique_name}"
    return request.param, url, url


async def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_consumers_spans_continue_the_publishers_trace_across_the_transport(
    telemetry: Telemetry, two_transports: tuple[str, object, object]
) -> None:
    system, pub_transport, con_transport = two_transports
    publisher = catga.App(transport=pub_transport, name="publisher")
    consumer = catga.App(transport=con_transport, name="consumer")
    telemetry.instrument(publisher)
    telemetry.instrument(consumer)
    seen: list[dict[str, str]] = []

    @consumer.handler
    async def on_shipped(event: Shipped, ctx: catga.Context) -> None:
        ids = {"Catga-Id": str(ctx.message_id), "Catga-Correlation-Id": str(ctx.correlation_id)}
        seen.append({**(ctx.metadata.headers or {}), **ids})

    publisher.export(Shipped)
    consumer.consume(Shipped)
    async with consumer, publisher:
        assert (await publisher.publish(Shipped("o-3"))).ok
        await wait_for(lambda: any(s.name == "process test_otel.Shipped" for s in telemetry.finished()), "it")
    assert "traceparent" in seen[0]
    spans = {s.name: s for s in telemetry.finished() if s.name != "publish Shipped"}
    sent, processed = spans["send test_otel.Shipped"], spans["process test_otel.Shipped"]
    assert (sent.kind, processed.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    # the handler spans of the event: the publisher's (its export among them) started first
    published, handled = sorted(
        (s for s in telemetry.finished() if s.name == "publish Shipped"), key=lambda s: s.start_time or 0
    )
    # one trace: publisher's handler span -> send -> process -> consumer's handler span
    chain = [published, sent, processed, handled]
    assert len({s.context.trace_id for s in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, child.name
    for span, operation in ((sent, "send"), (processed, "process")):
        attrs = dict(span.attributes or {})
        assert attrs["messaging.system"] == system
        assert attrs["messaging.destination.name"] == "test_otel.Shipped"
        assert attrs["messaging.operation.type"] == operation
        assert attrs["messaging.message.id"] == seen[0]["Catga-Id"]
        assert attrs["messaging.message.conversation_id"] == seen[0]["Catga-Correlation-Id"]
    assert dict(processed.attributes or {})["catga.outcome"] == "ack"
    assert dict(processed.attributes or {})["catga.delivery.attempt"] == 1
    assert dict(handled.attributes or {})["catga.message.order_id"] == "o-3"  # @trace_tags
    labels = {"messaging.system": system, "messaging.destination.name": "test_otel.Shipped"}
    assert telemetry.sums("messaging.client.sent.messages") == {
        frozenset({**labels, "messaging.operation.name": "publish"}.items()): 1
    }
    assert telemetry.sums("messaging.client.consumed.messages") == {
        frozenset({**labels, "messaging.operation.name": "process", "catga.outcome": "ack"}.items()): 1
    }


async def test_a_failing_delivery_is_a_failed_process_span_and_a_dead_letter_is_counted(
    telemetry: Telemetry,
) -> None:
    dlq = MemoryDeadLetterQueue()
    transport = MemoryTransport(dead_letters=dlq, retry_backoff=0.001, retry_backoff_max=0.001)
    catga.otel.instrument_backends(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )

    async def fail(message: Shipped, metadata: catga.Metadata) -> None:
        raise RuntimeError(f"cannot ship {message.order_id}")

    async with transport:
        await transport.subscribe(Shipped, fail, max_deliver=2)
        await transport.publish(Shipped("o-9"))
        await wait_for(lambda: len(telemetry.finished()) == 2, "two deliveries")
    processed = telemetry.finished()  # a publish on the transport itself has no span (no app)
    assert all(s.kind == SpanKind.CONSUMER and s.name == "process test_otel.Shipped" for s in processed)
    assert [dict(s.attributes or {})["catga.outcome"] for s in processed] == ["retry", "dead"]
    assert all(s.status.status_code == StatusCode.ERROR for s in processed)
    [event] = processed[1].events
    assert event.name == "catga.dead_lettered" and dict(event.attributes or {})["catga.reason"] == "failed"
    assert telemetry.sums("catga.dead_letters") == {
        frozenset(
            {
                "messaging.system": "memory",
                "messaging.destination.name": "test_otel.Shipped",
                "catga.reason": "failed",
            }.items()
        ): 1
    }


async def test_instrumenting_a_running_app_is_refused() -> None:
    app = catga.App()
    async with app:
        with pytest.raises(ConfigurationError, match="before it starts"):
            catga.otel.instrument(app)


def test_inject_writes_the_current_trace_context(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("t")
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("outer") as span:
        catga.otel.inject(headers)
    assert headers["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"


async def test_a_sampled_out_span_costs_no_context_switch_but_still_counts() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    telemetry = Telemetry()
    telemetry.tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(telemetry.spans))
    app = catga.App()
    telemetry.instrument(app)
    inside: list[bool] = []

    @app.handler
    async def ship(cmd: Ship) -> str:
        from opentelemetry import trace

        inside.append(trace.get_current_span().is_recording())
        return "ok"

    assert (await app.send(Ship("o-4"))).value == "ok"
    assert telemetry.finished() == [] and inside == [False]
    [(type_name, outcome)] = telemetry.points("catga.messages.handled")
    assert type_name.endswith("Ship") and outcome == "ok"


@message_name("test_otel.Deposited")
@dataclass(frozen=True)
class Deposited(Event):
    account: str
    amount: int


class Account(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


async def test_an_outbox_export_is_created_then_sent_by_the_relay_in_one_trace(telemetry: Telemetry) -> None:
    broker = MemoryBroker()
    publisher = catga.App(transport=MemoryTransport(broker=broker), outbox="memory://", name="publisher")
    consumer = catga.App(transport=MemoryTransport(broker=broker), name="consumer")
    telemetry.instrument(publisher)
    telemetry.instrument(consumer)

    @consumer.handler
    async def on_shipped(event: Shipped) -> None:
        pass

    publisher.export(Shipped)
    consumer.consume(Shipped)
    async with consumer, publisher:
        assert (await publisher.publish(Shipped("o-5"))).ok
        await wait_for(lambda: any(s.kind == SpanKind.CONSUMER for s in telemetry.finished()), "delivery")
        await wait_for(lambda: telemetry.sums("catga.outbox.messages") != {}, "the relay's count")
    spans = {s.name: s for s in telemetry.finished() if s.kind in (SpanKind.PRODUCER, SpanKind.CONSUMER)}
    created = spans["create test_otel.Shipped"]
    sent = spans["send test_otel.Shipped"]
    processed = spans["process test_otel.Shipped"]
    assert sent.parent is not None and sent.parent.span_id == created.context.span_id
    assert processed.parent is not None and processed.parent.span_id == created.context.span_id
    assert processed.context.trace_id == created.context.trace_id == sent.context.trace_id
    assert telemetry.sums("catga.outbox.messages") == {frozenset({("catga.outcome", "published")}): 1}


async def test_repository_reads_and_appends_are_spans_with_metrics(telemetry: Telemetry) -> None:
    catga.otel.instrument_backends(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    repo = Repository(MemoryEventStore(), Account)
    account = Account("a-1")
    account.raise_event(Deposited("a-1", 5))
    account.raise_event(Deposited("a-1", 7))
    await repo.save(account)
    assert (await repo.load("a-1")).balance == 12
    append, read = telemetry.finished()
    assert (append.name, read.name) == ("append events", "read events")
    assert append.kind == read.kind == SpanKind.CLIENT
    for span in (append, read):
        attrs = dict(span.attributes or {})
        assert attrs["db.system.name"] == "memory" and attrs["catga.stream.id"] == "Account-a-1"
        assert attrs["catga.count"] == 2
    assert telemetry.sums("catga.event_store.events") == {
        frozenset({"db.system.name": "memory", "db.operation.name": op}.items()): 2
        for op in ("append", "read")
    }


async def test_a_failed_append_is_an_error_span(telemetry: Telemetry) -> None:
    catga.otel.instrument_backends(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    store = MemoryEventStore()
    repo = Repository(store, Account)
    first, second = Account("a-2"), Account("a-2")
    first.raise_event(Deposited("a-2", 1))
    second.raise_event(Deposited("a-2", 2))
    await repo.save(first)
    with pytest.raises(ConcurrencyError):
        await repo.save(second)
    failed = telemetry.finished()[-1]
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "ConcurrencyError"


async def test_without_instrumentation_nothing_is_reported_and_no_context_is_added() -> None:
    assert catga._observe.probe is None
    broker = MemoryBroker()
    publisher = catga.App(transport=MemoryTransport(broker=broker), name="publisher")
    consumer = catga.App(transport=MemoryTransport(broker=broker), name="consumer")
    seen: list[dict[str, str]] = []

    @consumer.handler
    async def on_shipped(event: Shipped, ctx: catga.Context) -> None:
        seen.append(dict(ctx.metadata.headers or {}))

    publisher.export(Shipped)
    consumer.consume(Shipped)
    async with consumer, publisher:
        assert (await publisher.publish(Shipped("o-6"))).ok
        await wait_for(lambda: bool(seen), "the event")
    assert "traceparent" not in seen[0]


def test_trace_tags_need_field_names() -> None:
    with pytest.raises(ConfigurationError, match="field names"):
        catga.otel.trace_tags()
    with pytest.raises(ConfigurationError, match="attribute names"):
        catga.otel.trace_tags(order_id="")


@catga.otel.trace_tags("order_id", amount="order.amount")
@dataclass(frozen=True)
class Pay(Command[None]):
    order_id: str
    amount: int


async def test_trace_tags_rename_and_keep_numbers(telemetry: Telemetry) -> None:
    app = catga.App()
    telemetry.instrument(app)

    @app.handler
    async def pay(cmd: Pay) -> None:
        pass

    assert (await app.send(Pay("o-7", 42))).ok
    [span] = telemetry.finished()
    attrs = dict(span.attributes or {})
    assert attrs["catga.message.order_id"] == "o-7" and attrs["order.amount"] == 42


def test_the_grafana_dashboard_queries_only_metrics_catga_records() -> None:
    """docs/grafana/catga-dashboard.json (Prometheus exporter names) against catga.otel's instruments."""
    root = Path(__file__).resolve().parent.parent
    source = (root / "src" / "catga" / "otel.py").read_text()
    instruments = {
        name: kind for kind, name in re.findall(r'create_(counter|histogram)\(\s*"([^"]+)"', source)
    }
    exported = {
        name.replace(".", "_") + ("_total" if kind == "counter" else "_seconds_bucket")
        for name, kind in instruments.items()
    }
    dashboard = json.loads((root / "docs" / "grafana" / "catga-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b([a-z_]+(?:_total|_seconds_bucket))\b", e)}
    assert used and used <= exported, used - exported
    assert len(instruments) == 11 and len(used) == len(exported)  # every metric has a panel


async def test_lock_acquisitions_are_spans_and_their_waits_a_histogram(telemetry: Telemetry) -> None:
    catga.otel.instrument_backends(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    lock = MemoryLock()
    lease = await lock.acquire("orders", ttl=5)
    with pytest.raises(LockNotAcquiredError):
        await lock.acquire("orders", ttl=5, wait=0.05)
    await lease.release()
    acquired, refused = telemetry.finished()
    assert acquired.name == refused.name == "acquire lock" and acquired.kind == SpanKind.CLIENT
    assert dict(acquired.attributes or {})["catga.lock.key"] == "orders"
    assert dict(acquired.attributes or {})["catga.outcome"] == "acquired"
    assert refused.status.status_code == StatusCode.ERROR
    assert dict(refused.attributes or {})["catga.lock.wait"] == 0.05
    data = telemetry.reader.get_metrics_data()
    points = {
        frozenset(dict(p.attributes or {}).items()): p
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "catga.lock.wait.duration"
        for p in m.data.data_points
    }
    ok = points[frozenset({("catga.lock.system", "memory"), ("catga.outcome", "acquired")})]
    gave_up = points[frozenset({("catga.lock.system", "memory"), ("error.type", "LockNotAcquiredError")})]
    assert ok.count == gave_up.count == 1 and gave_up.sum >= 0.05 > ok.sum


class DownTransport(MemoryTransport):
    """A transport whose server is down: every raw publish fails."""

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        raise BackendUnavailableError("the broker is down", backend="memory")


async def test_a_failing_relay_counts_failed_then_dead_messages_and_the_dead_letter(
    telemetry: Telemetry,
) -> None:
    catga.otel.instrument_backends(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    store, dlq = MemoryOutboxStore(), MemoryDeadLetterQueue()
    relay = OutboxRelay(store, DownTransport(), dead_letters=dlq, max_attempts=2, retry_backoff=0.001)
    headers = {"Catga-Id": "5", "Catga-Type": "test_otel.Shipped"}
    await store.add(
        [
            OutboxMessage(
                id="5",
                destination="test_otel.Shipped",
                type_name="test_otel.Shipped",
                body=b"{}",
                headers=headers,
                created_at=time.time(),
            )
        ]
    )
    assert await relay.run_once() == 1  # attempt 1: failed, retried later
    deadline = time.monotonic() + 20
    while relay.dead == 0:  # attempt 2 once it is due again: dead
        assert time.monotonic() < deadline, "the relay never retried"
        await relay.run_once()
        await asyncio.sleep(0.005)
    assert telemetry.sums("catga.outbox.messages") == {
        frozenset({("catga.outcome", "failed")}): 1,
        frozenset({("catga.outcome", "dead")}): 1,
    }
    [(labels, n)] = telemetry.sums("catga.dead_letters").items()
    assert dict(labels)["catga.reason"] == "outbox" and n == 1
    sends = [s for s in telemetry.finished() if s.name == "send test_otel.Shipped"]
    assert len(sends) == 2 and all(s.status.status_code == StatusCode.ERROR for s in sends)
    assert dict(sends[0].attributes or {})["error.type"] == "BackendUnavailableError"
