"""Shared test domain for the event-sourcing tests: events of all three families, aggregates, wrappers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec
import pydantic

from catga.errors import ValidationError
from catga.eventsourcing import Aggregate, applies
from catga.memory.event_store import MemoryEventStore
from catga.messages import Event
from catga.protocols import ANY, StoredEvent


class Opened(msgspec.Struct, Event, frozen=True):
    owner: str


@dataclasses.dataclass(frozen=True)
class Deposited(Event):
    amount: int


class Withdrawn(pydantic.BaseModel, Event):
    model_config = pydantic.ConfigDict(frozen=True)
    amount: int


class Closed(msgspec.Struct, Event, frozen=True):
    reason: str = ""


class AccountState(msgspec.Struct):
    owner: str = ""
    balance: int = 0
    deposits: int = 0
    closed: bool = False


class Account(Aggregate):
    """State in ``self.state`` (a msgspec Struct): the default snapshot hooks apply."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.state = AccountState()

    @classmethod
    def open(cls, id: str, owner: str) -> Account:
        account = cls(id)
        account.raise_event(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValidationError("amount must be positive", {"amount": ["must be > 0"]})
        self.raise_event(Deposited(amount))

    def withdraw(self, amount: int) -> None:
        self.raise_event(Withdrawn(amount=amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.state.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.state.balance += event.amount
        self.state.deposits += 1

    @applies(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> None:
        if event.amount > self.state.balance:
            raise ValidationError("insufficient funds")
        self.state.balance -= event.amount

    def apply_Closed(self, event: Closed) -> None:  # the naming-convention form
        self.state.closed = True


class CountingStore:
    """Wraps an EventStore and records every call (to count reads and appends)."""

    def __init__(self, inner: MemoryEventStore | None = None) -> None:
        self.inner = inner if inner is not None else MemoryEventStore()
        self.reads: list[tuple[str, int, int | None]] = []
        self.read_events = 0
        self.appends: list[tuple[str, int, int]] = []
        self.read_alls: list[tuple[int, int | None]] = []

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        self.appends.append((stream_id, len(events), expected_version))
        return await self.inner.append(stream_id, events, expected_version, metadata=metadata)

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        self.reads.append((stream_id, from_version, max_count))
        events = await self.inner.read(stream_id, from_version, max_count)
        self.read_events += len(events)
        return events

    async def version(self, stream_id: str) -> int:
        return await self.inner.version(stream_id)

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        self.read_alls.append((from_position, max_count))
        return await self.inner.read_all(from_position, max_count)

    def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        return self.inner.subscribe_all(from_position)

    async def aclose(self) -> None:
        await self.inner.aclose()


def stored(stream_id: str, version: int, data: Any, position: int | None = None) -> StoredEvent:
    return StoredEvent(
        stream_id=stream_id,
        version=version,
        position=version + 1 if position is None else position,
        type_name=type(data).__name__,
        data=data,
        timestamp=0.0,
    )
