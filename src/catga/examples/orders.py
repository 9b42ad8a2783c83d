"""The orders example: create with stock reservation and payment, rollback on failure, cancel, query.

Everything an order service needs, on catga's public API:

* **commands** :class:`CreateOrder` (reserves stock, takes payment, saves the event-sourced
  :class:`Order`) and :class:`CancelOrder`; **query** :class:`GetOrder`;
* **events** :class:`OrderCreated`, :class:`OrderCancelled` (stored in the order's stream and
  published), :class:`StockReserved`, :class:`StockReleased`, :class:`PaymentFailed` (published);
* **handlers** as bound methods of :class:`OrderService`; a declined payment raises
  :class:`PaymentDeclinedError` and the create handler's **compensation hook**
  (:meth:`OrderService.undo_create_order`) releases the reservation and publishes ``PaymentFailed``;
* **event handlers** in :class:`Notifications` (the e-mails a shop would send) and
  :class:`InventoryLog`.

:func:`register` wires it onto a :class:`catga.App` (or a bare :class:`~catga.mediator.Mediator`),
optionally without the notifications, which :func:`register_notifications` puts on another app;
``catga demo`` (:mod:`catga.examples.orders_demo`) runs a scripted scenario against it. Amounts are
integer cents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from catga.context import Context
from catga.errors import ConflictError, HandlerError, NotFoundError, ValidationError
from catga.eventsourcing import Aggregate, Repository, applies
from catga.messages import Command, Event, Query
from catga.protocols import EventStore

if TYPE_CHECKING:
    from catga.app import App
    from catga.mediator import Mediator

__all__ = (
    "EVENT_TYPES",
    "NOTIFIED_EVENT_TYPES",
    "AuditLog",
    "CancelOrder",
    "CreateOrder",
    "GetOrder",
    "Inventory",
    "InventoryLog",
    "Notifications",
    "Order",
    "OrderCancelled",
    "OrderCreated",
    "OrderService",
    "OrderView",
    "PaymentDeclinedError",
    "PaymentFailed",
    "PaymentGateway",
    "Shop",
    "StockReleased",
    "StockReserved",
    "register",
    "register_notifications",
)

# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateOrder(Command[str]):
    """Place an order: reserve ``quantity`` of ``sku`` and charge ``card``. Returns the order id."""

    order_id: str
    customer: str
    sku: str
    quantity: int
    unit_price: int
    card: str = "tok_visa"


@dataclass(frozen=True)
class CancelOrder(Command[None]):
    """Cancel a created order and give its stock back."""

    order_id: str
    reason: str


@dataclass(frozen=True)
class OrderView:
    """What :class:`GetOrder` returns."""

    order_id: str
    customer: str
    sku: str
    quantity: int
    total: int
    status: str
    version: int


@dataclass(frozen=True)
class GetOrder(Query[OrderView]):
    """Read an order back from its event stream."""

    order_id: str


@dataclass(frozen=True)
class OrderCreated(Event):
    """An order was placed and paid."""

    order_id: str
    customer: str
    sku: str
    quantity: int
    total: int


@dataclass(frozen=True)
class OrderCancelled(Event):
    """An order was cancelled."""

    order_id: str
    customer: str
    reason: str


@dataclass(frozen=True)
class StockReserved(Event):
    """Stock was set aside for an order."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class StockReleased(Event):
    """Reserved stock went back on the shelf (payment failed, or the order was cancelled)."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class PaymentFailed(Event):
    """The payment for an order was declined; the order was not created."""

    order_id: str
    customer: str
    reason: str


class PaymentDeclinedError(HandlerError):
    """Raised by the payment gateway when a card is declined (a business error, not a crash)."""

    code = "payment_declined"


# -- the aggregate -----------------------------------------------------------------------------


class Order(Aggregate):
    """An event-sourced order: ``OrderCreated`` then, maybe, ``OrderCancelled``."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer = ""
        self.sku = ""
        self.quantity = 0
        self.total = 0
        self.status = "new"

    @classmethod
    def place(cls, order_id: str, customer: str, sku: str, quantity: int, total: int) -> Order:
        """A new order (not yet saved)."""
        order = cls(order_id)
        order.raise_event(OrderCreated(order_id, customer, sku, quantity, total))
        return order

    def cancel(self, reason: str) -> None:
        """Cancel the order.

        Raises:
            ConflictError: it is already cancelled.
        """
        if self.status == "cancelled":
            raise ConflictError(f"order {self.id} is already cancelled; nothing to do")
        self.raise_event(OrderCancelled(self.id, self.customer, reason))

    @applies(OrderCreated)
    def _created(self, event: OrderCreated) -> None:
        self.customer, self.sku, self.quantity, self.total = (
            event.customer,
            event.sku,
            event.quantity,
            event.total,
        )
        self.status = "created"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"

    def view(self) -> OrderView:
        """The read model of this order."""
        return OrderView(
            self.id, self.customer, self.sku, self.quantity, self.total, self.status, self.version
        )


