"""Leader kills on a 3-node JetStream cluster under load: the transport and the outbox relay.

Each test puts a steady load through replicated (R3) streams, kills the node that leads the stream
under test with SIGKILL, keeps the load going while the cluster elects a new leader, then checks:

* every acknowledged message is handled (0 lost; the dead-letter queue stays empty);
* under ``EXACTLY_ONCE``, no message is handled twice;
* publishers and consumers resume on the new leader.

Publishers retry a failed publish with the same message id (JetStream de-duplicates by
``Nats-Msg-Id``), as an application would. The figures (time from the kill to the new leader, to the
first acknowledged publish and to the first message handled again) are printed; run with ``-s`` to
see them. They are measured, not asserted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import pytest

from catga.errors import BackendError
from catga.ids import new_id
from catga.memory import MemoryDeadLetterQueue, MemoryOutboxStore
from catga.messages import Metadata, QoS
from catga.nats import NatsConnection, NatsOutboxStore, NatsTransport
from catga.outbox import OutboxRelay
from catga.protocols import OutboxMessage, OutboxStore
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from chaos import Chaos

if TYPE_CHECKING:
    from catga.testing.cluster import NatsCluster

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.chaos]

PUBLISHERS = 4  # concurrent publishers, each waiting for its ack before the next message
PAUSE = 0.01  # seconds between one publisher's messages
WARM_UP = 40  # messages handled before the kill
AFTER_LEADER = (2, 15)  # seconds of load after the new leader is elected (make test, make chaos)
DRAIN = 25.0  # seconds allowed for every acknowledged message to be handled after the load stops
TIMEOUT = 2.0  # seconds per network call (the transport's timeout=)
# Seconds before JetStream redelivers a message whose delivery or ack was lost; also the EXACTLY_ONCE
# inbox claim's lock: longer than an election (4-8 s here), as the default 30 s is.
ACK_WAIT = 15.0

# Reconnect quickly: nats-py waits 2 s between attempts to one server by default.
# Keep the order of the URL list (the first server is the one a test kills).
CONNECT = {"reconnect_time_wait": 0.1, "max_reconnect_attempts": -1, "dont_randomize": True}

_log = logging.getLogger(__name__)


@dataclass
class Run:
    """What happened to every message of one test run (times are ``time.monotonic()``)."""

    acked: dict[int, float] = field(default_factory=dict)  # message id -> its publish was acknowledged
    started: dict[int, float] = field(default_factory=dict)  # message id -> its successful attempt began
    handled: collections.Counter[int] = field(default_factory=collections.Counter)
    first_handled: dict[int, float] = field(default_factory=dict)
    publish_errors: int = 0
    kill_at: float = 0.0
    leader_at: float = 0.0

    def on_handled(self, message_id: int) -> None:
        self.handled[message_id] += 1
        self.first_handled.setdefault(message_id, time.monotonic())

    def missing(self) -> set[int]:
        return set(self.acked) - set(self.handled)

    def figures(self, name: str) -> dict[str, Any]:
        kill = self.kill_at
        after = [i for i, t in self.started.items() if t >= kill]
        publish_resumed = min((self.acked[i] for i in after), default=None)
        handled_again = min((self.first_handled[i] for i in after if i in self.first_handled), default=None)
        figures = {
            "scenario": name,
            "published": len(self.acked),
            "handled": len(self.handled),
            "lost": len(self.missing()),
            "handled twice": sum(1 for n in self.handled.values() if n > 1),
            "publish errors": self.publish_errors,
            "new leader s": round(self.leader_at - kill, 2),
            "publish resumed s": None if publish_resumed is None else round(publish_resumed - kill, 2),
            "handled again s": None if handled_again is None else round(handled_again - kill, 2),
        }
        print(f"\nLEADER-KILL {figures}")  # the figures this test exists to measure
        return figures

    def record(self, chaos: Chaos, figures: dict[str, Any]) -> None:
        """One row of the fault suite's table; recovery = kill to the first message handled again."""
        chaos.record(
            f"NATS 3-node cluster, stream leader killed: {figures['scenario']} "
            f"(new leader after {figures['new leader s']} s)",
            messages=figures["published"],
            kills=1,
            lost=figures["lost"],
            twice=figures["handled twice"],
            recovery_s=figures["handled again s"],
        )

    def explain_missing(self) -> list[str]:
        """The missing messages: when each was acknowledged, relative to the kill."""
        missing = sorted(self.missing())[:20]
        return [f"{i}: acked at kill{self.acked[i] - self.kill_at:+.2f} s" for i in missing]


