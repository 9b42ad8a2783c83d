"""Correlation ids from other systems: catga ids, UUIDs, W3C trace ids and plain tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import catga
from catga import Command, Event, Metadata
from catga.errors import SerializationError
from catga.messages import parse_correlation_id, trace_id_of
from catga.testing import MemoryBus, capture

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Ship(Command[None]):
    order_id: str


@dataclass(frozen=True)
class Shipped(Event):
    order_id: str


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("777", 777),
        (" 42 ", 42),
        (str((1 << 63) - 1), (1 << 63) - 1),
        ("0", None),
        (str(1 << 63), None),
        ("3F2504E0-4F89-11D3-9A0C-0305E82C3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        ("3f2504e04f8911d39a0c0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        ("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        (TRACEPARENT, TRACE),
        ("req-17/eu:a=b+c@x.y_z", "req-17/eu:a=b+c@x.y_z"),
        ("", None),
        ("two words", None),
        ("x" * 129, None),
        ("é", None),
        ("line\nbreak", None),
    ],
)
def test_parse_correlation_id(text: str, parsed: int | str | None) -> None:
    assert parse_correlation_id(text) == parsed


@pytest.mark.parametrize(
    "bad",
    [
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case is not W3C
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
    ],
)
def test_malformed_traceparents_give_no_trace_id(bad: str) -> None:
    assert trace_id_of(bad) is None
    assert trace_id_of(f"01-{TRACE}-00f067aa0ba902b7-01-future") == TRACE  # later versions may add fields


def test_wire_headers_carry_a_string_correlation_and_fall_back_to_traceparent() -> None:
    md = Metadata(message_id=5, correlation_id="3f2504e0-4f89-11d3-9a0c-0305e82c3301", causation_id=4)
    headers = md.to_headers("Shipped")
    assert headers["Catga-Correlation-Id"] == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    assert Metadata.from_headers(headers)[1].correlation_id == md.correlation_id
    assert Metadata.from_headers({**headers, "Catga-Correlation-Id": "12"})[1].correlation_id == 12
    # A message written by another system: no catga correlation, a W3C trace.
    foreign = {"Catga-Type": "Shipped", "Catga-Id": "9", "traceparent": TRACEPARENT}
    _, parsed = Metadata.from_headers(foreign)
    assert parsed.correlation_id == TRACE and parsed.headers == {"traceparent": TRACEPARENT}
    assert Metadata.from_headers({**foreign, "traceparent": "garbage"})[1].correlation_id is None
    with pytest.raises(SerializationError, match="is not a correlation id"):
        Metadata.from_headers({**headers, "Catga-Correlation-Id": "two words"})


async def test_a_foreign_correlation_flows_to_every_message_the_handler_causes() -> None:
    bus = MemoryBus()
    edge, shipping = bus.app("edge"), bus.app("shipping")

    @edge.handler
    async def ship(cmd: Ship, ctx: catga.Context) -> None:
        await ctx.publish(Shipped(cmd.order_id))

    @shipping.handler
    async def on_shipped(event: Shipped) -> None: ...

    edge.export(Shipped)
    shipping.consume(Shipped)
    sent, received = capture(edge), capture(shipping)
    async with bus.running(shipping, edge):
        result = await edge.send(Ship("o-1"), metadata=Metadata(message_id=100, correlation_id="req-17"))
        assert result.ok, result.error
        await received.wait_for(Shipped)
    [root, event] = sent.entries
    assert root.metadata.correlation_id == "req-17"
    assert event.metadata.correlation_id == "req-17" and event.metadata.causation_id == 100
    assert received.published[0].metadata.correlation_id == "req-17"  # across the (in-memory) wire
