"""NatsTransport against a real nats-server: core NATS (at-most-once) and JetStream (at-least-once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import nats.js.errors
import pytest

from catga.errors import InvalidIdentifierError, OperationTimeoutError, PayloadTooLargeError
from catga.memory import MemoryDeadLetterQueue, MemoryInboxStore
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.nats import NatsConnection, NatsDeadLetterQueue
from catga.nats._jetstream import subject_matches as _subject_matches
from catga.nats.transport import H_ERROR, NatsTransport
from catga.protocols import DeadLetterQueue, InboxStore
from catga.testing.contracts import TransportContract
from catga.testing.contracts._util import eventually
from catga.testing.contracts.messages import (
    ContractDoWork,
    ContractNoted,
    ContractOrderPlaced,
    contract_registry,
)

pytestmark = pytest.mark.nats


class Env:
    """What a test needs: a transport factory on one bus (prefix), a shared DLQ and inbox."""

    def __init__(self, url: str, name: str, conn: NatsConnection) -> None:
        self.url = url
        self.name = name
        self.conn = conn
        self.dead_letters: DeadLetterQueue = MemoryDeadLetterQueue()
        self.inbox = MemoryInboxStore()
        self.registry = contract_registry()
        self.transports: list[NatsTransport] = []

    async def transport(self, **options: Any) -> NatsTransport:
        opts: dict[str, Any] = {
            "registry": self.registry,
            "prefix": self.name,
            "stream": self.name.upper(),
            "dead_letters": self.dead_letters,
            "inbox": self.inbox,
            "retry_backoff": 0.02,
            "retry_backoff_max": 0.1,
            "ack_wait": 5.0,
            "storage": "memory",
            "drain_timeout": 5.0,
        }
        opts.update(options)
        t = await NatsTransport.connect(self.url, **opts)  # its own connection: "another process"
        self.transports.append(t)
        return t

    async def aclose(self) -> None:
        for t in self.transports:
            await t.aclose()
        base = self.name.upper()
        for stream in (base, f"{base}_COMMANDS", f"KV_{base}_INBOX", f"KV_{base}_DLQ"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.conn.js.delete_stream(stream)


@pytest.fixture
async def env(nats_url: str, unique_name: str, nats_connection: NatsConnection) -> AsyncIterator[Env]:
    e = Env(nats_url, unique_name, nats_connection)
    yield e
    await e.aclose()


class TestNatsTransport(TransportContract):
    """The transport contract on NATS: each factory call is a new connection (another process), all
    sharing one :class:`~catga.nats.NatsDeadLetterQueue`."""

    @pytest.fixture
    async def transport_dead_letters(
        self, nats_connection: NatsConnection, unique_name: str
    ) -> AsyncIterator[DeadLetterQueue]:
        dlq = NatsDeadLetterQueue(nats_connection, bucket=f"{unique_name.upper()}_DLQ", storage="memory")
        yield dlq
        await dlq.aclose()

    @pytest.fixture
    async def transport_factory(
        self, env: Env, transport_dead_letters: DeadLetterQueue
    ) -> AsyncIterator[Callable[[], Awaitable[NatsTransport]]]:
        env.dead_letters = transport_dead_letters

        async def make() -> NatsTransport:
            return await env.transport(retry_backoff=0.01, retry_backoff_max=0.05)

        yield make

    @pytest.fixture
    async def transport_inbox_factory(
        self, env: Env, transport_dead_letters: DeadLetterQueue
    ) -> AsyncIterator[Callable[[InboxStore], Awaitable[NatsTransport]]]:
        env.dead_letters = transport_dead_letters

        async def make(inbox: InboxStore) -> NatsTransport:
            return await env.transport(retry_backoff=0.01, retry_backoff_max=0.05, inbox=inbox)

        yield make


class Recorder:
    """A handler that records what it got and can fail or block on demand."""

    def __init__(self, fail_times: int = 0, fail_always: bool = False) -> None:
        self.got: list[tuple[Any, Metadata]] = []
        self.calls = 0
        self.fail_times = fail_times
        self.fail_always = fail_always

    async def __call__(self, message: Any, metadata: Metadata) -> None:
        self.calls += 1
        if self.fail_always or self.calls <= self.fail_times:
            raise RuntimeError(f"boom {self.calls}")
        self.got.append((message, metadata))

    def values(self) -> list[Any]:
        return [m for m, _ in self.got]


async def count_is(n: int, rec: Recorder) -> None:
    async def check() -> bool:
        return len(rec.got) >= n

    await eventually(check, what=f"{n} messages handled")


# --------------------------------------------------------------------------------------------------
# publish / send


@pytest.mark.parametrize("qos", [QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE])
async def test_publish_fans_out_to_groups_and_ungrouped_subscriptions(env: Env, qos: QoS) -> None:
    a, b = await env.transport(), await env.transport()
    g1a, g1b, g2, solo1, solo2 = (Recorder() for _ in range(5))
    await a.subscribe(ContractOrderPlaced, g1a, qos=qos, group="g1")
    await b.subscribe(ContractOrderPlaced, g1b, qos=qos, group="g1")
    await b.subscribe(ContractOrderPlaced, g2, qos=qos, group="g2")
    await a.subscribe(ContractOrderPlaced, solo1, qos=qos)
    await b.subscribe(ContractOrderPlaced, solo2, qos=qos)
    sent = [ContractOrderPlaced(f"o{i}", i) for i in range(20)]
    for m in sent:
        await a.publish(m, metadata=Metadata(message_id=1000 + m.total, qos=qos))
    for rec in (g2, solo1, solo2):
        await count_is(20, rec)
        assert sorted(rec.values(), key=lambda m: m.total) == sent

    async def group_done() -> bool:
        return len(g1a.got) + len(g1b.got) >= 20

    await eventually(group_done, what="group g1 got every message")
    shared = sorted([*g1a.values(), *g1b.values()], key=lambda m: m.total)
    assert shared == sent  # each message once across the two members


async def test_at_least_once_send_waits_for_a_worker(env: Env) -> None:
    t = await env.transport()
    await t.send(ContractDoWork(7, "early"))
    rec = Recorder()
    await t.subscribe(ContractDoWork, rec)
    await count_is(1, rec)
    assert rec.values() == [ContractDoWork(7, "early")]


async def test_metadata_travels_beside_the_message(env: Env) -> None:
    t = await env.transport()
    rec = Recorder()
    await t.subscribe(ContractNoted, rec, group="g")
    meta = Metadata(
        message_id=42,
        correlation_id=7,
        causation_id=6,
        qos=QoS.AT_LEAST_ONCE,
        headers={"traceparent": "00-x"},
    )
    await t.publish(ContractNoted("héllo", 3), metadata=meta)
    await count_is(1, rec)
    message, got = rec.got[0]
    assert message == ContractNoted("héllo", 3)
    assert (got.message_id, got.correlation_id, got.causation_id) == (42, 7, 6)
    assert got.headers == {"traceparent": "00-x"}  # no Nats-* header leaks into user headers


async def test_wire_format_is_readable_by_a_plain_nats_client(env: Env) -> None:
    t = await env.transport()
    nc = await nats.connect(env.url)
    try:
        sub = await nc.subscribe(f"{env.name}.evt.orders")
        await nc.flush()
        await t.publish(ContractOrderPlaced("o-1", 5), destination="orders")
        msg = await sub.next_msg(timeout=5)
    finally:
        await nc.close()
    assert msg.headers is not None
    assert msg.headers[H_TYPE] == "contracts.OrderPlaced"
    assert msg.headers["Nats-Msg-Id"] == msg.headers[H_ID]
    assert msgspec.json.decode(msg.data) == {"order_id": "o-1", "total": 5}


async def test_nats_msg_id_deduplicates_publishes(env: Env) -> None:
    t = await env.transport()
    rec = Recorder()
    await t.subscribe(ContractOrderPlaced, rec, group="g")
    meta = Metadata(message_id=777, qos=QoS.AT_LEAST_ONCE)
    await t.publish(ContractOrderPlaced("dup", 1), metadata=meta)
    await t.publish(ContractOrderPlaced("dup", 1), metadata=meta)
    await t.publish(ContractOrderPlaced("sentinel", 2))
    await count_is(2, rec)
    await asyncio.sleep(0.2)
    assert [m.order_id for m in rec.values()] == ["dup", "sentinel"]
    info = await t._js.stream_info(t.stream)
    assert info.state.last_seq == 2  # the duplicate was never stored


# --------------------------------------------------------------------------------------------------
# at-least-once: retries, dead letters


async def test_message_goes_to_dead_letters_after_max_deliver(env: Env) -> None:
    t = await env.transport()
    rec = Recorder(fail_always=True)
    await t.subscribe(ContractOrderPlaced, rec, group="g", max_deliver=3)
    await t.publish(ContractOrderPlaced("bad", 1), metadata=Metadata(message_id=55, qos=QoS.AT_LEAST_ONCE))

    async def dead() -> bool:
        return await env.dead_letters.count() == 1

    await eventually(dead, what="dead letter stored")
    letter = await env.dead_letters.get("55")
    assert letter is not None
    assert letter.error == "RuntimeError: boom 3"
    assert letter.attempts == 3
    assert letter.type_name == "contracts.OrderPlaced"
    assert msgspec.json.decode(letter.body) == {"order_id": "bad", "total": 1}
    assert letter.headers[H_ID] == "55" and letter.source == "contracts.OrderPlaced"
    await asyncio.sleep(0.3)  # terminated: no further delivery
    assert rec.calls == 3


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({H_TYPE: "nobody.Knows", H_ID: "1"}, b"{}", "unknown message type 'nobody.Knows'"),
        ({H_TYPE: "contracts.OrderPlaced", H_ID: "2"}, b"{not json", "cannot decode contracts.OrderPlaced"),
        ({}, b"plain", "no Catga-Type header"),
        ({H_TYPE: "contracts.Noted", H_ID: "3"}, b'{"text": "x"}', "decodes only 'contracts.OrderPlaced'"),
    ],
)
@pytest.mark.parametrize("qos", [QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE])
async def test_undecodable_message_goes_straight_to_dead_letters(
    env: Env, headers: dict[str, str], body: bytes, reason: str, qos: QoS
) -> None:
    t = await env.transport()
    rec = Recorder()
    await t.subscribe(ContractOrderPlaced, rec, group="g", qos=qos, destination="raw")
    await t.publish_raw("raw", body, headers)

    async def dead() -> bool:
        return await env.dead_letters.count() == 1

    await eventually(dead, what="undecodable message dead-lettered")
    (letter,) = await env.dead_letters.list()
    assert reason in letter.error
    assert letter.body == body
    assert letter.attempts == 1
    await t.publish(ContractOrderPlaced("after", 1), destination="raw")
    await count_is(1, rec)  # the subscription kept working
    assert rec.calls == 1 and await env.dead_letters.count() == 1


async def test_at_most_once_failure_is_not_retried(env: Env) -> None:
    t = await env.transport()
    rec = Recorder(fail_times=1)
    await t.subscribe(ContractOrderPlaced, rec, qos=QoS.AT_MOST_ONCE)
    m = Metadata(message_id=1, qos=QoS.AT_MOST_ONCE)
    await t.publish(ContractOrderPlaced("lost", 1), metadata=m)
    await t.publish(ContractOrderPlaced("kept", 2), metadata=Metadata(message_id=2, qos=QoS.AT_MOST_ONCE))
    await count_is(1, rec)
    await asyncio.sleep(0.2)
    assert [x.order_id for x in rec.values()] == ["kept"] and rec.calls == 2
    assert await env.dead_letters.count() == 0


# --------------------------------------------------------------------------------------------------
# back-pressure, exactly-once, lifecycle


@pytest.mark.parametrize("qos", [QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE])
async def test_max_in_flight_bounds_concurrent_handlers(env: Env, qos: QoS) -> None:
    t = await env.transport()
    running = 0
    peak = 0
    done: list[int] = []
    gate = asyncio.Event()

    async def slow(message: ContractOrderPlaced, metadata: Metadata) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done.append(message.total)

    await t.subscribe(ContractOrderPlaced, slow, qos=qos, max_in_flight=3)
    for i in range(10):
        await t.publish(ContractOrderPlaced("x", i), metadata=Metadata(message_id=100 + i, qos=qos))

    async def saturated() -> bool:
        return running == 3

    await eventually(saturated, what="3 handlers running")
    await asyncio.sleep(0.2)
    assert running == 3 and peak == 3
    gate.set()

    async def all_done() -> bool:
        return len(done) == 10

    await eventually(all_done, what="all 10 handled")
    assert peak == 3 and sorted(done) == list(range(10))


async def test_exactly_once_runs_the_handler_once_per_message_id(env: Env) -> None:
    t = await env.transport()
    rec = Recorder()
    await t.subscribe(ContractOrderPlaced, rec, qos=QoS.EXACTLY_ONCE, group="g")
    headers = Metadata(message_id=31337, qos=QoS.EXACTLY_ONCE).to_headers("contracts.OrderPlaced")
    body = msgspec.json.encode(ContractOrderPlaced("once", 1))
    # publish_raw sends no Nats-Msg-Id: both copies reach the stream, only the inbox can dedupe them
    await t.publish_raw("contracts.OrderPlaced", body, headers)
    await t.publish_raw("contracts.OrderPlaced", body, headers)
    await t.publish(ContractOrderPlaced("sentinel", 2))
    await count_is(2, rec)
    await asyncio.sleep(0.2)
    assert sorted(m.order_id for m in rec.values()) == ["once", "sentinel"]
    assert rec.calls == 2


async def test_exactly_once_defaults_to_a_nats_inbox(env: Env) -> None:
    t = await env.transport(inbox=None)
    rec = Recorder()
    await t.subscribe(ContractOrderPlaced, rec, qos=QoS.EXACTLY_ONCE, group="g")
    headers = Metadata(message_id=4242).to_headers("contracts.OrderPlaced")
    body = msgspec.json.encode(ContractOrderPlaced("once", 1))
    await t.publish_raw("contracts.OrderPlaced", body, headers)
    await t.publish_raw("contracts.OrderPlaced", body, headers)
    await t.publish(ContractOrderPlaced("sentinel", 2))
    await count_is(2, rec)
    await asyncio.sleep(0.2)
    assert rec.calls == 2
    assert await t._js.stream_info(f"KV_{t.stream}_INBOX")  # the default inbox bucket


async def test_aclose_waits_for_in_flight_handlers_and_acks_them(env: Env) -> None:
    t = await env.transport()
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(message: ContractOrderPlaced, metadata: Metadata) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    sub = await t.subscribe(ContractOrderPlaced, slow, group="g")
    await t.publish(ContractOrderPlaced("drain", 1))
    await asyncio.wait_for(started.wait(), 5)
    await sub.aclose()
    assert finished.is_set()
    # the message was acked: a new member of the group does not get it again
    t2 = await env.transport()
    rec = Recorder()
    await t2.subscribe(ContractOrderPlaced, rec, group="g")
    await t2.publish(ContractOrderPlaced("next", 2))
    await count_is(1, rec)
    assert [m.order_id for m in rec.values()] == ["next"]


async def test_private_consumer_is_deleted_on_close(env: Env) -> None:
    t = await env.transport()
    sub = await t.subscribe(ContractOrderPlaced, Recorder())
    grouped = await t.subscribe(ContractOrderPlaced, Recorder(), group="keep")
    assert len(await t._js.consumers_info(t.stream)) == 2
    await sub.aclose()
    await grouped.aclose()
    names = [c.name for c in await t._js.consumers_info(t.stream)]
    assert len(names) == 1 and "keep" in names[0]  # durable group stays, private one is gone


async def test_closed_transport_refuses_work(env: Env) -> None:
    t = await env.transport()
    await t.aclose()
    await t.aclose()  # idempotent
    with pytest.raises(ConnectionError):
        await t.publish(ContractOrderPlaced("late", 1))


async def test_invalid_identifiers_are_rejected_before_io(env: Env) -> None:
    t = await env.transport()
    with pytest.raises(InvalidIdentifierError):
        await t.publish(ContractOrderPlaced("x", 1), destination="a.*")
    with pytest.raises(InvalidIdentifierError):
        await t.subscribe(ContractOrderPlaced, Recorder(), group="has space")
    with pytest.raises(InvalidIdentifierError):
        await t.request("bad>", b"")


# --------------------------------------------------------------------------------------------------
# request / reply


async def test_request_reply_and_queue_group(env: Env) -> None:
    a, b = await env.transport(), await env.transport()
    seen: list[str] = []

    async def make(name: str) -> Any:
        async def handler(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            seen.append(name)
            return body.upper(), {"served-by": name}

        return handler

    await a.serve("echo", await make("a"))
    await b.serve("echo", await make("b"))
    replies = await asyncio.gather(*(a.request("echo", f"m{i}".encode(), timeout=5) for i in range(20)))
    assert [r[0] for r in replies] == [f"M{i}".encode() for i in range(20)]
    assert len(seen) == 20  # a queue group: each request served once


async def test_request_times_out_with_destination_and_seconds(env: Env) -> None:
    t = await env.transport()

    async def slow(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        await asyncio.sleep(1)
        return b"", {}

    await t.serve("slow", slow)
    with pytest.raises(OperationTimeoutError) as info:
        await t.request("slow", b"", timeout=0.2)
    assert info.value.seconds == 0.2 and "'slow'" in str(info.value)
    with pytest.raises(OperationTimeoutError, match="'nobody'"):
        await t.request("nobody", b"", timeout=0.2)


async def test_serve_handler_error_is_answered(env: Env) -> None:
    t = await env.transport()

    async def broken(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        raise ValueError("nope")

    await t.serve("broken", broken)
    body, headers = await t.request("broken", b"x", timeout=5)
    assert body == b"" and headers[H_ERROR] == "ValueError: nope"


# --------------------------------------------------------------------------------------------------
# the benchmark suite


@pytest.mark.parametrize("impl", ["catga", "faststream", "nats-py"])
async def test_bench_suite_cases_run(nats_url: str, monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    from catga.bench.harness import BenchConfig, BenchEnv, run_case
    from catga.bench.suites import transport_nats

    monkeypatch.setenv("CATGA_NATS_URL", nats_url)
    assert transport_nats.SUITE == "transport-nats"
    (case,) = [c for c in transport_nats.cases(BenchEnv(quick=True)) if c.impl == impl]
    config = BenchConfig(concurrency=(1, 4), duration=0.05, warmup=0.0, quick=True)
    async with BenchEnv(quick=True, max_concurrency=4) as env:
        results = await run_case(transport_nats.SUITE, case, env, config)
    assert [r.concurrency for r in results] == [1, 4]
    assert all(r.ops > 0 for r in results)


@pytest.mark.slow
async def test_an_at_least_once_consumer_resumes_after_the_server_restarts(tmp_path: Any) -> None:
    from catga.errors import BackendError
    from catga.testing.servers import NatsServer, free_port

    server = NatsServer(port=free_port(), store_dir=tmp_path / "js")
    server.start()
    try:
        transport = await NatsTransport.connect(
            server.url,
            registry=contract_registry(),
            pull_expires=0.5,
            timeout=2.0,
            connect_options={"reconnect_time_wait": 0.1, "max_reconnect_attempts": -1},
        )
        got: list[int] = []

        async def on_placed(message: ContractOrderPlaced, metadata: Metadata) -> None:
            got.append(message.total)

        async with transport:
            await transport.subscribe(ContractOrderPlaced, on_placed, group="g")
            await transport.publish(ContractOrderPlaced("o", 1))

            async def first() -> bool:
                return got == [1]

            async def both() -> bool:
                return got == [1, 2]

            await eventually(first, what="the first delivery")
            server.stop()
            server.start()  # same port, same storage: the stream and the durable consumer survive
            for _ in range(100):  # publishing works again once JetStream is back
                try:
                    await transport.publish(ContractOrderPlaced("o", 2))
                    break
                except BackendError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("could not publish after the restart")
            await eventually(both, what="a delivery after the restart", timeout=20.0)
    finally:
        server.stop()


async def test_the_servers_max_payload_caps_a_larger_configured_limit(env: Env) -> None:
    transport = await env.transport(max_payload=4 * 1024 * 1024)  # the test server allows 1 MiB
    assert transport.client.max_payload == 1024 * 1024
    with pytest.raises(PayloadTooLargeError) as info:
        await transport.publish(ContractOrderPlaced("x" * 2_000_000, 1))
    assert info.value.limit == 1024 * 1024 and info.value.size > 2_000_000
    with pytest.raises(PayloadTooLargeError):
        await transport.publish(
            ContractOrderPlaced("x" * 2_000_000, 1), metadata=Metadata(message_id=1, qos=QoS.AT_MOST_ONCE)
        )


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("p.evt.a", "p.evt.a", True),
        ("p.evt.a", "p.evt.b", False),
        ("p.evt.a", "p.evt.a.b", False),
        ("p.evt.*", "p.evt.a", True),
        ("p.evt.*", "p.evt.a.b", False),
        ("p.*.a", "p.evt.a", True),
        ("p.>", "p.evt.a", True),
        ("p.evt.>", "p.evt", False),
        ("q.>", "p.evt.a", False),
    ],
)
def test_subject_filter_matching(pattern: str, subject: str, matches: bool) -> None:
    """Replay asks whether some consumer's filter reads an event's subject."""
    assert _subject_matches(pattern, subject) is matches
