"""What the :class:`~catga.testing.contracts.TransportContract` suites share: the factory types the
binding provides, an inbox that records and fails claims, dead-letter look-ups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from catga.errors import (
    BackendUnavailableError,
)
from catga.ids import new_id
from catga.memory.idempotency import MemoryInboxStore
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import Claim, DeadLetter, DeadLetterQueue, InboxStore, Transport
from catga.testing.contracts._util import eventually, unique
from catga.testing.contracts.messages import (
    ContractOrderPlaced,
)

__all__ = (
    "SETTLE",
    "InboxTransportFactory",
    "RawPublishTransport",
    "TransportFactory",
    "WatchedInbox",
    "letter_for",
    "raw_message_dead_lettered",
)

#: Time given to a transport to show that something does *not* happen (a duplicate, a redelivery).
SETTLE = 0.3


class RawPublishTransport(Transport, Protocol):
    """A transport with the test surface the contract needs besides the protocol."""

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish bytes and wire headers exactly as given (fan-out, like ``publish``)."""
        ...


TransportFactory = Callable[[], Awaitable[RawPublishTransport]]
#: Like :data:`TransportFactory`, for a transport whose ``EXACTLY_ONCE`` subscriptions use ``inbox``.
InboxTransportFactory = Callable[[InboxStore], Awaitable[RawPublishTransport]]


class WatchedInbox(MemoryInboxStore):
    """An in-memory inbox that records the keys claimed and fails the first ``fail_claims`` claims."""

    def __init__(self, fail_claims: int = 0) -> None:
        super().__init__()
        self.claimed: list[str] = []
        self.fail_claims = fail_claims

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        self.claimed.append(key)
        if self.fail_claims > 0:
            self.fail_claims -= 1
            raise BackendUnavailableError("inbox down (contract test)", backend="contract")
        return await super().claim(key, lock_ttl)


async def letter_for(dlq: DeadLetterQueue, message_id: str) -> DeadLetter | None:
    for letter in await dlq.list(10_000):
        if letter.id == message_id or letter.headers.get(H_ID) == message_id:
            return letter
    return None


async def raw_message_dead_lettered(
    transport_factory: TransportFactory, dlq: DeadLetterQueue, body: bytes, type_name: str
) -> tuple[DeadLetter, str, list[ContractOrderPlaced]]:
    """Publish raw ``body`` typed ``type_name`` to an at-least-once ``ContractOrderPlaced`` subscriber on
    another transport; wait for its dead letter. Returns the letter, the destination and what the
    handler got."""
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    handled: list[ContractOrderPlaced] = []

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        handled.append(message)

    await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.AT_LEAST_ONCE, destination=dest, max_deliver=5)
    mid = str(new_id())
    await t2.publish_raw(dest, body, {H_TYPE: type_name, H_ID: mid})

    async def dead() -> bool:
        return await letter_for(dlq, mid) is not None

    await eventually(dead, what=f"raw {type_name} message {mid} dead-lettered")
    letter = await letter_for(dlq, mid)
    assert letter is not None
    return letter, dest, handled
