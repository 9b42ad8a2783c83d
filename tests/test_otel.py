"""catga.otel: spans and metrics per handled message, trace context carried by exported events."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import catga
import catga.otel
from catga import Command, Event
from catga.errors import ConfigurationError, NotFoundError
from catga.memory import MemoryBroker, MemoryTransport
from catga.messages import message_name


@dataclass(frozen=True)
class Ship(Command[str]):
    order_id: str


@dataclass(frozen=True)
class Charge(Command[None]):
    order_id: str


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
def telemetry() -> Telemetry:
    return Telemetry()


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


async def test_an_exported_event_continues_the_trace_in_the_consuming_app(telemetry: Telemetry) -> None:
    broker = MemoryBroker()
    publisher = catga.App(transport=MemoryTransport(broker=broker), name="publisher")
    consumer = catga.App(transport=MemoryTransport(broker=broker), name="consumer")
    telemetry.instrument(publisher)
    telemetry.instrument(consumer)
    seen: list[dict[str, str]] = []

    @consumer.handler
    async def on_shipped(event: Shipped, ctx: catga.Context) -> None:
        seen.append(dict(ctx.metadata.headers or {}))

    publisher.export(Shipped)
    consumer.consume(Shipped)
    async with consumer, publisher:
        assert (await publisher.publish(Shipped("o-3"))).ok
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline, "the event never reached the consumer"
            await asyncio.sleep(0.01)
    assert "traceparent" in seen[0]
    spans = [s for s in telemetry.finished() if s.name == "publish Shipped"]
    assert len(spans) == 2
    sent, received = sorted(spans, key=lambda s: s.start_time or 0)
    assert received.context.trace_id == sent.context.trace_id
    assert received.parent is not None and received.parent.span_id == sent.context.span_id
    assert received.kind == SpanKind.CONSUMER


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
