"""The orders example as a durable workflow: reserve stock → charge → wait for shipment.

:func:`register_workflow` puts the ``place_order`` workflow on a :class:`catga.App`:

1. ``reserve_stock`` (compensated by ``release_stock``),
2. ``charge_card`` (compensated by ``refund_card``; the card ``tok_declined`` is declined),
3. ``wf.wait_for(ShipmentSent, match={"order_id": ...}, timeout=order.ship_within)``: the warehouse
   publishes :class:`ShipmentSent`; when it does not arrive in time the workflow raises
   :class:`ShipmentTimeoutError`, so the refund and the release run (in reverse order).

Each step is recorded in the app's workflow store before the next runs, so the workflow survives a
restart on a durable store (``App(workflows="postgresql://...")``). :func:`run_workflow_demo` is what
``catga demo --workflow`` runs: a shipped order, a declined card, and a shipment that never comes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta

from catga.app import App
from catga.backends import parse_url, redact_url
from catga.examples.orders_demo import DemoReport, DemoStep, _drop_namespace, _in_namespace
from catga.messages import Event
from catga.workflows import CANCELLED, COMPENSATED, COMPLETED, FAILED, SLEEPING, Workflow, WorkflowInstance

__all__ = (
    "OrderRequest",
    "PaymentDeclinedError",
    "ShipmentSent",
    "ShipmentTimeoutError",
    "WorkflowShop",
    "register_workflow",
    "run_workflow_demo",
)

_log = logging.getLogger("catga.examples.orders_workflow")
MEMORY = "memory://"
#: Seconds the demo's W-3 waits for :class:`ShipmentSent` (which never comes).
SHIP_TIMEOUT = 1.0


@dataclass(frozen=True)
class OrderRequest:
    """The workflow's input: who buys what, with which card. Amounts are integer cents."""

    order_id: str
    customer: str
    sku: str
    quantity: int
    total: int
    card: str = "tok_visa"
    ship_within: float = 86_400.0
    """Seconds to wait for :class:`ShipmentSent` before refunding and releasing."""


@dataclass(frozen=True)
class ShipmentSent(Event):
    """The warehouse shipped an order (what ``place_order`` waits for)."""

    order_id: str
    tracking: str


class ShipmentTimeoutError(Exception):
    """No :class:`ShipmentSent` arrived before the workflow's timeout."""


class PaymentDeclinedError(Exception):
    """The card was declined."""


@dataclass
class WorkflowShop:
    """The outside world the steps act on: stock, card charges, and a log of what happened.

    Attributes:
        stock: units per SKU.
        charges: charge id → amount, for the charges not refunded.
        log: ``(kind, text)`` lines, in order (what the demo prints).
    """

    stock: dict[str, int]
    charges: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)


def register_workflow(app: App, shop: WorkflowShop) -> None:
    """Register the ``place_order`` workflow and its steps on ``app``.

    Args:
        app: the app whose workflow engine runs it.
        shop: the stock and charges the steps change.
    """

    async def reserve_stock(order: OrderRequest) -> str:
        left = shop.stock.get(order.sku, 0)
        if left < order.quantity:
            raise ValueError(f"only {left} × {order.sku} in stock, {order.quantity} asked")
        shop.stock[order.sku] = left - order.quantity
        shop.log.append(("step", f"reserve_stock: {order.quantity} × {order.sku} reserved"))
        return f"{order.sku}:{order.quantity}"

    async def release_stock(reservation: str) -> None:
        sku, _, quantity = reservation.partition(":")
        shop.stock[sku] += int(quantity)
        shop.log.append(("compensate", f"release_stock: {quantity} × {sku} back in stock"))

    async def charge_card(order: OrderRequest) -> str:
        if order.card == "tok_declined":
            shop.log.append(("declined", f"charge_card: card of {order.customer} declined"))
            raise PaymentDeclinedError(f"card of {order.customer} declined")
        charge = f"ch-{order.order_id}"
        shop.charges[charge] = order.total
        shop.log.append(
            ("step", f"charge_card: {order.total // 100}.{order.total % 100:02d} charged ({charge})")
        )
        return charge

    async def refund_card(charge: str) -> None:
        amount = shop.charges.pop(charge)
        shop.log.append(
            ("compensate", f"refund_card: {amount // 100}.{amount % 100:02d} refunded ({charge})")
        )

    async def place_order(wf: Workflow, order: OrderRequest) -> str:
        await wf.step(reserve_stock, order, name="reserve_stock", compensate=release_stock)
        await wf.step(charge_card, order, name="charge_card", compensate=refund_card)
        shipped = await wf.wait_for(
            ShipmentSent, match={"order_id": order.order_id}, timeout=timedelta(seconds=order.ship_within)
        )
        if shipped is None:
            raise ShipmentTimeoutError(f"no shipment for {order.order_id} within {order.ship_within:g} s")
        return shipped.tracking

    app.workflows.register(place_order, name="place_order", events=[ShipmentSent])


