"""The EventStore contract on NATS JetStream, plus NATS-only behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.js.api import StorageType, StreamConfig

from catga.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    InvalidIdentifierError,
    PayloadTooLargeError,
)
from catga.nats import NatsConnection, NatsEventStore
from catga.nats._subjects import subject_token, token_to_identifier
from catga.nats.event_store import MAX_EVENTS_PER_APPEND, POSITION_SHIFT
from catga.protocols import ANY, NO_STREAM
from catga.testing.contracts import (
    INVALID_IDS,
    ContractItemAdded,
    ContractOrderPlaced,
    EventStoreContract,
    contract_registry,
)

pytestmark = pytest.mark.nats


@pytest.fixture(params=["file-json", "memory-msgpack"])
async def event_store(
    request: pytest.FixtureRequest,
    nats_connection: NatsConnection,
    unique_name: str,
    doomed_streams: list[str],
) -> AsyncIterator[NatsEventStore]:
    storage, fmt = request.param.split("-")
    doomed_streams.append(unique_name.upper())
    store = NatsEventStore(
        nats_connection,
        stream=unique_name.upper(),
        prefix=unique_name,
        storage=storage,
        registry=contract_registry(fmt),
    )
    async with store:
        yield store


def _twin(store: NatsEventStore, conn: NatsConnection) -> NatsEventStore:
    """A second store object on the same stream (another process, as far as caching goes)."""
    return NatsEventStore(
        conn, stream=store.stream, prefix=store.prefix, storage=store.storage, registry=store.registry
    )


class TestNatsEventStore(EventStoreContract):
    """The contract, on file storage with JSON and on memory storage with msgpack."""


# --- subject mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
def test_hostile_ids_never_become_subject_tokens(bad: object) -> None:
    with pytest.raises(InvalidIdentifierError):
        subject_token(bad)  # type: ignore[arg-type]


def test_tokens_are_single_distinct_tokens_and_invertible() -> None:
    ids = ["a", "a.b", "a_b", "a=2Eb", "a-b", "a:b", "a@b", "a+b", "a=b", "A.b", "a.b.c", "x" * 200]
    tokens = [subject_token(i) for i in ids]
    assert len(set(tokens)) == len(ids)
    for identifier, token in zip(ids, tokens, strict=True):
        assert "." not in token and "*" not in token and ">" not in token and " " not in token
        assert token_to_identifier(token) == identifier
    assert subject_token("a.b") == "a=2Eb"
    assert subject_token("orders-1_x") == "orders-1_x"


async def test_stream_ids_with_dots_land_on_one_subject_each(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    await event_store.append("a.b", [ContractOrderPlaced("ab", 1)])
    await event_store.append("a", [ContractOrderPlaced("a", 1)])
    info = await nats_connection.js.stream_info(event_store.stream, subjects_filter=">")
    assert set(info.state.subjects or {}) == {f"{event_store.prefix}.a=2Eb", f"{event_store.prefix}.a"}


# --- concurrency enforced by the server ------------------------------------------------------------


async def test_a_stale_cache_never_lets_a_conflicting_append_through(
    event_store: NatsEventStore, nats_connection: NatsConnection, unique_name: str
) -> None:
    other = _twin(event_store, nats_connection)
    try:
        assert await event_store.append("s", [ContractOrderPlaced("a", 0)], NO_STREAM) == 0
        assert await other.append("s", [ContractOrderPlaced("b", 1)], 0) == 1  # first store's cache: 0
        with pytest.raises(ConcurrencyError) as info:
            await event_store.append("s", [ContractOrderPlaced("a", 2)], 0)
        assert (info.value.expected_version, info.value.actual_version) == (0, 1)
        assert await event_store.append("s", [ContractOrderPlaced("a", 2)], 1) == 2
        assert await other.append("s", [ContractOrderPlaced("b", 3)], ANY) == 3
        assert [e.data.order_id for e in await event_store.read("s")] == ["a", "b", "a", "b"]
    finally:
        await other.aclose()


async def test_any_from_two_stores_keeps_versions_contiguous(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    other = _twin(event_store, nats_connection)
    try:

        async def writer(store: NatsEventStore, name: str) -> None:
            for i in range(20):
                await store.append("shared", [ContractItemAdded(name, i), ContractItemAdded(name, i)])

        await asyncio.gather(writer(event_store, "x"), writer(other, "y"))
        stored = await event_store.read("shared")
        assert [e.version for e in stored] == list(range(80))
        pairs = [(stored[k].data, stored[k + 1].data) for k in range(0, 80, 2)]
        assert all(a == b for a, b in pairs)
    finally:
        await other.aclose()


#: The publish ack a clustered stream sends when an earlier message of the subject is still being
#: replicated, so it cannot check the expected last subject sequence (JetStream error 10164).
_CANNOT_CHECK = b'{"error":{"code":400,"err_code":10164,"description":"wrong last sequence"}}'


class _Rejections:
    """Makes the server's next ``left`` replies to appends of ``store`` a 10164 rejection.

    A clustered stream answers so only in a narrow window (1-5 per ~250K appends on a healthy 3-node
    cluster), so this reply stands in for it; everything else talks to the real server.
    """

    def __init__(self, store: NatsEventStore, monkeypatch: pytest.MonkeyPatch, left: int = 0) -> None:
        self.left = left
        self.count = 0
        self._real = store.connection.wire.send
        self._prefix = f"{store.prefix}.".encode()
        monkeypatch.setattr(store.connection.wire, "send", self._send)

    def _send(
        self, subject: bytes, payload: bytes, headers: bytes | None, timeout: float, many: bool = False
    ) -> Any:
        if self.left > 0 and subject.startswith(self._prefix):
            self.left -= 1
            self.count += 1
            future = asyncio.get_running_loop().create_future()
            future.set_result((None, _CANNOT_CHECK))
            return future
        return self._real(subject, payload, headers, timeout, many)


async def test_a_rejection_while_the_stream_is_at_the_expected_version_is_sent_again(
    event_store: NatsEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10164 is not a conflict: the leader still reports the expected version, so send again."""
    assert await event_store.append("s", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
    rejections = _Rejections(event_store, monkeypatch, left=1)
    assert await event_store.append("s", [ContractOrderPlaced("o", 1)], 0) == 1  # hot path
    rejections.left = 2
    assert await event_store.append("s", [ContractOrderPlaced("o", 2)] * 2, 1) == 3  # several events
    rejections.left = 1
    assert await event_store.append("s", [ContractOrderPlaced("o", 4)]) == 4  # ANY
    rejections.left = 1
    assert await event_store.append("fresh", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
    assert (rejections.count, rejections.left) == (5, 0)
    assert [e.data.total for e in await event_store.read("s")] == [0, 1, 2, 2, 4]
    assert await event_store.version("fresh") == 0


async def test_a_rejection_when_the_stream_moved_is_a_conflict_with_the_actual_version(
    event_store: NatsEventStore, nats_connection: NatsConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await event_store.append("s", [ContractOrderPlaced("a", 0)], NO_STREAM) == 0
    other = _twin(event_store, nats_connection)
    try:
        assert await other.append("s", [ContractOrderPlaced("b", 1)], 0) == 1
    finally:
        await other.aclose()
    _Rejections(event_store, monkeypatch, left=1)
    with pytest.raises(ConcurrencyError) as info:
        await event_store.append("s", [ContractOrderPlaced("a", 2)], 0)  # the cache still says 0
    assert (info.value.expected_version, info.value.actual_version) == (0, 1)


async def test_an_append_rejected_until_the_timeout_is_a_timeout_not_a_conflict(
    nats_connection: NatsConnection,
    unique_name: str,
    doomed_streams: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doomed_streams.append(unique_name.upper())
    store = NatsEventStore(
        nats_connection,
        stream=unique_name.upper(),
        prefix=unique_name,
        registry=contract_registry(),
        timeout=0.3,
    )
    async with store:
        assert await store.append("s", [ContractOrderPlaced("a", 0)], NO_STREAM) == 0
        _Rejections(store, monkeypatch, left=1_000_000)
        with pytest.raises(BackendTimeoutError, match=r"rejected \d+ times while the stream leader"):
            await store.append("s", [ContractOrderPlaced("a", 1)], 0)
        with pytest.raises(BackendTimeoutError, match="with ANY"):
            await store.append("s", [ContractOrderPlaced("a", 1)])


async def test_any_from_several_stores_never_conflicts(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    """4 store objects (as 4 processes would) x 4 writers append with ANY to one stream: the stores race
    each other on the server, and ANY still never raises ConcurrencyError."""
    stores = [event_store] + [_twin(event_store, nats_connection) for _ in range(3)]
    try:

        async def writer(store: NatsEventStore, name: str) -> list[int]:
            return [await store.append("hot", [ContractItemAdded(name, i)]) for i in range(40)]

        results = await asyncio.gather(
            *(writer(store, f"s{k}w{w}") for k, store in enumerate(stores) for w in range(4))
        )
        stored = await event_store.read("hot")
        assert [e.version for e in stored] == list(range(16 * 40))
        assert sorted(v for versions in results for v in versions) == list(range(16 * 40))
        assert {(e.data.sku, e.data.qty) for e in stored} == {
            (f"s{k}w{w}", i) for k in range(4) for w in range(4) for i in range(40)
        }
    finally:
        for store in stores[1:]:
            await store.aclose()


async def test_a_deleted_stream_is_unavailable_then_created_again(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    """The leader get behind version() reports a deleted stream as unavailable (as a direct get's 503
    did), and the next call creates the stream again."""
    assert await event_store.append("s", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
    await nats_connection.js.delete_stream(event_store.stream)
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        await event_store.version("s")
    assert await event_store.version("s") == -1
    with pytest.raises(ConcurrencyError) as info:
        await event_store.append("s", [ContractOrderPlaced("o", 1)], 0)
    assert (info.value.expected_version, info.value.actual_version) == (0, -1)
    assert await event_store.append("s", [ContractOrderPlaced("o", 1)], NO_STREAM) == 0


# --- layout ---------------------------------------------------------------------------------------


async def test_positions_are_sequence_times_1024_plus_index(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    await event_store.append("p", [ContractOrderPlaced("o", i) for i in range(3)])
    await event_store.append("q", [ContractOrderPlaced("o", 9)])
    info = await nats_connection.js.stream_info(event_store.stream)
    last = info.state.last_seq
    feed = await event_store.read_all()
    assert [e.position for e in feed] == [
        (last - 1) << POSITION_SHIFT,
        ((last - 1) << POSITION_SHIFT) + 1,
        ((last - 1) << POSITION_SHIFT) + 2,
        last << POSITION_SHIFT,
    ]


async def test_a_multi_event_append_is_one_message(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    await event_store.append("m", [ContractOrderPlaced("o", i) for i in range(5)], metadata={"k": "v"})
    info = await nats_connection.js.stream_info(event_store.stream)
    assert info.state.messages == 1
    raw = await nats_connection.js.get_last_msg(event_store.stream, f"{event_store.prefix}.m")
    assert raw.headers is not None
    assert raw.headers["Catga-Count"] == "5"
    assert raw.headers["Catga-Version"] == "0"
    assert msgspec.json.decode(raw.headers["Catga-Metadata"]) == {"k": "v"}


async def test_a_single_event_is_stored_readable_by_a_plain_client(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    await event_store.append("plain", [ContractOrderPlaced("o-1", 42)])
    raw = await nats_connection.js.get_last_msg(event_store.stream, f"{event_store.prefix}.plain")
    assert raw.headers is not None and raw.headers["Catga-Type"] == "contracts.OrderPlaced"
    decode = msgspec.json.decode if event_store.registry.format == "json" else msgspec.msgpack.decode
    assert decode(raw.data or b"") == {"order_id": "o-1", "total": 42}


async def test_too_many_events_in_one_append_is_refused(event_store: NatsEventStore) -> None:
    with pytest.raises(ConfigurationError, match="at most 1024"):
        await event_store.append("big", [ContractOrderPlaced("o", 0)] * (MAX_EVENTS_PER_APPEND + 1))
    assert await event_store.version("big") == -1


async def test_a_message_over_max_payload_is_refused_before_sending(event_store: NatsEventStore) -> None:
    huge = ContractItemAdded("x" * (2 * 1024 * 1024), 1)
    with pytest.raises(PayloadTooLargeError, match="max_payload") as info:
        await event_store.append("huge", [huge])
    assert info.value.code == "too_large" and info.value.limit == 1024 * 1024
    assert await event_store.append("huge", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0


async def test_invalid_expected_version_is_refused(event_store: NatsEventStore) -> None:
    with pytest.raises(ConfigurationError):
        await event_store.append("v", [ContractOrderPlaced("o", 0)], -3)


# --- reads never create consumers ------------------------------------------------------------------


async def test_reads_use_direct_get_and_leave_no_consumer(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    for i in range(600):  # more than two pages of batch direct get
        await event_store.append("r", [ContractOrderPlaced("o", i)])
    assert len(await event_store.read("r")) == 600
    assert len(await event_store.read_all()) == 600
    assert await event_store.version("r") == 599
    info = await nats_connection.js.stream_info(event_store.stream)
    assert info.state.consumer_count == 0
    it = event_store.subscribe_all()
    async with asyncio.timeout(30):
        seen = [(await anext(it)).data.total for _ in range(600)]
    await it.aclose()
    assert seen == list(range(600))


async def test_a_read_from_a_late_version_searches_instead_of_paging(
    event_store: NatsEventStore, nats_connection: NatsConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import catga.nats.event_store as module

    monkeypatch.setattr(module, "SEARCH_FROM_VERSION", 20)
    version = -1
    for i in range(120):  # single- and three-event messages, interleaved with another stream
        events = [ContractOrderPlaced("o", version + k + 1) for k in range(3 if i % 4 == 0 else 1)]
        version = await event_store.append("long", events)
        if i % 3 == 0:
            await event_store.append("other", [ContractOrderPlaced("x", i)])
    starts: list[int] = []
    real = module.iter_direct

    def spy(*args: object, **kwargs: object) -> object:
        starts.append(kwargs["start"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "iter_direct", spy)
    cold = _twin(event_store, nats_connection)  # no cached state: what another process sees
    try:
        for from_version in (20, 21, 22, 100, version - 1, version):
            events = await cold.read("long", from_version)
            assert [e.version for e in events] == list(range(from_version, version + 1))
            assert [e.data.total for e in events] == list(range(from_version, version + 1))
        assert min(starts) > 1  # never paged from the stream's first message
        assert await cold.read("long", version + 1) == []
        assert [e.version for e in await cold.read("long", 100, max_count=3)] == [100, 101, 102]
        assert [e.version for e in await cold.read("long", 19)] == list(range(19, version + 1))
        assert starts[-1] == 1  # below the threshold: paged from the start
        assert await cold.read("missing", 500) == []
    finally:
        await cold.aclose()


async def test_closing_subscribe_all_deletes_its_consumer(
    event_store: NatsEventStore, nats_connection: NatsConnection
) -> None:
    await event_store.append("s", [ContractOrderPlaced("o", 0)])
    it = event_store.subscribe_all()
    first = await anext(it)
    assert first.version == 0
    info = await nats_connection.js.stream_info(event_store.stream)
    assert info.state.consumer_count == 1
    await it.aclose()
    for _ in range(100):
        info = await nats_connection.js.stream_info(event_store.stream)
        if info.state.consumer_count == 0:
            break
        await asyncio.sleep(0.02)
    assert info.state.consumer_count == 0


# --- stream configuration ---------------------------------------------------------------------------


async def test_an_incompatible_existing_stream_is_a_configuration_error(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    name = unique_name.upper()
    doomed_streams.append(name)
    await nats_connection.js.add_stream(
        StreamConfig(name=name, subjects=[f"{unique_name}.>"], storage=StorageType.MEMORY)
    )
    async with NatsEventStore(
        nats_connection, stream=name, prefix=unique_name, registry=contract_registry()
    ) as store:
        with pytest.raises(ConfigurationError) as info:
            await store.append("x", [ContractOrderPlaced("o", 0)])
        message = str(info.value)
        assert name in message and "storage" in message and "allow_direct" in message
        with pytest.raises(ConfigurationError):  # still refused: a failed init is retried, not cached
            await store.read("x")


async def test_a_compatible_existing_stream_is_reused(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    name = unique_name.upper()
    doomed_streams.append(name)
    async with NatsEventStore(
        nats_connection, stream=name, prefix=unique_name, registry=contract_registry()
    ) as first:
        await first.append("x", [ContractOrderPlaced("o", 0)])
    async with NatsEventStore(
        nats_connection, stream=name, prefix=unique_name, registry=contract_registry()
    ) as second:
        assert await second.append("x", [ContractOrderPlaced("o", 1)], 0) == 1


async def test_overlapping_subjects_are_a_configuration_error(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> None:
    a, b = unique_name.upper() + "A", unique_name.upper() + "B"
    doomed_streams.extend([a, b])
    registry = contract_registry()
    async with NatsEventStore(nats_connection, stream=a, prefix=unique_name, registry=registry) as store:
        await store.version("x")
    async with NatsEventStore(nats_connection, stream=b, prefix=unique_name, registry=registry) as store:
        with pytest.raises(ConfigurationError, match="overlap"):
            await store.version("x")


@pytest.mark.parametrize(
    ("stream", "prefix"), [("A.B", "p"), ("A B", "p"), ("S", "p.*"), ("S", "p.>"), ("S", "")]
)
def test_bad_stream_names_and_prefixes_are_refused(
    nats_connection: NatsConnection, stream: str, prefix: str
) -> None:
    with pytest.raises(ConfigurationError):
        NatsEventStore(nats_connection, stream=stream, prefix=prefix)


# --- the lean connection ------------------------------------------------------------------------------


async def test_a_lost_lean_connection_reconnects_on_next_use(event_store: NatsEventStore) -> None:
    assert await event_store.append("c", [ContractOrderPlaced("o", 0)]) == 0
    wire = event_store.connection.wire
    proto = wire._proto
    assert proto is not None and proto.transport is not None
    proto.transport.abort()
    await asyncio.sleep(0.01)
    assert not wire.connected
    assert await event_store.append("c", [ContractOrderPlaced("o", 1)], 0) == 1
    assert wire.connected


async def test_requests_in_flight_when_the_connection_drops_fail_as_unavailable(
    event_store: NatsEventStore,
) -> None:
    await event_store.append("d", [ContractOrderPlaced("o", 0)])
    wire = event_store.connection.wire
    proto = wire._proto
    assert proto is not None and proto.transport is not None
    pending = asyncio.ensure_future(event_store.append("d", [ContractOrderPlaced("o", 1)], 0))
    await asyncio.sleep(0)
    proto.transport.abort()
    try:
        version = await pending
    except BackendUnavailableError as exc:
        assert "unknown" in str(exc)
        version = await event_store.version("d")
    assert version in (0, 1)  # the outcome was unknown: the version says which


# --- the head of the global log --------------------------------------------------------------------


async def test_last_position_is_the_newest_event_without_reading_the_log(event_store: NatsEventStore) -> None:
    assert await event_store.last_position() == 0
    await event_store.append("a", [ContractOrderPlaced("a", 1)])
    assert await event_store.last_position() == (await event_store.read_all())[-1].position
    await event_store.append("b", [ContractOrderPlaced("b", i) for i in range(3)])  # one message, 3 events
    await event_store.append("c", [ContractOrderPlaced("c", 1)], NO_STREAM)
    await event_store.append("b", [ContractOrderPlaced("b", 4), ContractOrderPlaced("b", 5)])
    events = await event_store.read_all()
    assert await event_store.last_position() == events[-1].position
    assert events[-1].position & ((1 << POSITION_SHIFT) - 1) == 1  # the second event of its message
