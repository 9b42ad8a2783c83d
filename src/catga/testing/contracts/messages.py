"""Message types the conformance suites append, publish and send.

They cover both native families: msgspec Structs (:class:`ContractOrderPlaced`,
:class:`ContractItemAdded`, :class:`ContractDoWork`) and a dataclass (:class:`ContractNoted`). Bind a
backend with a registry from :func:`contract_registry` so that they encode and decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from catga.messages import Command, Event, message_name
from catga.serialization import Format, TypeRegistry

__all__ = (
    "CONTRACT_TYPES",
    "ContractDoWork",
    "ContractItemAdded",
    "ContractNoted",
    "ContractOrderPlaced",
    "contract_registry",
)


@message_name("contracts.OrderPlaced")
class ContractOrderPlaced(msgspec.Struct, Event, frozen=True):
    """An event as a frozen msgspec Struct."""

    order_id: str
    total: int


@message_name("contracts.ItemAdded")
class ContractItemAdded(msgspec.Struct, Event, frozen=True):
    """A second Struct event, with a list field and an optional one."""

    sku: str
    qty: int
    tags: list[str] = msgspec.field(default_factory=list)
    note: str | None = None


@message_name("contracts.Noted")
@dataclass(frozen=True)
class ContractNoted(Event):
    """An event as a frozen dataclass (with non-ASCII text)."""

    text: str
    n: int = 0


@message_name("contracts.DoWork")
class ContractDoWork(msgspec.Struct, Command[None], frozen=True):
    """A command, for ``send`` (competing consumers)."""

    job: int
    payload: str = ""


CONTRACT_TYPES: tuple[type, ...] = (ContractOrderPlaced, ContractItemAdded, ContractNoted, ContractDoWork)
"""Every type the contracts use; :func:`contract_registry` registers them all."""


def contract_registry(format: Format = "json") -> TypeRegistry:
    """A new registry with :data:`CONTRACT_TYPES` registered (give it to the backend under test)."""
    return TypeRegistry(format, CONTRACT_TYPES)
