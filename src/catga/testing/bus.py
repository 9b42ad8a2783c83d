"""Several apps on one in-memory broker, in one test: a producer and its consumers without a server.

::

    bus = MemoryBus()
    orders = bus.app("orders")              # catga.App on a MemoryTransport of the bus
    billing = bus.app("billing")
    orders.export(OrderPlaced)
    billing.consume(OrderPlaced)
    billing_log = capture(billing)
    ...register handlers...
    async with bus.running(billing, orders):
        await orders.send(PlaceOrder("c-1", 42))
        [placed] = await billing_log.wait_for(OrderPlaced)

The broker behaves like one NATS or Redis server that every app of the test connects to: groups (an
app's name by default) share work, other apps get their own copy, failed deliveries are retried with a
short backoff and dead-lettered into :attr:`MemoryBus.dead_letters` after ``max_deliver`` attempts.
Messages are encoded and decoded on the way, exactly as on a real transport, so a type that cannot
cross a process boundary fails here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from catga.app import App
from catga.memory import MemoryBroker, MemoryDeadLetterQueue, MemoryTransport
from catga.serialization import TypeRegistry

__all__ = ("MemoryBus",)


class MemoryBus:
    """One in-memory broker that the apps of a test share.

    Args:
        registry: the message types allowed on the bus (default: catga's default registry).
        retry_backoff: first redelivery delay of a failed delivery, in seconds (short, for tests).
        retry_backoff_max: cap of the redelivery delay.

    Attributes:
        broker: the :class:`~catga.memory.MemoryBroker`.
        dead_letters: the dead-letter queue of every transport on the bus (as on one server).
    """

    def __init__(
        self,
        *,
        registry: TypeRegistry | None = None,
        retry_backoff: float = 0.01,
        retry_backoff_max: float = 0.1,
    ) -> None:
        self.broker = MemoryBroker()
        self.dead_letters = MemoryDeadLetterQueue()
        self.registry = registry
        self._backoff = (retry_backoff, retry_backoff_max)

    def transport(self) -> MemoryTransport:
        """A new transport on the bus (one per app, as one connection per process)."""
        return MemoryTransport(
            self.broker,
            registry=self.registry,
            dead_letters=self.dead_letters,
            retry_backoff=self._backoff[0],
            retry_backoff_max=self._backoff[1],
        )

    def app(self, name: str | None = None, **options: Any) -> App:
        """A :class:`~catga.App` whose transport is on this bus.

        Args:
            name: the app's name (its consumer group and origin; see :class:`~catga.App`).
            **options: any other :class:`~catga.App` keyword argument except ``transport``.

        Raises:
            ConfigurationError: as :class:`~catga.App` does, or ``transport=`` was given.
        """
        if "transport" in options:
            from catga.errors import ConfigurationError

            raise ConfigurationError("MemoryBus.app() gives the app its transport: do not pass transport=")
        options.setdefault("registry", self.registry)
        return App(transport=self.transport(), name=name, **options)

    @asynccontextmanager
    async def running(self, *apps: App) -> AsyncIterator[tuple[App, ...]]:
        """Start ``apps`` in the order given (consumers first, so nothing is published before they
        subscribe), and stop them in reverse order on exit, also when the block raises."""
        async with AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app)
            yield apps

    def __repr__(self) -> str:
        return f"MemoryBus(dead_letters={self.dead_letters!r})"