# -- collaborators -----------------------------------------------------------------------------


@dataclass
class Inventory:
    """Stock on hand per SKU (in memory)."""

    stock: dict[str, int] = field(default_factory=dict)

    def reserve(self, order_id: str, sku: str, quantity: int) -> None:
        """Take ``quantity`` of ``sku`` off the shelf.

        Raises:
            NotFoundError: unknown SKU.
            ConflictError: not enough stock.
        """
        if sku not in self.stock:
            raise NotFoundError(
                f"unknown product {sku!r} in order {order_id}; choose one of {sorted(self.stock)}"
            )
        have = self.stock[sku]
        if have < quantity:
            raise ConflictError(
                f"order {order_id} wants {quantity} × {sku} but only {have} in stock; order fewer or later"
            )
        self.stock[sku] = have - quantity

    def release(self, sku: str, quantity: int) -> None:
        """Put ``quantity`` of ``sku`` back."""
        self.stock[sku] = self.stock.get(sku, 0) + quantity


@dataclass
class PaymentGateway:
    """A fake card processor: cards in ``declined`` are refused; ``charges`` records the rest."""

    declined: frozenset[str] = frozenset({"tok_declined"})
    charges: list[tuple[str, int]] = field(default_factory=list)

    async def charge(self, order_id: str, card: str, amount: int) -> None:
        """Charge ``amount`` cents.

        Raises:
            PaymentDeclinedError: the card is declined.
        """
        if card in self.declined:
            raise PaymentDeclinedError(f"card {card} was declined for order {order_id}; ask for another card")
        self.charges.append((order_id, amount))


@dataclass
class Shop:
    """Everything the handlers share: stock, payments, the order repository and a log of what happened.

    ``log`` receives ``(kind, text)`` pairs: ``"event"``, ``"notify"``, ``"compensate"``, ``"inventory"``.
    """

    store: EventStore
    inventory: Inventory
    payments: PaymentGateway = field(default_factory=PaymentGateway)
    log: list[tuple[str, str]] = field(default_factory=list)
    repository: Repository[Order] = field(init=False)

    def __post_init__(self) -> None:
        self.repository = Repository(self.store, Order)


# -- handlers ----------------------------------------------------------------------------------


