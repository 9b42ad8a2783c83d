"""A scripted run of the orders example: what ``catga demo`` shows.

:func:`run_demo` builds a :class:`catga.App` from two URLs (in-memory by default), registers the
example's handlers, runs eight steps — a successful order, a query, a declined payment rolled back by
compensation, an out-of-stock order, a cancellation, a second cancellation, and two more queries — and
returns a :class:`DemoReport` saying, per step, what was sent, what happened (events, notifications,
compensation) and whether the outcome was the expected one.

On ``memory://`` everything runs in one app. With a NATS or Redis transport the notifications move to
a second app, ``notifications``, as if it were another process: the ``orders`` app exports the
example's events to the transport and ``notifications`` consumes the ones it e-mails about; after each
step the demo waits until every exported event has arrived there. On a remote server the demo works in
a namespace of its own (``prefix=demo_<random>``, replacing any ``prefix`` in the URLs) and deletes it
at the end, so it can run again and leaves nothing behind.

Run it without the CLI with ``python -m catga.examples.orders_demo [TRANSPORT_URL [STORE_URL]]``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from catga.app import App
from catga.backends import BackendUrl, import_backend, parse_url, redact_url
from catga.examples.orders import (
    EVENT_TYPES,
    NOTIFIED_EVENT_TYPES,
    CancelOrder,
    CreateOrder,
    GetOrder,
    Inventory,
    OrderView,
    Shop,
    register,
    register_notifications,
)
from catga.messages import Event
from catga.result import Result

__all__ = ("DemoReport", "DemoStep", "run_demo")

MEMORY = "memory://"
_log = logging.getLogger("catga.examples.orders_demo")
#: Seconds to wait, after a step, for its events to arrive through a remote transport.
SETTLE_TIMEOUT = 10.0


@dataclass
class DemoStep:
    """One step of the scenario and what happened.

    Attributes:
        number: 1-based step number.
        title: what the step does.
        expected: the expected outcome (``"ok"`` or an error code).
        outcome: ``"ok"`` or the failed Result's code.
        detail: the value (ok) or error message (failed), as text.
        ok: whether ``outcome`` matched ``expected`` and the step's state check passed.
        lines: ``(kind, text)`` of what happened during the step (events, notifications...).
    """

    number: int
    title: str
    expected: str
    outcome: str = ""
    detail: str = ""
    ok: bool = False
    lines: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DemoReport:
    """The whole run.

    Attributes:
        transport: the transport URL used (password hidden).
        store: the event store URL used (password hidden).
        namespace: the prefix the demo worked under on remote servers (None in memory).
        steps: every step, in order.
        stock: stock per SKU at the end.
        streams: events per order stream at the end.
    """

    transport: str
    store: str
    namespace: str | None = None
    steps: list[DemoStep] = field(default_factory=list)
    stock: dict[str, int] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every step behaved as expected."""
        return bool(self.steps) and all(s.ok for s in self.steps)


Action = Callable[[], Awaitable[Result[Any]]]
Check = Callable[[Result[Any]], str | None]


def _describe(result: Result[Any]) -> tuple[str, str]:
    if result.ok:
        value = result.value
        if isinstance(value, OrderView):
            text = (
                f"order {value.order_id}: {value.status}, {value.quantity} × {value.sku}, "
                f"total {value.total // 100}.{value.total % 100:02d}, stream version {value.version}"
            )
        else:
            text = "done" if value is None else str(value)
        return "ok", text
    return str(result.code), str(result.error)


