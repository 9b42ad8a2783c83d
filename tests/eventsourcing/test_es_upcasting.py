"""Upcasting: chains, renames, the schema-version key, and a byte-storing store end to end."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec
import pydantic
import pytest

from catga.errors import ConfigurationError, SerializationError, UnknownMessageTypeError
from catga.eventsourcing import (
    SCHEMA_VERSION_KEY,
    Aggregate,
    Repository,
    Upcasters,
    UpcastingRegistry,
    applies,
)
from catga.protocols import ANY, NO_STREAM, StoredEvent, validate_identifier
from catga.serialization import TypeRegistry


class OrderPlaced(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Version 3: v1 was {"id", "total"}, v2 renamed total -> amount, v3 added currency."""

    id: str
    amount: int
    currency: str


class CustomerSignedUp(msgspec.Struct, frozen=True):
    """Formerly "CustomerRegistered" v1 {"name"}."""

    customer: str


@dataclasses.dataclass(frozen=True)
class Shipped:
    order_id: str
    carrier: str = "post"


class Refunded(pydantic.BaseModel):
    order_id: str
    cents: int


class Unchanged(msgspec.Struct, frozen=True):
    x: int


def make_upcasters() -> Upcasters:
    upcasters = Upcasters()

    @upcasters.upcaster("OrderPlaced", 1)
    def _v1(data: dict[str, Any]) -> dict[str, Any]:
        data["amount"] = data.pop("total")
        return data

    @upcasters.upcaster(OrderPlaced, 2)
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

    upcasters.register(
        "CustomerRegistered", 1, lambda d: {"customer": d["name"]}, to_type_name=CustomerSignedUp
    )
    upcasters.register("Shipped", 1, lambda d: {"order_id": d["order"]})
    upcasters.register("Refunded", 1, lambda d: {"order_id": d["order_id"], "cents": d["euros"] * 100})
    return upcasters


def make_registry(format: Any = "json") -> UpcastingRegistry:
    return UpcastingRegistry(
        make_upcasters(),
        format=format,
        types=[OrderPlaced, CustomerSignedUp, Shipped, Refunded, Unchanged],
    )


def test_chain_turns_old_bodies_into_the_current_class() -> None:
    registry = make_registry()
    v1 = b'{"id": "o-1", "total": 42}'
    v2 = b'{"schema-version": 2, "id": "o-2", "amount": 7}'
    assert registry.decode("OrderPlaced", v1) == OrderPlaced("o-1", 42, "EUR")
    assert registry.decode("OrderPlaced", v2) == OrderPlaced("o-2", 7, "EUR")


def test_current_events_carry_their_version_and_round_trip() -> None:
    registry = make_registry()
    name, body = registry.encode(OrderPlaced("o-3", 5, "USD"))
    assert name == "OrderPlaced"
    assert msgspec.json.decode(body) == {
        SCHEMA_VERSION_KEY: 3,
        "id": "o-3",
        "amount": 5,
        "currency": "USD",
    }
    # forbid_unknown_fields: the version key is removed before the class sees the data
    assert registry.decode(name, body) == OrderPlaced("o-3", 5, "USD")


def test_a_plain_registry_does_not_upcast() -> None:
    plain = TypeRegistry(types=[OrderPlaced])
    with pytest.raises(SerializationError):
        plain.decode("OrderPlaced", b'{"id": "o-1", "total": 42}')


def test_renamed_type() -> None:
    registry = make_registry()
    assert registry.decode("CustomerRegistered", b'{"name": "ada"}') == CustomerSignedUp("ada")
    name, body = registry.encode(CustomerSignedUp("bob"))
    assert body == b'{"schema-version":2,"customer":"bob"}'
    assert registry.decode(name, body) == CustomerSignedUp("bob")
    with pytest.raises(SerializationError, match="retired type name"):
        registry.codec_named("CustomerRegistered").encode(CustomerSignedUp("x"))


def test_dataclass_and_pydantic_targets() -> None:
    registry = make_registry()
    assert registry.decode("Shipped", b'{"order": "o-1"}') == Shipped("o-1")
    assert registry.decode("Refunded", b'{"order_id": "o-1", "euros": 3}') == Refunded(
        order_id="o-1", cents=300
    )
    for event in (Shipped("o-2", "ups"), Refunded(order_id="o-3", cents=5)):
        name, body = registry.encode(event)
        assert msgspec.json.decode(body)[SCHEMA_VERSION_KEY] == 2
        assert registry.decode(name, body) == event


def test_msgpack_format() -> None:
    registry = make_registry("msgpack")
    old = msgspec.msgpack.encode({"id": "o-1", "total": 1})
    assert registry.decode("OrderPlaced", old) == OrderPlaced("o-1", 1, "EUR")
    name, body = registry.encode(OrderPlaced("o-2", 2, "EUR"))
    assert msgspec.msgpack.decode(body)[SCHEMA_VERSION_KEY] == 3
    assert registry.decode(name, body) == OrderPlaced("o-2", 2, "EUR")


def test_types_without_upcasters_keep_the_fast_codec() -> None:
    registry = make_registry()
    assert registry.codec_for(Unchanged) is TypeRegistry.codec_for(registry, Unchanged)
    name, body = registry.encode(Unchanged(1))
    assert body == b'{"x":1}'
    assert registry.decode(name, body) == Unchanged(1)
    with pytest.raises(UnknownMessageTypeError):
        registry.decode("NeverHeardOf", b"{}")


def test_missing_step_is_reported_with_versions() -> None:
    upcasters = Upcasters()
    upcasters.register("OrderPlaced", 2, lambda d: {**d, "currency": "EUR"})
    registry = UpcastingRegistry(upcasters, types=[OrderPlaced])
    with pytest.raises(SerializationError, match=r"schema version 1 but the current version is 3"):
        registry.decode("OrderPlaced", b'{"id": "o", "total": 1}')


