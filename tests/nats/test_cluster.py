"""A 3-node JetStream cluster on loopback: replicated streams survive the loss of one node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from catga.errors import BackendTimeoutError, BackendUnavailableError
from catga.nats import NatsConnection, NatsEventStore, NatsLock
from catga.protocols import NO_STREAM
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.servers import NatsServer, free_port

pytestmark = [pytest.mark.nats, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[NatsServer]]:
    routes = [free_port() for _ in range(3)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    servers = [
        NatsServer(
            extra_args=[
                "-n",
                f"n{i}",
                "--cluster_name",
                "catga",
                "--cluster",
                f"nats://127.0.0.1:{routes[i]}",
                "--routes",
                route_urls,
            ],
            start_timeout=30,
        )
        for i in range(3)
    ]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield servers


async def _wait_for_meta_leader(url: str) -> None:
    async with await NatsConnection.connect(url) as conn:
        for _ in range(200):
            try:
                await conn.js.account_info()
                return
            except Exception:
                await asyncio.sleep(0.05)


async def test_a_replicated_event_stream_survives_losing_a_node(cluster: list[NatsServer]) -> None:
    urls = ",".join(s.url for s in cluster)
    await _wait_for_meta_leader(cluster[0].url)
    store = await NatsEventStore.connect(
        urls, registry=contract_registry(), replicas=3, connect_options={"reconnect_time_wait": 0.1}
    )
    async with store:
        for _ in range(100):  # the stream leader election takes a moment
            with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
                await store.append("c", [ContractOrderPlaced("o", 0)], NO_STREAM)
                break
            await asyncio.sleep(0.1)
        info = await store.connection.js.stream_info(store.stream)
        assert info.config.num_replicas == 3
        # stop one node: maybe the one the store is connected to, maybe the stream leader
        victim = cluster[2]
        victim.stop()
        version = 0
        for _ in range(200):
            try:
                version = await store.append("c", [ContractOrderPlaced("o", 1)], 0)
                break
            except (BackendUnavailableError, BackendTimeoutError):
                await asyncio.sleep(0.1)
        assert version == 1
        assert [e.version for e in await store.read("c")] == [0, 1]


async def test_a_lock_on_a_replicated_bucket(cluster: list[NatsServer]) -> None:
    live = [s.url for s in cluster if s.running]
    await _wait_for_meta_leader(live[0])
    async with await NatsLock.connect(
        ",".join(live), replicas=len(live), bucket="catga_cluster_locks"
    ) as lock:
        lease = None
        for _ in range(100):
            with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
                lease = await lock.acquire("k", ttl=5.0)
                break
            await asyncio.sleep(0.1)
        assert lease is not None
        await lease.release()