async def _publish_load(
    run: Run, publish: Callable[[int, Metadata], Awaitable[None]], stop: asyncio.Event
) -> None:
    """``PUBLISHERS`` loops publishing numbered messages, each retried (same id) until acknowledged."""
    counter = iter(range(1_000_000))

    async def one_publisher() -> None:
        while not stop.is_set():
            n = next(counter)
            # (Metadata's qos defaults to AT_MOST_ONCE: a core publish, never acknowledged)
            metadata = Metadata(message_id=new_id(), created_at=time.time(), qos=QoS.AT_LEAST_ONCE)
            while True:
                began = time.monotonic()
                try:
                    await publish(n, metadata)
                except BackendError as exc:  # unavailable, timed out, or a 503 during the election
                    run.publish_errors += 1
                    if stop.is_set():  # never acknowledged: not counted
                        return
                    _log.debug("publish %d failed (%r); retrying it", n, exc)
                    await asyncio.sleep(0.05)
                    continue
                run.started[metadata.message_id] = began
                run.acked[metadata.message_id] = time.monotonic()
                break
            await asyncio.sleep(PAUSE)

    await asyncio.gather(*(one_publisher() for _ in range(PUBLISHERS)))


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _stream_leader(cluster: NatsCluster, stream: str) -> int:
    for _ in range(500):
        leader = await asyncio.to_thread(cluster.stream_leader, stream)
        if leader is not None:
            return leader
        await asyncio.sleep(0.02)
    raise AssertionError(f"stream {stream!r} has no leader")


async def _kill_leader_under_load(
    cluster: NatsCluster,
    stream: str,
    run: Run,
    publish: Callable[[int, Metadata], Awaitable[None]],
    chaos: Chaos,
) -> None:
    """Load, kill ``stream``'s leader, wait for the next one, load a while more, stop the load."""
    stop = asyncio.Event()
    load = asyncio.create_task(_publish_load(run, publish, stop))
    try:
        await _until(lambda: len(run.handled) >= WARM_UP, 20.0, f"{WARM_UP} messages handled before the kill")
        leader = await _stream_leader(cluster, stream)
        run.kill_at = time.monotonic()
        cluster.kill_node(leader)
        await asyncio.to_thread(cluster.wait_for_stream_leader, stream, exclude=leader, timeout=20.0)
        run.leader_at = time.monotonic()
        await _until(
            lambda: any(t >= run.kill_at for t in run.started.values()),
            20.0,
            "a publish acknowledged after the kill",
        )
        await asyncio.sleep(chaos.size(*AFTER_LEADER))
    finally:
        stop.set()
        await load
    with contextlib.suppress(AssertionError):  # the test reports what is missing
        await _until(lambda: not run.missing(), DRAIN, "every acknowledged message to be handled")


@pytest.fixture
async def admin(nats_cluster: NatsCluster, unique_name: str) -> AsyncIterator[NatsConnection]:
    """A connection for set-up; deletes the test's streams afterwards (the cluster is shared)."""
    async with await NatsConnection.connect(
        nats_cluster.urls, name="catga-failover-admin", **CONNECT
    ) as conn:
        yield conn
        upper = unique_name.upper()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            for info in await conn.js.streams_info():
                name = info.config.name or ""
                if name.startswith((upper, f"KV_{upper}", f"KV_{unique_name}")):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await conn.js.delete_stream(name)


def _leader_first(cluster: NatsCluster, leader: int) -> str:
    """The cluster's URLs with node ``leader`` first: clients connected to it lose their connection."""
    nodes = cluster.nodes
    return ",".join([nodes[leader].url, *(node.url for i, node in enumerate(nodes) if i != leader)])


async def _transport(urls: str, name: str, **options: Any) -> NatsTransport:
    """A transport on its own connection (another process, as far as the cluster can tell)."""
    return await NatsTransport.connect(
        urls,
        connect_options=CONNECT,
        registry=contract_registry(),
        prefix=name,
        replicas=3,
        timeout=TIMEOUT,
        ack_wait=ACK_WAIT,
        **options,
    )


async def _ready(attempt: Callable[[], Awaitable[Any]]) -> Any:
    """Retry ``attempt`` while a new replicated stream elects its first leader."""
    for _ in range(100):
        with contextlib.suppress(BackendError):
            return await attempt()
        await asyncio.sleep(0.1)
    return await attempt()


async def _create_streams(urls: str, name: str) -> str:
    """Create the transport's R3 streams; return the events stream's name."""
    async with await _transport(urls, name) as setup:
        await _ready(lambda: setup.publish(ContractOrderPlaced("set-up", 0)))  # no consumer yet: dropped
        return setup.stream