def test_failing_or_bad_upcaster() -> None:
    upcasters = Upcasters()
    upcasters.register("OrderPlaced", 1, lambda d: {**d, "amount": d["missing"]})
    upcasters.register("Shipped", 1, lambda d: None)  # type: ignore[arg-type,return-value]
    registry = UpcastingRegistry(upcasters, types=[OrderPlaced, Shipped])
    with pytest.raises(SerializationError, match=r"failed on 'OrderPlaced' v1: 'missing'"):
        registry.decode("OrderPlaced", b'{"id": "o"}')
    with pytest.raises(SerializationError, match="returned NoneType, not a dict"):
        registry.decode("Shipped", b'{"order": "o"}')


def test_malformed_bodies_and_versions() -> None:
    registry = make_registry()
    with pytest.raises(SerializationError, match="malformed"):
        registry.decode("OrderPlaced", b"{not json")
    with pytest.raises(SerializationError, match="must be an int >= 1"):
        registry.decode("OrderPlaced", b'{"schema-version": "2"}')
    with pytest.raises(SerializationError, match="OrderPlaced"):
        registry.decode("OrderPlaced", b'{"schema-version": 3, "id": "o"}')  # missing fields


def test_registration_errors() -> None:
    upcasters = Upcasters()
    upcasters.register("A", 1, dict)
    with pytest.raises(ConfigurationError, match="already registered"):
        upcasters.register("A", 1, dict)
    with pytest.raises(ConfigurationError, match="start at 1"):
        upcasters.register("B", 0, dict)
    with pytest.raises(ConfigurationError, match="higher version"):
        upcasters.register("B", 2, dict, to_version=2)
    with pytest.raises(ConfigurationError, match="non-empty str"):
        upcasters.register("", 1, dict)
    assert upcasters.current_version("A") == 2
    assert upcasters.current_version("B") == 1


def test_apply_can_be_called_directly_with_a_version_from_metadata() -> None:
    upcasters = make_upcasters()
    stored_metadata = {"schema-version": "2"}
    assert upcasters.apply(
        "OrderPlaced", int(stored_metadata["schema-version"]), {"id": "o", "amount": 1}
    ) == (
        "OrderPlaced",
        {"id": "o", "amount": 1, "currency": "EUR"},
    )
    assert upcasters.apply("Other", 1, {"a": 1}) == ("Other", {"a": 1})


def test_upcasters_registered_later_take_effect() -> None:
    upcasters = Upcasters()
    registry = UpcastingRegistry(upcasters, types=[Shipped])
    assert registry.decode("Shipped", b'{"order_id": "o"}') == Shipped("o")
    upcasters.register("Shipped", 1, lambda d: {"order_id": d["order"]})
    assert registry.decode("Shipped", b'{"order": "o"}') == Shipped("o")


# -- end to end: a store that keeps bytes, as remote backends do ---------------------------------


class BytesEventStore:
    """A tiny EventStore that encodes on append and decodes on read through its registry."""

    def __init__(self, registry: TypeRegistry) -> None:
        self.registry = registry
        self.rows: list[tuple[str, int, str, bytes]] = []

    def put_raw(self, stream_id: str, type_name: str, body: bytes) -> None:
        self.rows.append((stream_id, self._version(stream_id) + 1, type_name, body))

    def _version(self, stream_id: str) -> int:
        return max((v for s, v, _, _ in self.rows if s == stream_id), default=-1)

    def _stored(self, index: int) -> StoredEvent:
        stream_id, version, name, body = self.rows[index]
        return StoredEvent(stream_id, version, index + 1, name, self.registry.decode(name, body), time.time())

    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        from catga.errors import ConcurrencyError

        validate_identifier(stream_id)
        current = self._version(stream_id)
        if expected_version != ANY and expected_version != current:
            raise ConcurrencyError(
                stream_id, "NO_STREAM" if expected_version == NO_STREAM else expected_version, current
            )
        for event in events:
            name, body = self.registry.encode(event)
            current += 1
            self.rows.append((stream_id, current, name, body))
        return current

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        out = [
            self._stored(i)
            for i, row in enumerate(self.rows)
            if row[0] == stream_id and row[1] >= from_version
        ]
        return out if max_count is None else out[:max_count]

    async def version(self, stream_id: str) -> int:
        return self._version(stream_id)

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        out = [self._stored(i) for i in range(max(from_position - 1, 0), len(self.rows))]
        return out if max_count is None else out[:max_count]

    async def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        for event in await self.read_all(from_position):
            yield event

    async def aclose(self) -> None:
        pass


class Order(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.total = 0
        self.currencies: set[str] = set()

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.total += event.amount
        self.currencies.add(event.currency)


async def test_repository_loads_old_events_through_the_store_registry() -> None:
    store = BytesEventStore(make_registry())
    store.put_raw("Order-1", "OrderPlaced", b'{"id": "1", "total": 10}')  # written by v1 of the app
    store.put_raw("Order-1", "OrderPlaced", b'{"schema-version": 2, "id": "1", "amount": 5}')
    repo = Repository(store, Order)

    order = await repo.load("1")
    assert (order.version, order.total, order.currencies) == (1, 15, {"EUR"})
    order.raise_event(OrderPlaced("1", 1, "USD"))
    await repo.save(order)
    assert store.rows[-1][3].startswith(b'{"schema-version":3,')
    reloaded = await repo.load("1")
    assert (reloaded.total, reloaded.currencies) == (16, {"EUR", "USD"})