async def run_workflow_demo(
    workflows: str = MEMORY,
    *,
    on_step: Callable[[DemoStep], None] | None = None,
    ship_timeout: float = SHIP_TIMEOUT,
    timeout: float = 30.0,
) -> DemoReport:
    """Run three orders through ``place_order`` and report each step.

    1. W-1 (alice) is reserved and charged, then waits for its shipment; 2. the warehouse publishes
    :class:`ShipmentSent` and W-1 completes; 3. W-2 (bob, declined card) is compensated: its stock is
    released; 4. W-3 (carol) is never shipped: after ``ship_timeout`` it is refunded and released.

    Args:
        workflows: the workflow store URL: ``memory://`` (default), ``postgresql://...``,
            ``redis://...``, ``nats://...``. On Redis and NATS the demo works under a fresh prefix
            and deletes it at the end; on PostgreSQL its rows stay in ``catga_workflows`` (ids carry a
            random suffix, so runs do not collide).
        on_step: called with each finished step.
        ship_timeout: seconds W-3 waits for its shipment (the others wait a day).
        timeout: seconds to wait for each workflow to reach the state a step expects.

    Returns:
        The report (``report.store`` is the workflow store URL, password hidden).
    """
    spec = parse_url(workflows, "workflows")
    run = uuid.uuid4().hex[:8]
    namespace = None
    if spec.backend in ("redis", "nats"):
        namespace = f"demo_{run}"
        workflows = _in_namespace(workflows, namespace)
    report = DemoReport(MEMORY, redact_url(workflows), namespace)
    shop = WorkflowShop({"widget": 10, "gadget": 1})
    app = App(workflows=workflows, name="orders-workflow")
    app.workflows.poll_interval = 0.2
    register_workflow(app, shop)
    started = False
    try:
        async with app:
            started = True
            await _script(app, shop, report, run, on_step, timeout, ship_timeout)
    finally:
        if namespace is not None and started:
            try:
                await _drop(workflows)
            except Exception as exc:  # never hide the run's own error behind the cleanup's
                _log.warning("could not delete the demo namespace %s: %s", namespace, exc)
    report.stock = dict(shop.stock)
    return report


async def _drop(url: str) -> None:
    spec = parse_url(url)
    if spec.backend == "nats":
        import nats.js.errors

        from catga.nats import NatsConnection

        async with await NatsConnection.connect(spec.address, name="catga-demo-cleanup") as conn:
            with suppress(nats.js.errors.NotFoundError):
                await conn.js.delete_stream(f"KV_{spec.prefix}_workflows")
    await _drop_namespace(spec)


async def _until(app: App, wid: str, statuses: tuple[str, ...], timeout: float) -> WorkflowInstance | None:
    """The workflow's state once its status is one of ``statuses`` (None if not within ``timeout``)."""
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                state = await app.workflow_status(wid)
                if state is not None and state.status in statuses:
                    return state
                await asyncio.sleep(0.02)  # polling the store for a condition, under a deadline
    return None


