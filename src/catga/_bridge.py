"""Events across processes: what :meth:`App.export <catga.App.export>` and
:meth:`App.consume <catga.App.consume>` declare, and how it runs.

* An **export** is one more handler of the event type on the app's mediator (``export[Type]``): it
  copies the event's metadata, adds the ``X-Catga-Origin`` header (the app's origin) and whatever the
  header hooks add, then publishes on the transport — or stores an :class:`~catga.protocols.OutboxMessage`
  when the app has an outbox, and wakes the relay.
* A **consume** declaration becomes a transport subscription at start; what arrives is published on
  the local mediator with the sender's metadata (:meth:`Bridge.receive`).

Two rules keep an event from being handled twice: an event whose origin is this app is acknowledged
without running anything (its publisher ran the handlers), and an event being dispatched from the
transport (marked in a context variable by its message id) is never exported again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

import catga._observe as _observe
from catga.context import Context
from catga.errors import BackendError, PayloadTooLargeError
from catga.mediator import Mediator
from catga.messages import Metadata, QoS
from catga.outbox import OutboxRelay
from catga.protocols import OutboxMessage, OutboxStore, Subscription, Transport
from catga.serialization import TypeRegistry, default_registry

__all__ = ("APP_NAME", "H_ORIGIN", "Bridge")

#: Wire header naming the app (its name, or a unique id) that published an exported event.
H_ORIGIN = "X-Catga-Origin"

#: The message id of the event being dispatched from the transport in this task (never re-exported).
_inbound: ContextVar[int | None] = ContextVar("catga_inbound", default=None)


@runtime_checkable
class NotifiesWhenVisible(Protocol):
    """An outbox whose rows may become visible later than ``add`` returns (inside a transaction)."""

    def notify_when_visible(self, wake: Callable[[], object]) -> None:
        """Call ``wake()`` once the rows just added can be fetched by a relay."""
        ...


class _AppName(enum.Enum):
    APP_NAME = "the app's name"


#: ``consume(group=...)`` default: the app's name (a private copy when the app has no name).
APP_NAME: Literal[_AppName.APP_NAME] = _AppName.APP_NAME

Group = str | Literal[_AppName.APP_NAME] | None
"""A ``consume(group=...)`` value: a group name, :data:`APP_NAME`, or None (a private copy)."""


@dataclass(frozen=True)
class _Consumer:
    """One :meth:`App.consume <catga.App.consume>` declaration."""

    event_type: type
    qos: QoS
    group: Group
    destination: str | None
    max_in_flight: int
    max_deliver: int


class Bridge:
    """An app's exports and consumers.

    Args:
        mediator: the app's mediator (exports register on it; received events are published on it).
        transport: the app's transport; None: declarations are recorded and do nothing.
        origin: the ``X-Catga-Origin`` this app writes and skips.
        name: the app's name (the default consumer group), or None.
        outbox: where exports go instead of the transport, or None.
        registry: wire names and codecs of outbox entries (None: the default registry at use).
        max_payload: the largest encoded outbox body accepted, in bytes.

    Attributes:
        relay: the app's outbox relay once started (woken after each outbox write), or None.
        subscriptions: the live consume subscriptions (closed and cleared by the app at stop).
    """

    def __init__(
        self,
        mediator: Mediator,
        transport: Transport | None,
        *,
        origin: str,
        name: str | None,
        outbox: OutboxStore | None,
        registry: TypeRegistry | None,
        max_payload: int,
    ) -> None:
        self.mediator = mediator
        self.transport = transport
        self.origin = origin
        self.name = name
        self.outbox = outbox
        self.registry = registry
        self.max_payload = max_payload
        self.relay: OutboxRelay | None = None
        self.header_hooks: list[Callable[[dict[str, str]], None]] = []
        self.exports: set[type] = set()
        self.consumers: list[_Consumer] = []
        self.subscriptions: list[Subscription] = []

    def export(self, event_type: type, qos: QoS, destination: str | None) -> None:
        """Register the handler forwarding ``event_type`` to the transport (or the outbox), once."""
        if event_type in self.exports:
            return
        self.exports.add(event_type)
        transport = self.transport
        if transport is None:
            return
        origin, outbox, hooks, mediator = self.origin, self.outbox, self.header_hooks, self.mediator
        outbox_message = self.outbox_message
        notify_when_visible = outbox.notify_when_visible if isinstance(outbox, NotifiesWhenVisible) else None
        # Backends whose failures the mediator is counting as an outage (see Mediator._failed): the
        # next export that goes through ends it with one "recovered" line.
        down: set[str] = set()

        if outbox is None:
            operation = "send"

            async def put(event: Any, out: Metadata) -> None:
                await transport.publish(event, metadata=out, destination=destination)

        else:
            operation = "create"  # the relay sends it later (its span is a child of this one)

            async def put(event: Any, out: Metadata) -> None:
                await outbox.add([outbox_message(event, out, destination)])

        async def forward(event: Any, ctx: Context) -> None:
            if _inbound.get() == ctx.message_id:
                return  # it came from the transport: never send it back
            md = ctx.metadata
            headers = dict(md.headers) if md.headers else {}
            headers[H_ORIGIN] = origin
            for hook in hooks:
                hook(headers)
            probe = _observe.probe
            try:
                if probe is None:  # as before the probe existed: no extra call
                    out = msgspec.structs.replace(md, qos=qos, headers=headers)
                    if outbox is None:
                        await transport.publish(event, metadata=out, destination=destination)
                    else:
                        await outbox.add([outbox_message(event, out, destination)])
                else:  # the span's context goes into the headers on entering
                    dest = self.wire_name(event, destination)
                    system = _observe.system_of(transport)
                    mid, cid = md.message_id, md.correlation_id
                    with probe.produce(operation, system, dest, headers, message_id=mid, correlation_id=cid):
                        await put(event, msgspec.structs.replace(md, qos=qos, headers=headers))
            except BackendError as exc:
                if not isinstance(exc, PayloadTooLargeError):  # that one is the message, not the backend
                    down.add(exc.backend)
                raise
            if down:
                for backend in down:
                    mediator.backend_recovered(backend)
                down.clear()
            relay = self.relay
            if outbox is not None and relay is not None:
                if notify_when_visible is None:
                    relay.notify()
                else:  # rows written in a transaction: wake the relay once they are committed
                    notify_when_visible(relay.notify)

        # Named as before the bridge had a module of its own: logs and failures say catga.app.export[...].
        forward.__name__ = forward.__qualname__ = f"export[{event_type.__qualname__}]"
        forward.__module__ = "catga.app"
        mediator.register(forward, event_type)

    def wire_name(self, event: Any, destination: str | None) -> str:
        """Where an exported event goes: ``destination``, else its type's wire name."""
        if destination is not None:
            return destination
        registry = self.registry if self.registry is not None else default_registry()
        return registry.name_of(type(event))

    def outbox_message(self, event: Any, metadata: Metadata, destination: str | None) -> OutboxMessage:
        """The outbox entry for an exported event: what the transport would have published.

        Raises:
            PayloadTooLargeError: the encoded event is over ``max_payload`` (nothing stored).
        """
        registry = self.registry
        if registry is None:
            registry = default_registry()
        type_name = registry.name_of(type(event))
        dest = type_name if destination is None else destination
        body = registry.codec_for(type(event)).encode(event)
        limit = self.max_payload
        if len(body) > limit:  # refused now, not stored for a relay that could never publish it
            raise PayloadTooLargeError(len(body), limit, destination=dest)
        return OutboxMessage(
            id=str(metadata.message_id),
            destination=dest,
            type_name=type_name,
            body=body,
            headers=metadata.to_headers(type_name),
            created_at=metadata.created_at,
        )

    def consume(
        self,
        event_type: type,
        qos: QoS,
        group: Group,
        destination: str | None,
        max_in_flight: int,
        max_deliver: int,
    ) -> None:
        """Record a consume declaration (subscribed by :meth:`subscribe`)."""
        self.consumers.append(_Consumer(event_type, qos, group, destination, max_in_flight, max_deliver))

    async def receive(self, event: Any, metadata: Metadata) -> None:
        """The subscriptions' handler: publish ``event`` locally unless this app published it.

        Raises:
            Exception: a handler failed (the transport redelivers, then dead-letters).
        """
        headers = metadata.headers
        if headers is not None and headers.get(H_ORIGIN) == self.origin:
            return  # published by this app (a replica of it): handled where it was published
        token = _inbound.set(metadata.message_id)
        try:
            result = await self.mediator.publish(event, metadata=metadata)
        finally:
            _inbound.reset(token)
        if not result.ok:
            result.unwrap()  # raise: the transport redelivers, then dead-letters

    async def subscribe(self) -> None:
        """Subscribe every consume declaration on the transport (nothing without one)."""
        transport = self.transport
        if transport is None:
            return
        for c in self.consumers:
            group = self.name if c.group is APP_NAME else c.group
            sub = await transport.subscribe(
                c.event_type,
                self.receive,
                qos=c.qos,
                group=group,
                destination=c.destination,
                max_in_flight=c.max_in_flight,
                max_deliver=c.max_deliver,
            )
            self.subscriptions.append(sub)