@pytest.mark.parametrize("qos", [QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE], ids=["at-least-once", "exactly-once"])
async def test_transport_consumers_survive_a_stream_leader_kill(
    nats_cluster: NatsCluster, admin: NatsConnection, unique_name: str, qos: QoS, chaos: Chaos
) -> None:
    stream = await _create_streams(nats_cluster.urls, unique_name)
    urls = _leader_first(nats_cluster, await _stream_leader(nats_cluster, stream))
    run = Run()
    dead_letters = MemoryDeadLetterQueue()
    async with (
        await _transport(urls, unique_name) as publisher,
        await _transport(urls, unique_name, dead_letters=dead_letters) as consumer,
    ):

        async def handle(event: ContractOrderPlaced, metadata: Metadata) -> None:
            run.on_handled(metadata.message_id)

        await _ready(
            lambda: consumer.subscribe(ContractOrderPlaced, handle, qos=qos, group="g", max_in_flight=32)
        )

        async def publish(n: int, metadata: Metadata) -> None:
            await publisher.publish(ContractOrderPlaced(f"o-{n}", n), metadata=metadata)

        await _kill_leader_under_load(nats_cluster, stream, run, publish, chaos)
    figures = run.figures(f"transport {qos.name}")
    run.record(chaos, figures)
    assert figures["lost"] == 0, run.explain_missing()
    assert await dead_letters.count() == 0, await dead_letters.list(10)
    if qos == QoS.EXACTLY_ONCE:
        assert figures["handled twice"] == 0, [i for i, n in run.handled.items() if n > 1][:10]
    assert figures["handled again s"] is not None


@pytest.mark.parametrize(
    ("outbox_kind", "victim"),
    [("nats", "outbox"), ("nats", "messages"), ("memory", "messages")],
    ids=[
        "nats-outbox-kill-outbox-leader",
        "nats-outbox-kill-messages-leader",
        "memory-outbox-kill-messages-leader",
    ],
)
async def test_the_outbox_relay_survives_a_leader_kill(
    nats_cluster: NatsCluster,
    admin: NatsConnection,
    unique_name: str,
    outbox_kind: str,
    victim: str,
    chaos: Chaos,
) -> None:
    bucket = f"{unique_name}_outbox"
    stream = await _create_streams(nats_cluster.urls, unique_name)
    if outbox_kind == "nats":
        async with NatsOutboxStore(admin, bucket=bucket, replicas=3, timeout=TIMEOUT) as setup:
            await _ready(setup.count)
    if victim == "outbox":
        stream = f"KV_{bucket}"
    urls = _leader_first(nats_cluster, await _stream_leader(nats_cluster, stream))
    run = Run()
    dead_letters = MemoryDeadLetterQueue()
    registry = contract_registry()
    type_name = registry.name_of(ContractOrderPlaced)
    codec = registry.codec_for(ContractOrderPlaced)
    outbox: OutboxStore = MemoryOutboxStore()
    if outbox_kind == "nats":
        outbox = await NatsOutboxStore.connect(
            urls, connect_options=CONNECT, bucket=bucket, replicas=3, timeout=TIMEOUT
        )
    try:
        async with (
            await _transport(urls, unique_name) as publisher,
            await _transport(urls, unique_name, dead_letters=dead_letters) as consumer,
        ):
            relay = OutboxRelay(
                outbox,
                publisher,
                dead_letters=dead_letters,
                poll_interval=0.05,
                lease=ACK_WAIT,
                max_attempts=1000,
                retry_backoff=0.05,
                retry_backoff_max=0.5,
            )

            async def handle(event: ContractOrderPlaced, metadata: Metadata) -> None:
                run.on_handled(metadata.message_id)

            await _ready(
                lambda: consumer.subscribe(
                    ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, group="g", max_in_flight=32
                )
            )

            async def add(n: int, metadata: Metadata) -> None:
                message = OutboxMessage(
                    id=str(metadata.message_id),
                    destination=type_name,
                    type_name=type_name,
                    body=codec.encode(ContractOrderPlaced(f"o-{n}", n)),
                    headers=metadata.to_headers(type_name),
                    created_at=metadata.created_at,
                )
                await outbox.add([message])  # a retry after an unknown outcome: same id, ignored
                relay.notify()

            async with relay:
                await _kill_leader_under_load(nats_cluster, stream, run, add, chaos)
    finally:
        if isinstance(outbox, NatsOutboxStore):
            await outbox.aclose()
    figures = run.figures(f"outbox relay ({outbox_kind} outbox, {victim} leader killed)")
    run.record(chaos, figures)
    assert figures["lost"] == 0, run.explain_missing()
    assert relay.dead == 0 and await dead_letters.count() == 0, await dead_letters.list(10)
    assert figures["handled twice"] == 0, [i for i, n in run.handled.items() if n > 1][:10]
    assert figures["handled again s"] is not None