class _Tally:
    """Counts events sent by the orders app and received by the notifications app."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._arrived = asyncio.Event()

    async def on_sent(self, event: Event) -> None:
        self.sent += 1

    async def on_received(self, event: Event) -> None:
        self.received += 1
        self._arrived.set()

    async def settle(self, timeout: float) -> str | None:
        """Wait until everything sent arrived; return a problem description if it did not in time."""
        try:
            async with asyncio.timeout(timeout):
                while self.received < self.sent:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            missing = self.sent - self.received
            return f"{missing} event(s) did not arrive through the transport within {timeout:g} s"
        return None


def _in_namespace(url: str, namespace: str) -> str:
    """``url`` with its ``prefix`` query option set to ``namespace``."""
    base, _, query = url.partition("?")
    options = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "prefix"]
    return f"{base}?{urlencode([*options, ('prefix', namespace)])}"


async def _drop_namespace(spec: BackendUrl) -> None:
    """Delete what the demo created under ``spec.prefix`` on a NATS or Redis server."""
    import_backend(spec.backend)
    if spec.backend == "nats":
        import nats.js.errors

        from catga.nats import NatsConnection, nats_layout

        upper, layout = spec.prefix.upper(), nats_layout(spec.prefix)
        owned = (
            f"{upper}_",
            f"KV_{upper}_",
            f"KV_{layout.dead_letter_bucket}",
            f"KV_{layout.idempotency_bucket}",
            f"KV_{layout.locks_bucket}",
        )
        async with await NatsConnection.connect(spec.address, name="catga-demo-cleanup") as conn:
            for info in await conn.js.streams_info():
                name = info.config.name or ""
                if name.startswith(owned):
                    with suppress(nats.js.errors.NotFoundError):
                        await conn.js.delete_stream(name)
        return
    from catga.redis import RedisClient

    async with RedisClient.from_url(spec.address, prefix=spec.prefix) as client:
        cursor = b"0"
        while True:
            cursor, keys = await client.execute("SCAN", cursor, "MATCH", f"{spec.prefix}:*", "COUNT", 500)
            if keys:
                await client.execute("UNLINK", *keys)
            if cursor in (b"0", 0, "0"):
                break


async def run_demo(
    transport: str = MEMORY,
    store: str = MEMORY,
    *,
    on_step: Callable[[DemoStep], None] | None = None,
    settle_timeout: float = SETTLE_TIMEOUT,
) -> DemoReport:
    """Run the orders scenario and report each step.

    Args:
        transport: where events travel: ``memory://`` (default), ``nats://...``, ``redis://...``.
        store: where order streams live: ``memory://`` (default), ``nats://...``, ``redis://...``.
        on_step: called with each finished step (the CLI prints as it goes).
        settle_timeout: seconds to wait after a step for its events to arrive through a remote
            transport (a step whose events do not all arrive is reported as not ok).

    Returns:
        The report; ``report.ok`` tells whether every step behaved as expected.

    Raises:
        ConfigurationError: an unsupported URL, or a backend whose optional dependency is missing.
        BackendUnavailableError: a server cannot be reached.
    """
    specs = (parse_url(transport, "transport"), parse_url(store, "store"))
    namespace = f"demo_{uuid.uuid4().hex[:8]}" if any(s.backend != "memory" for s in specs) else None
    if namespace is not None:
        transport, store = (
            url if spec.backend == "memory" else _in_namespace(url, namespace)
            for url, spec in zip((transport, store), specs, strict=True)
        )
    report = DemoReport(redact_url(transport), redact_url(store), namespace)
    started: list[bool] = []  # _run appends once the apps are started (and may have written data)
    ran = False
    try:
        await _run(report, transport, store, specs[0].backend != "memory", on_step, settle_timeout, started)
        ran = True
    finally:
        cleaned: set[str] = set()
        for url in (transport, store) if namespace is not None and started else ():
            spec = parse_url(url)
            if spec.backend != "memory" and spec.address not in cleaned:
                cleaned.add(spec.address)
                try:
                    await _drop_namespace(spec)
                except Exception as exc:  # never hide the run's own error behind the cleanup's
                    level = logging.WARNING if ran else logging.DEBUG
                    _log.log(level, "could not delete the demo namespace %s on %s: %s", namespace, spec, exc)
    return report


async def _run(
    report: DemoReport,
    transport: str,
    store: str,
    remote_transport: bool,
    on_step: Callable[[DemoStep], None] | None,
    settle_timeout: float,
    started: list[bool],
) -> None:
    app = App(transport=transport, store=store, name="orders")
    shop = Shop(app.store, Inventory({"widget": 10, "gadget": 1}))
    tally: _Tally | None = None
    notifications: App | None = None
    if remote_transport:
        # The notifications service is another app fed by the transport, as another process would be.
        tally = _Tally()
        register(app, shop, notifications=False)
        for event_type in EVENT_TYPES:
            app.export(event_type)
        notifications = App(transport=transport, name="notifications")
        register_notifications(notifications, shop)
        for event_type in NOTIFIED_EVENT_TYPES:
            app.handler(tally.on_sent, message_type=event_type)
            notifications.handler(tally.on_received, message_type=event_type)
            notifications.consume(event_type)
    else:
        register(app, shop)

    def stock_is(sku: str, n: int) -> Check:
        return lambda _r: (
            None if shop.inventory.stock[sku] == n else f"{sku} stock is {shop.inventory.stock[sku]}"
        )

    def status_is(status: str, version: int) -> Check:
        def check(result: Result[Any]) -> str | None:
            view = result.value
            if isinstance(view, OrderView) and (view.status, view.version) == (status, version):
                return None
            return f"expected {status} at version {version}, got {view!r}"

        return check

    script: list[tuple[str, str, Action, Check | None]] = [
        (
            "CreateOrder A-1001: alice buys 2 × widget at 12.50",
            "ok",
            lambda: app.send(CreateOrder("A-1001", "alice", "widget", 2, 1250)),
            stock_is("widget", 8),
        ),
        ("GetOrder A-1001", "ok", lambda: app.send(GetOrder("A-1001")), status_is("created", 0)),
        (
            "CreateOrder A-1002: bob buys 1 × gadget at 49.99 with a card that is declined",
            "payment_declined",
            lambda: app.send(CreateOrder("A-1002", "bob", "gadget", 1, 4999, card="tok_declined")),
            stock_is("gadget", 1),
        ),
        (
            "CreateOrder A-1003: carol buys 5 × gadget (only 1 in stock)",
            "conflict",
            lambda: app.send(CreateOrder("A-1003", "carol", "gadget", 5, 4999)),
            stock_is("gadget", 1),
        ),
        (
            "CancelOrder A-1001: alice changed her mind",
            "ok",
            lambda: app.send(CancelOrder("A-1001", "changed my mind")),
            stock_is("widget", 10),
        ),
        (
            "CancelOrder A-1001 again",
            "conflict",
            lambda: app.send(CancelOrder("A-1001", "double click")),
            None,
        ),
        ("GetOrder A-1001", "ok", lambda: app.send(GetOrder("A-1001")), status_is("cancelled", 1)),
        ("GetOrder A-9999 (never created)", "not_found", lambda: app.send(GetOrder("A-9999")), None),
    ]
    async with AsyncExitStack() as stack:
        if notifications is not None:
            await stack.enter_async_context(notifications)  # subscribed before anything is published
            started.append(True)
        await stack.enter_async_context(app)
        started.append(True)
        for number, (title, expected, action, check) in enumerate(script, 1):
            step = DemoStep(number, title, expected)
            mark = len(shop.log)
            result = await action()
            step.outcome, step.detail = _describe(result)
            problem = check(result) if check is not None else None
            if tally is not None:
                problem = await tally.settle(settle_timeout) or problem
            step.ok = step.outcome == expected and problem is None
            step.lines.extend(shop.log[mark:])
            if problem is not None:
                step.lines.append(("problem", problem))
            report.steps.append(step)
            if on_step is not None:
                on_step(step)
        report.stock = dict(shop.inventory.stock)
        for order_id in ("A-1001", "A-1002", "A-1003"):
            stream = shop.repository.stream_id(order_id)
            report.streams[stream] = len(await app.store.read(stream))


def main() -> None:  # pragma: no cover - exercised through `catga demo`
    """Print the scenario as plain text (``python -m catga.examples.orders_demo [TRANSPORT [STORE]]``)."""
    report = asyncio.run(run_demo(*sys.argv[1:3]))
    for step in report.steps:
        print(f"{step.number}. {step.title}")
        for kind, text in step.lines:
            print(f"     {kind:<10} {text}")
        print(f"   -> {step.outcome}: {step.detail} ({'as expected' if step.ok else 'UNEXPECTED'})")
    print("all steps as expected" if report.ok else "some steps did not behave as expected")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
