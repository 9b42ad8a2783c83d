"""A 3-node JetStream cluster on loopback: replicated streams survive the loss of one node."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from catga.errors import BackendTimeoutError, BackendUnavailableError
from catga.nats import NatsConnection, NatsEventStore, NatsLock
from catga.protocols import NO_STREAM
from catga.testing import NatsCluster
from catga.testing.contracts import ContractOrderPlaced, contract_registry

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_a_replicated_event_stream_survives_losing_a_node(
    nats_cluster: NatsCluster, unique_name: str
) -> None:
    store = await NatsEventStore.connect(
        nats_cluster.urls,
        stream=unique_name,
        prefix=unique_name,
        registry=contract_registry(),
        replicas=3,
        connect_options={"reconnect_time_wait": 0.1},
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
        nats_cluster.stop_node(2)
        version = 0
        for _ in range(200):
            try:
                version = await store.append("c", [ContractOrderPlaced("o", 1)], 0)
                break
            except (BackendUnavailableError, BackendTimeoutError):
                await asyncio.sleep(0.1)
        assert version == 1
        assert [e.version for e in await store.read("c")] == [0, 1]


async def test_a_lock_on_a_replicated_bucket(nats_cluster: NatsCluster, unique_name: str) -> None:
    async with await NatsLock.connect(nats_cluster.urls, replicas=3, bucket=unique_name) as lock:
        lease = None
        for _ in range(100):
            with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
                lease = await lock.acquire("k", ttl=5.0)
                break
            await asyncio.sleep(0.1)
        assert lease is not None
        await lease.release()


async def test_the_cluster_helper_finds_kills_and_brings_back_a_stream_leader(
    nats_cluster: NatsCluster, unique_name: str
) -> None:
    assert [nats_cluster.node(i).running for i in range(3)] == [True, True, True]
    assert nats_cluster.urls.count("nats://127.0.0.1:") == 3
    async with await NatsConnection.connect(nats_cluster.urls) as conn:
        await conn.js.add_stream(name=unique_name, subjects=[f"{unique_name}.>"], num_replicas=3)
        await conn.js.publish(f"{unique_name}.a", b"1")
        info = await conn.js.stream_info(unique_name)
    assert info.cluster is not None and info.cluster.leader is not None
    leader = await asyncio.to_thread(nats_cluster.wait_for_stream_leader, unique_name)
    assert nats_cluster.index_of(info.cluster.leader) == leader  # /jsz agrees with the JetStream API
    port = nats_cluster.node(leader).port
    nats_cluster.kill_node(leader)
    assert not nats_cluster.node(leader).running
    successor = await asyncio.to_thread(nats_cluster.wait_for_stream_leader, unique_name, exclude=leader)
    assert successor != leader
    nats_cluster.restart_node(leader)  # same port, same data: it rejoins as a follower
    assert nats_cluster.node(leader).running and nats_cluster.node(leader).port == port
    async with await NatsConnection.connect(nats_cluster.node(leader).url) as conn:
        for _ in range(100):  # the restarted node catches up
            info = await conn.js.stream_info(unique_name)
            if info.state.messages == 1:
                break
            await asyncio.sleep(0.05)
    assert info.state.messages == 1
