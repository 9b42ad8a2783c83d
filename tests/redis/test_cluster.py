"""Redis Cluster: slot routing, redirects, the hash-tagged key layout, WAIT, and a primary killed under load.

The contract suites run on the cluster through ``contract_redis_url`` (see ``conftest.py``); this file
holds what only a cluster has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from catga.errors import BackendError, ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.eventsourcing import Snapshot
from catga.messages import Metadata, QoS
from catga.protocols import EVENT, DeadLetter, OutboxMessage, Schedule
from catga.redis import (
    RedisCache,
    RedisCheckpointStore,
    RedisClient,
    RedisClusterClient,
    RedisDeadLetterQueue,
    RedisEventStore,
    RedisIdempotencyStore,
    RedisLock,
    RedisOutboxStore,
    RedisScheduleStore,
    RedisSnapshotStore,
    RedisWorkflowStore,
)
from catga.redis._keys import FAMILIES, FIXED
from catga.redis.cluster import command_key, key_slot, parse_cluster_url
from catga.redis.transport import RedisTransport
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.contracts._util import eventually
from catga.testing.redis_cluster import RedisCluster
from catga.workflows import HistoryEntry, WorkflowInstance
from chaos import Chaos

pytestmark = pytest.mark.redis


@pytest.fixture
async def cluster_client(redis_cluster_url: str, unique_name: str) -> AsyncIterator[RedisClusterClient]:
    client = RedisClient.from_url(redis_cluster_url, prefix=unique_name)
    assert isinstance(client, RedisClusterClient)
    async with client:
        yield client


# -- pure functions ------------------------------------------------------------------------------
def test_key_slot_follows_the_cluster_spec() -> None:
    assert key_slot("123456789") == 0x31C3  # CRC16/XMODEM check value, below 16384
    assert key_slot("foo") == 12182  # as CLUSTER KEYSLOT foo answers
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # an empty tag hashes the whole key
    assert key_slot("foo{}{bar}") != key_slot("bar")


def test_command_key_finds_the_key_of_each_command_catga_sends() -> None:
    assert command_key(("GET", "k")) == "k"
    assert command_key(("EVALSHA", "sha", 2, "k1", "k2", "a")) == "k1"
    assert command_key(("EVALSHA", "sha", 0, "a")) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "BLOCK", 5, "STREAMS", "s", ">")) == "s"
    assert command_key(("XREAD", "COUNT", 1, "STREAMS", "s", "0")) == "s"
    assert command_key(("XGROUP", "CREATE", "s", "g", "$")) == "s"
    assert command_key(("XINFO", "GROUPS", "s")) == "s"
    assert command_key(("BLMPOP", 5, 1, "l", "LEFT")) == "l"
    assert command_key(("PING",)) is None
    assert command_key(("CONFIG", "GET", "save")) is None


def test_cluster_urls_name_several_seeds_and_refuse_a_database() -> None:
    seeds = parse_cluster_url("redis+cluster://u:p%40ss@127.0.0.1:7000,127.0.0.1:7001/?client_name=x")
    assert [s.address for s in seeds] == ["127.0.0.1:7000", "127.0.0.1:7001"]
    assert {(s.username, s.password, s.client_name) for s in seeds} == {("u", "p@ss", "x")}
    assert all(s.ssl_context is None for s in seeds)
    tls = parse_cluster_url("rediss+cluster://127.0.0.1:7000/?ssl_cert_reqs=none")
    assert tls[0].ssl_context is not None
    with pytest.raises(ConfigurationError, match="only database 0"):
        parse_cluster_url("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ConfigurationError, match="at least one host"):
        parse_cluster_url("redis+cluster:///")
    client = RedisClient.from_url("redis+cluster://127.0.0.1:7000/?wait_replicas=1&wait_timeout=0.5")
    assert isinstance(client, RedisClusterClient) and client.layout.cluster
    assert (client.wait_replicas, client.wait_timeout) == (1, 0.5)
    assert not RedisClient.from_url("redis://127.0.0.1:6379/0").layout.cluster
    with pytest.raises(ConfigurationError, match="wait_replicas"):
        RedisClient.from_url("redis+cluster://127.0.0.1:7000/?wait_replicas=x")


# -- routing ---------------------------------------------------------------------------------------
async def test_keys_spread_over_the_primaries_and_pipelines_keep_their_order(
    cluster_client: RedisClusterClient, unique_name: str
) -> None:
    keys = [f"{unique_name}:k{i}" for i in range(60)]
    assert await cluster_client.execute_many([("SET", k, i) for i, k in enumerate(keys)]) == [b"OK"] * 60
    assert await cluster_client.execute_many([("GET", k) for k in keys]) == [
        str(i).encode() for i in range(60)
    ]
    owners = {id(cluster_client._slots[key_slot(k)]) for k in keys}
    assert len(owners) == len(cluster_client.primaries()) == 3
    for node in cluster_client.primaries():  # each key is on the node its slot says, and only there
        here = await node.execute_many(
            [("EXISTS", k) for k in keys if cluster_client._slots[key_slot(k)] is node]
        )
        assert all(here)


async def test_a_stale_slot_map_is_corrected_by_moved(
    cluster_client: RedisClusterClient, unique_name: str
) -> None:
    key = f"{unique_name}:moved"
    await cluster_client.execute("SET", key, b"v")
    slot = key_slot(key)
    right = cluster_client._slots[slot]
    wrong = next(n for n in cluster_client.primaries() if n is not right)
    cluster_client._slots[slot] = wrong  # as if the slot had moved since the map was read
    refreshes = cluster_client.refreshes
    assert await cluster_client.execute("GET", key) == b"v"  # MOVED, followed
    assert cluster_client._slots[slot] is right
    assert await cluster_client.execute("GET", key) == b"v"
    assert cluster_client.refreshes == refreshes + 1  # and the whole map re-read once


async def test_ask_during_a_slot_migration_is_followed(
    cluster_client: RedisClusterClient, unique_name: str
) -> None:
    key = f"{{{unique_name}ask}}:k"
    slot = key_slot(key)
    await cluster_client.refresh()
    source = cluster_client._slots[slot]
    target = next(n for n in cluster_client.primaries() if n is not source)
    assert source is not None
    ids = {}
    for node in (source, target):
        ids[node] = (await node.execute("CLUSTER", "MYID")).decode()
    await target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    await source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    try:
        # the key is not on the source: the source answers ASK, the client asks the target
        assert await cluster_client.execute("SET", key, b"v") == b"OK"
        assert await cluster_client.execute("GET", key) == b"v"
        assert cluster_client._slots[slot] is source  # ASK does not re-point the slot
        assert await target.execute_many([("ASKING",), ("EXISTS", key)]) == [b"OK", 1]
    finally:
        await target.execute_many([("ASKING",), ("DEL", key)])
        for node in (source, target):  # end the migration: the slot stays on the source
            await node.execute("CLUSTER", "SETSLOT", slot, "STABLE")
        for node in (source, target):  # no slot left migrating or importing
            view = (await node.execute("CLUSTER", "NODES")).decode()
            assert "->-" not in view and "-<-" not in view


# -- the key layout ----------------------------------------------------------------------------------
async def test_every_script_touches_one_slot_and_the_braces_give_the_single_server_key(
    cluster_client: RedisClusterClient,
) -> None:
    client = cluster_client
    store = RedisEventStore(client, registry=contract_registry())
    for i in range(5):
        await store.append(f"o-{i}", [ContractOrderPlaced("o", i)])
    assert [e.position for e in await store.read_all()] == [1, 2, 3, 4, 5]
    for i in range(3):
        await (await RedisLock(client).acquire(f"l-{i}", ttl=5)).release()
    await RedisIdempotencyStore(client).complete("m-1")
    await RedisCache(client).set("c-1", b"x")
    outbox = RedisOutboxStore(client)
    await outbox.add(
        [OutboxMessage(id=f"ob-{i}", destination="d", type_name="t", body=b"") for i in range(4)]
    )
    await outbox.fetch_pending(1, lease=30)
    await outbox.mark_published(["ob-1"])
    await RedisDeadLetterQueue(client).add(DeadLetter(id="d-1", source="s", type_name="t", body=b""))
    schedules = RedisScheduleStore(client)
    for i in range(3):
        await schedules.add(Schedule(id=f"sc-{i}", due_at=0.0, kind=EVENT, type_name="T", body=b""))
    assert [s.id for s in await schedules.claim_due(2, lease=30)] == ["sc-0", "sc-1"]
    await schedules.retry((await schedules.get("sc-0")) or pytest.fail("sc-0"), 0.0, "boom")
    workflows = RedisWorkflowStore(client)
    for i in range(3):
        await workflows.create(WorkflowInstance(id=f"wf-{i}", name="n", version=1, input=b"null"))
    token = await workflows.acquire("wf-0", "r1", 30.0)
    assert token is not None and await workflows.renew("wf-0", token, 30.0)
    await workflows.record("wf-0", token, HistoryEntry(seq=0, kind="step", name="x"))
    await workflows.update("wf-0", token, "sleeping", wake_at=time.time() + 60, wait_for="Paid")
    await workflows.release("wf-0", token)
    assert [i.id for i in await workflows.waiting("Paid")] == ["wf-0"]
    assert await workflows.request_cancel("wf-1")
    assert set(await workflows.due()) == {"wf-1", "wf-2"}
    assert len(await workflows.list_instances()) == len(await workflows.list_instances("pending")) + 1
    await RedisSnapshotStore(client).save(Snapshot.of("s-1", 1, "T", {}))
    await RedisCheckpointStore(client).claim("proj", 1)

    p = client.prefix
    keys: list[str] = []
    for node in client.primaries():
        cursor = b"0"
        while True:
            cursor, part = await node.execute("SCAN", cursor, "MATCH", f"*{p}*", "COUNT", 1000)
            keys += [k.decode() for k in part]
            if cursor == b"0":
                break
    slots: dict[str, set[int]] = {}
    for key in keys:
        single = key.replace("{", "").replace("}", "")
        rest = single[len(p) + 1 :]
        assert single.startswith(f"{p}:") and (
            rest in FIXED or any(rest.startswith(f + ":") for f in FAMILIES)
        )
        family = next(
            (f for f in ("es", "ob", "dlq", "sc", "wf") if rest.startswith((f + ":", f + "-")) or rest == f),
            None,
        )
        if family is not None:
            assert key.startswith(f"{{{p}:{family}}}"), key
            slots.setdefault(family, set()).add(key_slot(key))
        elif rest.startswith(("lock:", "fence:")):
            lock_key = rest.split(":", 1)[1]
            assert key.endswith(f":{{{lock_key}}}"), key
            slots.setdefault(f"lock {lock_key}", set()).add(key_slot(key))
        else:
            assert key == single  # single-key families keep the single-server key
    assert {"es", "ob", "dlq", "sc", "wf"} <= set(slots)
    assert {f"{p}:snap:s-1", f"{p}:ckpt:proj", f"{p}:wf-wait:Paid", f"{p}:sc-due"} <= {
        k.replace("{", "").replace("}", "") for k in keys
    }
    assert all(len(s) == 1 for s in slots.values()), slots


# -- WAIT ------------------------------------------------------------------------------------------
async def test_wait_replicas_returns_after_the_replica_acknowledged(
    redis_cluster: RedisCluster, unique_name: str
) -> None:
    redis_cluster_url = redis_cluster.url  # healed: every primary has its replica
    client = RedisClient.from_url(f"{redis_cluster_url}?wait_replicas=1&wait_timeout=2", prefix=unique_name)
    async with client:
        assert isinstance(client, RedisClusterClient)
        store = RedisEventStore(client, registry=contract_registry())
        assert await store.append("s", [ContractOrderPlaced("o", 1)]) == 0
        assert (
            await client.execute_many([("SET", f"{unique_name}:a{i}", i) for i in range(10)]) == [b"OK"] * 10
        )
    too_many = RedisClient.from_url(
        f"{redis_cluster_url}?wait_replicas=2&wait_timeout=0.05", prefix=unique_name
    )
    async with too_many:  # one replica per primary: two never acknowledge
        with pytest.raises(BackendError, match="only 1 of 2 replicas acknowledged") as info:
            await too_many.execute("SET", f"{unique_name}:x", b"1")
        assert "applied on the primary" in str(info.value)
        assert await too_many.execute("GET", f"{unique_name}:x") == b"1"  # reads do not wait


# -- failover ----------------------------------------------------------------------------------------
@pytest.mark.chaos
@pytest.mark.parametrize("durable", [False, True], ids=["async", "wait_replicas=1"])
async def test_a_primary_killed_under_load_is_followed(
    redis_cluster: RedisCluster, unique_name: str, chaos: Chaos, durable: bool
) -> None:
    """SIGKILL the primary of the event store's slot while tasks append, publish and take a lock on
    it; the client follows the promoted replica, the stream stays contiguous and the global order has
    no duplicate. Replication is asynchronous: without ``WAIT`` an acknowledged write can be lost
    (counted, not asserted); with ``wait_replicas=1`` nothing acknowledged is lost and fencing tokens
    only grow -- but a slot whose primary has no replica left refuses writes, so the killed node is
    restarted (it rejoins as a replica) and the outage lasts until then."""
    query = "?wait_replicas=1&wait_timeout=2" if durable else ""
    client = RedisClient.from_url(
        redis_cluster.url + query, prefix=unique_name, timeout=2.0, connect_timeout=1.0
    )
    assert isinstance(client, RedisClusterClient)
    store = RedisEventStore(client, registry=contract_registry())
    lock = RedisLock(client)
    transport = RedisTransport(client, registry=contract_registry())
    await client.refresh()
    victim_node = client._slots[key_slot(client.layout.fixed("es:log"))]
    assert victim_node is not None
    victim = victim_node.settings.port
    # a lock key and an event destination whose slots live on the victim too
    lock_key = next(k for k in (f"k{i}" for i in range(10_000)) if client._slots[key_slot(k)] is victim_node)
    dest = next(
        d
        for d in (f"d{i}" for i in range(10_000))
        if client._slots[key_slot(transport.evt_key(d))] is victim_node
    )
    received: list[str] = []

    async def on_event(event: ContractOrderPlaced, meta: Metadata) -> None:
        received.append(event.order_id)

    await transport.subscribe(ContractOrderPlaced, on_event, group="g", destination=dest)
    n = chaos.size(short=150, full=2_000)
    acked: list[int] = []
    published: list[str] = []
    tokens: list[int] = []
    failures = 0
    stop = asyncio.Event()
    killed = asyncio.Event()
    first_ok_after_kill: list[float] = []
    failed_after_kill = 0

    async def load(op: str) -> None:
        nonlocal failures, failed_after_kill
        i = 0
        while not stop.is_set():
            try:
                if op == "append":
                    acked.append(await store.append("s", [ContractOrderPlaced("o", i)]))
                elif op == "publish":
                    await transport.publish(ContractOrderPlaced(f"p{i}", i), destination=dest)
                    published.append(f"p{i}")
                else:
                    lease = await lock.acquire(lock_key, ttl=2)
                    tokens.append(lease.fencing_token)
                    await lease.release()
            except (BackendError, LockNotAcquiredError, LockNotOwnedError):
                failures += 1
                failed_after_kill += op == "append" and killed.is_set()
                await asyncio.sleep(0.02)  # back off while the cluster elects a new primary
                continue
            # the first append the new primary acknowledged: one that had failed since the kill first
            # (an append in flight at the kill may still come back acknowledged by the old primary)
            if op == "append" and failed_after_kill and not first_ok_after_kill:
                first_ok_after_kill.append(time.monotonic())
            i += 1
            if op == "append" and len(acked) >= n and first_ok_after_kill:
                stop.set()

    tasks = [asyncio.create_task(load(op)) for op in ("append", "publish", "lock")]
    try:
        await eventually(lambda: _at_least(acked, n // 3), what=f"{n // 3} appends before the kill")
        await asyncio.to_thread(redis_cluster.kill, victim)
        kill_at = time.monotonic()
        killed.set()
        failover_s = await asyncio.to_thread(redis_cluster.wait_for_failover, victim)
        if durable:  # the promoted primary has no replica: WAIT 1 fails until the old node is back
            await asyncio.to_thread(redis_cluster.restart, victim)
        async with asyncio.timeout(60):
            await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    outage_s = first_ok_after_kill[0] - kill_at
    stream = await store.read("s")
    versions = [e.version for e in stream]
    assert versions == list(range(len(stream)))  # contiguous
    positions = [e.position for e in await store.read_all()]
    assert positions == sorted(set(positions))  # the global order: increasing, no duplicate
    lost = len(set(acked) - set(versions))
    twice = len(tokens) - len(set(tokens))
    if durable:
        assert lost == 0  # nothing acknowledged was lost
        assert tokens == sorted(set(tokens))  # fencing tokens never repeat across the failover
        await eventually(lambda: _covers(received, published), what="every acknowledged publish delivered")
    chaos.record(
        f"Redis Cluster primary killed under appends, publishes, a lock ({'WAIT 1' if durable else 'async'})",
        messages=len(acked) + len(published),
        kills=1,
        lost=lost,
        twice=twice,
        recovery_s=round(outage_s, 2),
    )
    print(
        f"failover {failover_s:.2f} s, append outage {outage_s:.2f} s, {failures} failed calls, {lost} lost"
    )
    await transport.aclose()
    await client.aclose()
    await asyncio.to_thread(redis_cluster.heal)


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


async def _covers(received: list[str], published: list[str]) -> bool:
    return set(published) <= set(received)


@pytest.mark.chaos
async def test_at_most_once_subscribers_use_sharded_pubsub_and_follow_a_failover(
    redis_cluster: RedisCluster, unique_name: str
) -> None:
    """Pub/sub on a cluster is sharded (``SSUBSCRIBE`` on the channel's primary); when that primary
    dies the subscriber connection moves to the promoted replica by itself (messages published during
    the outage are lost: at-most-once)."""
    client = RedisClient.from_url(redis_cluster.url, prefix=unique_name, timeout=2.0, connect_timeout=1.0)
    assert isinstance(client, RedisClusterClient)
    transport = RedisTransport(client, registry=contract_registry())
    got: list[str] = []

    async def on_event(event: ContractOrderPlaced, meta: Metadata) -> None:
        got.append(event.order_id)

    channel = transport.evt_key("d")
    await transport.subscribe(ContractOrderPlaced, on_event, destination="d", qos=QoS.AT_MOST_ONCE)
    node = await client.node_for(channel)
    assert (await node.execute("PUBSUB", "SHARDNUMSUB", channel))[1] == 1
    assert (await node.execute("PUBSUB", "NUMSUB", channel))[1] == 0  # not a broadcast subscription
    await transport.publish(ContractOrderPlaced("before", 1), destination="d")
    await eventually(lambda: _has(got, "before"), what="a message before the failover")
    victim = node.settings.port
    await asyncio.to_thread(redis_cluster.kill, victim)
    await asyncio.to_thread(redis_cluster.wait_for_failover, victim)

    async def delivered_after() -> bool:
        try:
            await transport.publish(ContractOrderPlaced("after", 2), destination="d")
        except BackendError:
            return False  # the client has not re-read the slot map yet
        return "after" in got

    await eventually(delivered_after, timeout=30, what="a message after the failover")
    assert (await client.node_for(channel)).settings.port != victim
    await transport.aclose()
    await client.aclose()
    await asyncio.to_thread(redis_cluster.heal)


async def _has(items: list[str], item: str) -> bool:
    return item in items


def test_wait_settings_refuse_bad_values() -> None:
    from catga.redis._replicas import WaitSettings, is_write

    with pytest.raises(ConfigurationError, match="wait_replicas must be an int >= 0"):
        WaitSettings(-1)
    with pytest.raises(ConfigurationError, match="wait_timeout must be > 0"):
        WaitSettings(1, 0)
    with pytest.raises(ConfigurationError, match="wait_replicas / wait_timeout"):
        WaitSettings.from_query({"wait_timeout": "soon"})
    assert WaitSettings.from_query({"wait_replicas": "2", "wait_timeout": "0.25"}).command() == (
        "WAIT",
        2,
        250,
    )
    assert is_write(("EVALSHA", "x", 0)) and is_write((b"xadd", "k")) and not is_write(("GET", "k"))