class OrderService:
    """Command and query handlers of the orders example."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def create_order(self, cmd: CreateOrder, ctx: Context) -> str:
        """Reserve stock, take payment, save the order, publish ``StockReserved`` and ``OrderCreated``."""
        if cmd.quantity < 1:
            raise ValidationError("invalid order", {"quantity": [f"must be at least 1, got {cmd.quantity}"]})
        shop = self.shop
        shop.inventory.reserve(cmd.order_id, cmd.sku, cmd.quantity)
        ctx.items["reserved"] = (cmd.sku, cmd.quantity)
        await ctx.publish(StockReserved(cmd.order_id, cmd.sku, cmd.quantity))
        total = cmd.quantity * cmd.unit_price
        await shop.payments.charge(cmd.order_id, cmd.card, total)  # may raise PaymentDeclinedError
        order = Order.place(cmd.order_id, cmd.customer, cmd.sku, cmd.quantity, total)
        new_events = order.uncommitted_events
        await shop.repository.save(order, metadata={"correlation_id": str(ctx.correlation_id)})
        for event in new_events:
            await ctx.publish(event)
        return cmd.order_id

    async def undo_create_order(self, cmd: CreateOrder, ctx: Context, exc: BaseException) -> None:
        """Compensation: give back stock reserved by a failed create; report a declined payment."""
        reserved = ctx.items.get("reserved")
        if reserved is not None:
            sku, quantity = reserved
            self.shop.inventory.release(sku, quantity)
            self.shop.log.append(("compensate", f"released {quantity} × {sku} reserved for {cmd.order_id}"))
            await ctx.publish(StockReleased(cmd.order_id, sku, quantity))
        if isinstance(exc, PaymentDeclinedError):
            await ctx.publish(PaymentFailed(cmd.order_id, cmd.customer, str(exc)))

    async def cancel_order(self, cmd: CancelOrder, ctx: Context) -> None:
        """Cancel: append ``OrderCancelled``, put the stock back, publish both events."""
        order = await self.shop.repository.load(cmd.order_id)
        order.cancel(cmd.reason)
        new_events = order.uncommitted_events
        await self.shop.repository.save(order, metadata={"correlation_id": str(ctx.correlation_id)})
        self.shop.inventory.release(order.sku, order.quantity)
        for event in new_events:
            await ctx.publish(event)
        await ctx.publish(StockReleased(order.id, order.sku, order.quantity))

    async def get_order(self, query: GetOrder) -> OrderView:
        """Load the order from its stream (raises ``NotFoundError`` when there is none)."""
        return (await self.shop.repository.load(query.order_id)).view()


EVENT_TYPES: tuple[type[Event], ...] = (
    StockReserved,
    StockReleased,
    PaymentFailed,
    OrderCreated,
    OrderCancelled,
)


#: The events the :class:`Notifications` handlers react to.
NOTIFIED_EVENT_TYPES: tuple[type[Event], ...] = (OrderCreated, PaymentFailed, OrderCancelled)


class AuditLog:
    """One handler for every event type of the example: records each event as it is handled."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def record(self, event: Event) -> None:
        """Log the event as ``Name(field=value, ...)``."""
        fields = ", ".join(f"{k}={v}" for k, v in vars(event).items())
        self.shop.log.append(("event", f"{type(event).__name__}({fields})"))


class Notifications:
    """Event handlers that would e-mail the customer."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def order_created(self, event: OrderCreated) -> None:
        """Confirm the order."""
        self.shop.log.append(
            ("notify", f"to {event.customer}: order {event.order_id} confirmed, total {_money(event.total)}")
        )

    async def payment_failed(self, event: PaymentFailed) -> None:
        """Tell the customer the card was declined."""
        self.shop.log.append(("notify", f"to {event.customer}: payment for order {event.order_id} failed"))

    async def order_cancelled(self, event: OrderCancelled) -> None:
        """Confirm the cancellation."""
        self.shop.log.append(
            ("notify", f"to {event.customer}: order {event.order_id} cancelled ({event.reason})")
        )


class InventoryLog:
    """Event handlers that keep a stock movement log."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    async def reserved(self, event: StockReserved) -> None:
        """Log a reservation."""
        self.shop.log.append(("inventory", f"-{event.quantity} {event.sku} for {event.order_id}"))

    async def released(self, event: StockReleased) -> None:
        """Log a release."""
        self.shop.log.append(("inventory", f"+{event.quantity} {event.sku} back from {event.order_id}"))


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


#: Anything handlers can be registered on.
HandlerRegistry: TypeAlias = "App | Mediator"


def register(target: HandlerRegistry, shop: Shop, *, notifications: bool = True) -> None:
    """Register the example's handlers on ``target`` (a :class:`catga.App` or a mediator).

    Args:
        target: where to register.
        shop: the state the handlers share.
        notifications: also register the :class:`Notifications` handlers (False when another app,
            fed through a transport, sends the e-mails: see :func:`register_notifications`).
    """
    audit = AuditLog(shop)
    for event_type in EVENT_TYPES:  # first, so each event is logged before its other handlers run
        target.handler(audit.record, message_type=event_type)
    service = OrderService(shop)
    target.handler(service.create_order, compensate=service.undo_create_order)
    target.handler(service.cancel_order)
    target.handler(service.get_order)
    if notifications:
        register_notifications(target, shop)
    inventory_log = InventoryLog(shop)
    target.handler(inventory_log.reserved)
    target.handler(inventory_log.released)


def register_notifications(target: HandlerRegistry, shop: Shop) -> None:
    """Register the :class:`Notifications` handlers (of :data:`NOTIFIED_EVENT_TYPES`) on ``target``."""
    notifications = Notifications(shop)
    target.handler(notifications.order_created)
    target.handler(notifications.payment_failed)
    target.handler(notifications.order_cancelled)