async def _script(
    app: App,
    shop: WorkflowShop,
    report: DemoReport,
    run: str,
    on_step: Callable[[DemoStep], None] | None,
    timeout: float,
    ship_timeout: float,
) -> None:
    ids = {name: f"order-{name}-{run}" for name in ("W-1", "W-2", "W-3")}

    def finish(step: DemoStep, state: WorkflowInstance | None, mark: int, problem: str | None) -> None:
        step.outcome = "timeout" if state is None else state.status
        if state is not None:
            step.detail = state.error or (
                str(app.workflows.result(state)) if state.status == COMPLETED else f"workflow {state.id}"
            )
        else:
            step.detail = f"not {step.expected} within {timeout:g} s"
        step.ok = step.outcome == step.expected and problem is None
        step.lines.extend(shop.log[mark:])
        if problem is not None:
            step.lines.append(("problem", problem))
        report.steps.append(step)
        if on_step is not None:
            on_step(step)

    def stock_is(sku: str, n: int) -> str | None:
        return None if shop.stock[sku] == n else f"{sku} stock is {shop.stock[sku]}, expected {n}"

    # 1. alice: reserved, charged, then waiting for the warehouse.
    step, mark = DemoStep(1, "start place_order W-1: alice buys 2 × widget at 25.00", SLEEPING), len(shop.log)
    await app.start_workflow("place_order", OrderRequest("W-1", "alice", "widget", 2, 2500), id=ids["W-1"])
    state = await _until(app, ids["W-1"], (SLEEPING, COMPLETED, COMPENSATED, FAILED), timeout)
    if state is not None and state.status == SLEEPING:
        shop.log.append(("wait", "waiting for ShipmentSent(order_id=W-1)"))
    finish(step, state, mark, stock_is("widget", 8))

    # 2. the warehouse ships W-1.
    step, mark = DemoStep(2, "publish ShipmentSent W-1 (tracking TRK-1)", COMPLETED), len(shop.log)
    shop.log.append(("event", "ShipmentSent(order_id=W-1, tracking=TRK-1)"))
    (await app.publish(ShipmentSent("W-1", "TRK-1"))).unwrap()
    state = await _until(app, ids["W-1"], (COMPLETED, COMPENSATED, FAILED, CANCELLED), timeout)
    finish(step, state, mark, None if "ch-W-1" in shop.charges else "W-1 is not charged")

    # 3. bob's card is declined: the reservation is released.
    step = DemoStep(3, "start place_order W-2: bob buys 1 × gadget with a declined card", COMPENSATED)
    mark = len(shop.log)
    await app.start_workflow(
        "place_order", OrderRequest("W-2", "bob", "gadget", 1, 4999, card="tok_declined"), id=ids["W-2"]
    )
    state = await _until(app, ids["W-2"], (COMPLETED, COMPENSATED, FAILED), timeout)
    finish(step, state, mark, stock_is("gadget", 1))

    # 4. carol's shipment never comes: refunded and released after the timeout.
    step = DemoStep(4, "start place_order W-3: carol buys 3 × widget; no shipment comes", COMPENSATED)
    mark = len(shop.log)
    await app.start_workflow(
        "place_order",
        OrderRequest("W-3", "carol", "widget", 3, 3000, ship_within=ship_timeout),
        id=ids["W-3"],
    )
    waiting = await _until(app, ids["W-3"], (SLEEPING, COMPLETED, COMPENSATED, FAILED), timeout)
    if waiting is not None and waiting.status == SLEEPING:
        shop.log.append(("wait", "waiting for ShipmentSent(order_id=W-3)"))
    state = await _until(app, ids["W-3"], (COMPLETED, COMPENSATED, FAILED), timeout)
    problem = stock_is("widget", 8) or ("W-3 was not refunded" if "ch-W-3" in shop.charges else None)
    finish(step, state, mark, problem)
