"""MemoryTransport: the transport contract plus memory-only behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga._delivery import retry_delay
from catga.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidIdentifierError,
    PayloadTooLargeError,
)
from catga.memory import MemoryBroker, MemoryDeadLetterQueue, MemoryTransport
from catga.memory.transport import H_ERROR
from catga.messages import Metadata, QoS
from catga.protocols import InboxStore, Transport
from catga.testing.contracts import (
    ContractOrderPlaced,
    InboxTransportFactory,
    TransportContract,
    TransportFactory,
    contract_registry,
)


def _transport(
    broker: MemoryBroker,
    dlq: MemoryDeadLetterQueue | None = None,
    inbox: InboxStore | None = None,
    **kw: float,
) -> MemoryTransport:
    return MemoryTransport(
        broker,
        registry=contract_registry(),
        dead_letters=dlq,
        inbox=inbox,
        retry_backoff=kw.pop("retry_backoff", 0.01),
        retry_backoff_max=kw.pop("retry_backoff_max", 0.05),
        **kw,  # type: ignore[arg-type]
    )


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def transport_dead_letters(self) -> MemoryDeadLetterQueue:
        return MemoryDeadLetterQueue()

    @pytest.fixture
    async def transport_factory(
        self, transport_dead_letters: MemoryDeadLetterQueue
    ) -> AsyncIterator[TransportFactory]:
        broker = MemoryBroker()
        made: list[MemoryTransport] = []

        async def factory() -> MemoryTransport:
            transport = _transport(broker, transport_dead_letters)
            made.append(transport)
            return transport

        yield factory
        for transport in made:
            await transport.aclose()

    @pytest.fixture
    async def transport_inbox_factory(
        self, transport_dead_letters: MemoryDeadLetterQueue
    ) -> AsyncIterator[InboxTransportFactory]:
        broker = MemoryBroker()
        made: list[MemoryTransport] = []

        async def factory(inbox: InboxStore) -> MemoryTransport:
            transport = _transport(broker, transport_dead_letters, inbox=inbox)
            made.append(transport)
            return transport

        yield factory
        for transport in made:
            await transport.aclose()


def test_memory_transport_satisfies_the_protocol() -> None:
    assert isinstance(MemoryTransport(), Transport)


async def test_transports_without_a_broker_do_not_see_each_other() -> None:
    a, b = MemoryTransport(registry=contract_registry()), MemoryTransport(registry=contract_registry())
    got: list[ContractOrderPlaced] = []

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        got.append(message)

    await a.subscribe(ContractOrderPlaced, handle, destination="d")
    await b.publish(ContractOrderPlaced("o", 1), destination="d")
    await a.publish(ContractOrderPlaced("o", 2), destination="d")
    await asyncio.sleep(0.05)
    assert got == [ContractOrderPlaced("o", 2)]
    await a.aclose()
    await b.aclose()


async def test_backoff_doubles_and_is_capped() -> None:
    assert [retry_delay(0.5, 3.0, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_failed_messages_without_a_dead_letter_queue_are_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = _transport(MemoryBroker())
    calls = 0

    async def broken(message: ContractOrderPlaced, meta: Metadata) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("nope")

    await t.subscribe(ContractOrderPlaced, broken, destination="d", max_deliver=2)
    await t.publish(ContractOrderPlaced("o", 1), destination="d")
    for _ in range(100):
        if "no dead-letter queue" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert calls == 2
    assert "no dead-letter queue" in caplog.text
    await t.aclose()


async def test_backlog_of_a_closed_member_goes_to_its_group_peer() -> None:
    broker = MemoryBroker()
    a, b = _transport(broker), _transport(broker)
    release = asyncio.Event()
    handled: list[tuple[str, int]] = []

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            if name == "a":
                await release.wait()
            handled.append((name, message.total))

        return handle

    sub_a = await a.subscribe(ContractOrderPlaced, handler("a"), group="g", destination="d", max_in_flight=1)
    await b.subscribe(ContractOrderPlaced, handler("b"), group="g", destination="d")
    for i in range(6):  # round robin: a gets 0, 2, 4 (2 and 4 wait in its backlog)
        await b.publish(ContractOrderPlaced("o", i), destination="d")
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(sub_a.aclose())
    await asyncio.sleep(0.01)
    release.set()
    await closing
    await asyncio.sleep(0.02)
    assert sorted(total for _, total in handled) == list(range(6))
    assert ("a", 0) in handled and ("b", 2) in handled and ("b", 4) in handled
    await a.aclose()
    await b.aclose()


async def test_a_failing_server_replies_with_an_error_header() -> None:
    t = _transport(MemoryBroker())

    async def broken(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        raise ValueError("bad request")

    await t.serve("rpc.x", broken)
    body, headers = await t.request("rpc.x", b"?")
    assert body == b""
    assert headers[H_ERROR] == "ValueError: bad request"
    await t.aclose()


async def test_aclose_cancels_redeliveries_and_stops_everything() -> None:
    broker = MemoryBroker()
    t = _transport(broker, retry_backoff=10.0, retry_backoff_max=10.0)
    calls = 0

    async def broken(message: ContractOrderPlaced, meta: Metadata) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("again")

    await t.subscribe(ContractOrderPlaced, broken, destination="d")
    await t.publish(ContractOrderPlaced("o", 1), destination="d")
    await asyncio.sleep(0.02)
    assert calls == 1 and len(t._timers) == 1
    await t.aclose()
    await t.aclose()  # idempotent
    assert t._timers == {}
    assert broker._routes == {}
    with pytest.raises(BackendUnavailableError):
        await t.publish(ContractOrderPlaced("o", 2), destination="d")
    with pytest.raises(BackendUnavailableError):
        await t.subscribe(ContractOrderPlaced, broken, destination="d")


async def test_aclose_cancels_handlers_that_outlive_the_drain_timeout() -> None:
    t = MemoryTransport(registry=contract_registry(), drain_timeout=0.05)
    cancelled = asyncio.Event()

    async def stuck(message: ContractOrderPlaced, meta: Metadata) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await t.subscribe(ContractOrderPlaced, stuck, destination="d")
    await t.publish(ContractOrderPlaced("o", 1), destination="d")
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await t.aclose()
    assert cancelled.is_set()


async def test_a_handler_may_close_its_own_subscription() -> None:
    t = _transport(MemoryBroker())
    got: list[int] = []
    subs = []

    async def once(message: ContractOrderPlaced, meta: Metadata) -> None:
        got.append(message.total)
        await subs[0].aclose()

    subs.append(await t.subscribe(ContractOrderPlaced, once, destination="d", max_in_flight=1))
    await t.publish(ContractOrderPlaced("o", 1), destination="d")
    await t.publish(ContractOrderPlaced("o", 2), destination="d")
    await asyncio.sleep(0.05)
    assert got == [1]
    await t.aclose()


async def test_exactly_once_uses_the_given_inbox() -> None:
    from catga.memory import MemoryIdempotencyStore

    inbox = MemoryIdempotencyStore()
    t = MemoryTransport(registry=contract_registry(), inbox=inbox)
    handled: list[int] = []

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        handled.append(meta.message_id)

    await t.subscribe(ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, group="g", destination="d")
    for _ in range(3):
        await t.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=77), destination="d")
    await asyncio.sleep(0.05)
    assert handled == [77]
    assert len(inbox) == 1
    await t.aclose()


@pytest.mark.parametrize("kw", [{"max_in_flight": 0}, {"max_deliver": 0}])
async def test_bad_limits_are_rejected(kw: dict[str, int]) -> None:
    t = MemoryTransport()

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        pass

    with pytest.raises(ConfigurationError):
        await t.subscribe(ContractOrderPlaced, handle, **kw)  # type: ignore[arg-type]


async def test_bad_destinations_and_groups_are_rejected() -> None:
    t = MemoryTransport(registry=contract_registry())

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        pass

    with pytest.raises(InvalidIdentifierError):
        await t.subscribe(ContractOrderPlaced, handle, destination="a.*")
    with pytest.raises(InvalidIdentifierError):
        await t.subscribe(ContractOrderPlaced, handle, group="a b")
    with pytest.raises(InvalidIdentifierError):
        await t.publish(ContractOrderPlaced("o", 1), destination="a>")
    with pytest.raises(InvalidIdentifierError):
        await t.request("", b"")


def test_bad_backoff_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        MemoryTransport(retry_backoff=2.0, retry_backoff_max=1.0)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1024"])
def test_max_payload_must_be_a_positive_number_of_bytes(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_payload"):
        MemoryTransport(max_payload=bad)  # type: ignore[arg-type]


async def test_max_payload_is_inclusive_and_configurable() -> None:
    transport = MemoryTransport(registry=contract_registry(), max_payload=100)
    got: list[bytes] = []

    async def serve(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        got.append(body)
        return b"ok", {}

    await transport.serve("svc", serve)
    assert (await transport.request("svc", b"x" * 100, timeout=1.0))[0] == b"ok"
    with pytest.raises(PayloadTooLargeError) as info:
        await transport.request("svc", b"x" * 101, timeout=1.0)
    assert (info.value.size, info.value.limit, info.value.destination) == (101, 100, "svc")
    assert got == [b"x" * 100]
    await transport.aclose()
