"""A scripted run of the orders example: what ``catga demo`` shows.

:func:`run_demo` builds a :class:`catga.App` (in-memory by default), registers the example's handlers,
runs eight steps — a successful order, a query, a declined payment rolled back by compensation, an
out-of-stock order, a cancellation, a second cancellation, and two more queries — and returns a
:class:`DemoReport` saying, per step, what was sent, what happened (events, notifications,
compensation) and whether the outcome was the expected one.

Run it without the CLI with ``python -m catga.examples.orders_demo``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from catga.examples.orders import (
    CancelOrder,
    CreateOrder,
    GetOrder,
    Inventory,
    OrderView,
    Shop,
    register,
)
from catga.result import Result

__all__ = ("DemoReport", "DemoStep", "run_demo")

MEMORY = "memory://"


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
        transport: the transport URL used.
        store: the event store URL used.
        steps: every step, in order.
        stock: stock per SKU at the end.
        streams: events per order stream at the end.
    """

    transport: str
    store: str
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


async def _settle(log: list[tuple[str, str]], remote: bool) -> None:
    """Wait until asynchronous event handlers are done (remote transports); no-op in memory."""
    if not remote:
        return
    seen, stable, waited = len(log), 0, 0.0
    while stable < 3 and waited < 3.0:
        await asyncio.sleep(0.05)
        waited += 0.05
        stable = stable + 1 if len(log) == seen else 0
        seen = len(log)


def _new_app(transport: str, store: str) -> Any:
    """The app, with an in-memory event store object for ``memory://`` (so the demo can read it)."""
    import catga
    from catga.errors import ConfigurationError

    if store.lower().startswith("memory"):
        from catga.memory import MemoryEventStore

        app = catga.App(transport=transport, store=MemoryEventStore())
    else:
        app = catga.App(transport=transport, store=store)
    if app.store is None:
        raise ConfigurationError(f"the app built no event store for store={store!r}; the demo needs one")
    return app


async def run_demo(
    transport: str = MEMORY,
    store: str = MEMORY,
    *,
    on_step: Callable[[DemoStep], None] | None = None,
) -> DemoReport:
    """Run the orders scenario and report each step.

    Args:
        transport: where events travel (``memory://`` default).
        store: where order streams live (``memory://`` default).
        on_step: called with each finished step (the CLI prints as it goes).

    Returns:
        The report; ``report.ok`` tells whether every step behaved as expected.

    Raises:
        ConfigurationError: an unsupported URL.
    """
    app = _new_app(transport, store)
    event_store = app.store
    shop = Shop(event_store, Inventory({"widget": 10, "gadget": 1}))
    register(app, shop)
    report = DemoReport(transport, store)
    remote = not transport.startswith("memory://")

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
    async with app:
        for number, (title, expected, action, check) in enumerate(script, 1):
            step = DemoStep(number, title, expected)
            mark = len(shop.log)
            result = await action()
            await _settle(shop.log, remote)
            step.outcome, step.detail = _describe(result)
            problem = check(result) if check is not None else None
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
            report.streams[stream] = len(await event_store.read(stream))
    return report


def main() -> None:  # pragma: no cover - exercised through `catga demo`
    """Print the scenario as plain text (``python -m catga.examples.orders_demo``)."""
    report = asyncio.run(run_demo())
    for step in report.steps:
        print(f"{step.number}. {step.title}")
        for kind, text in step.lines:
            print(f"     {kind:<10} {text}")
        print(f"   -> {step.outcome}: {step.detail} ({'as expected' if step.ok else 'UNEXPECTED'})")
    print("all steps as expected" if report.ok else "some steps did not behave as expected")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
