"""Redis backend: lock acquire+release and event-store append, against redis-py in the same run.

Cases:

* ``lock_acquire_release`` — each worker locks its own key (``k<worker>``), then releases it.
  catga: :class:`~catga.redis.RedisLock` (Lua acquire returning a fencing token, Lua release; two
  round trips, pipelined with the other workers' commands on one connection). redis-py:
  ``redis.asyncio.Redis(max_connections=64).lock(key, timeout=10)``, ``acquire(blocking=False)`` then
  ``release()`` (also two Lua round trips, one pooled connection per worker, no fencing token).
* ``eventstore_append`` — each worker appends one event (expected version ANY) to its own stream.
  catga: :class:`~catga.redis.RedisEventStore`. redis-py: the same append Lua script and envelope run
  with redis-py's ``Script`` (EVALSHA) — the raw client doing the same server-side work, so the ratio
  shows the client's cost.

The ``cluster_*`` cases run the same operations on a Redis Cluster (3 primaries + 3 replicas on
loopback, started by the harness) in the same run: catga's :class:`~catga.redis.RedisClusterClient`
against redis-py's ``redis.asyncio.cluster.RedisCluster`` (its ``Lock``; the append script on the
hash-tagged keys of :mod:`catga.redis._keys`); ``catga-wait1`` is catga with ``wait_replicas=1``
(every write waits for a replica's acknowledgement), whose ratio is the cost of that durability.

Every case runs on a fresh key prefix; its keys are deleted afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Event, message_name

__all__ = ("SUITE", "BenchEvent", "cases")

SUITE = "redis"


@message_name("bench.RedisEvent")
class BenchEvent(msgspec.Struct, Event, frozen=True):
    """The appended event."""

    order_id: str
    total: int


async def _url(env: BenchEnv, cluster: bool, wait: bool = False) -> str:
    if not cluster:
        return await env.redis_url()
    url = await env.redis_cluster_url()
    return url + "?wait_replicas=1&wait_timeout=2" if wait else url


async def _drop_prefix(url: str, prefix: str) -> None:
    from catga.redis import RedisClient, RedisClusterClient

    async with RedisClient.from_url(url, timeout=30.0) as client:
        nodes: list[RedisClient] = [client]
        if isinstance(client, RedisClusterClient):
            await client.refresh()
            nodes = client.primaries()
        for node in nodes:  # keys of a cluster's tagged families start with "{prefix:"
            cursor = b"0"
            while True:
                cursor, keys = await node.execute("SCAN", cursor, "MATCH", f"*{prefix}:*", "COUNT", 1000)
                for key in keys:
                    await node.execute("UNLINK", key)
                if cursor == b"0":
                    break


def _redis_py(url: str) -> Any:
    """redis-py's asyncio client for ``url``: ``RedisCluster`` for a ``redis+cluster://`` URL."""
    import redis.asyncio as redis_asyncio
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    if url.startswith("redis+cluster://"):
        hosts = url.removeprefix("redis+cluster://").split("/", 1)[0].split(",")
        nodes = [ClusterNode(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts]
        return RedisCluster(startup_nodes=nodes, max_connections=64)
    return redis_asyncio.Redis.from_url(url, max_connections=64)


@asynccontextmanager
async def _catga_lock(env: BenchEnv, cluster: bool = False, wait: bool = False) -> AsyncIterator[Op]:
    from catga.redis import RedisClient, RedisLock

    url = await _url(env, cluster, wait)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    client = RedisClient.from_url(url, prefix=prefix)
    lock = RedisLock(client)
    keys = [f"k{i}" for i in range(env.max_concurrency)]
    first = await lock.acquire(keys[0], ttl=10)
    await first.release()
    second = await lock.acquire(keys[0], ttl=10)
    await second.release()
    if second.fencing_token <= first.fencing_token:
        raise BenchError("catga lock self-check: fencing token did not increase")

    async def op(worker: int) -> None:
        lease = await lock.acquire(keys[worker], ttl=10)
        await lease.release()

    try:
        yield op
    finally:
        await lock.aclose()
        await client.aclose()
        await _drop_prefix(url, prefix)


@asynccontextmanager
async def _redis_py_lock(env: BenchEnv, cluster: bool = False) -> AsyncIterator[Op]:
    url = await _url(env, cluster)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    r = _redis_py(url)
    keys = [f"{prefix}:k{i}" for i in range(env.max_concurrency)]
    probe = r.lock(keys[0], timeout=10)
    if not await probe.acquire(blocking=False):
        raise BenchError("redis-py lock self-check: could not acquire a free key")
    await probe.release()

    async def op(worker: int) -> None:
        lock = r.lock(keys[worker], timeout=10)
        if not await lock.acquire(blocking=False):
            raise BenchError(f"redis-py lock {keys[worker]} was not free")
        await lock.release()

    try:
        yield op
    finally:
        await r.aclose()
        await _drop_prefix(url, prefix)


@asynccontextmanager
async def _catga_append(env: BenchEnv, cluster: bool = False, wait: bool = False) -> AsyncIterator[Op]:
    from catga.redis import RedisClient, RedisEventStore
    from catga.serialization import TypeRegistry

    url = await _url(env, cluster, wait)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    client = RedisClient.from_url(url, prefix=prefix)
    store = RedisEventStore(client, registry=TypeRegistry("json", [BenchEvent]))
    streams = [f"s{i}" for i in range(env.max_concurrency)]
    event = BenchEvent("o-1", 42)
    if await store.append("check", [event]) != 0 or (await store.read("check"))[0].data != event:
        raise BenchError("catga event store self-check failed")

    async def op(worker: int) -> None:
        await store.append(streams[worker], (event,))

    try:
        yield op
    finally:
        await store.aclose()
        await client.aclose()
        await _drop_prefix(url, prefix)


@asynccontextmanager
async def _redis_py_append(env: BenchEnv, cluster: bool = False) -> AsyncIterator[Op]:
    from catga.redis._keys import KeyLayout
    from catga.redis.event_store import _APPEND
    from catga.serialization import TypeRegistry

    url = await _url(env, cluster)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    r = _redis_py(url)
    script: Any = r.register_script(_APPEND.source)
    registry = TypeRegistry("json", [BenchEvent])
    encode_env = msgspec.msgpack.Encoder().encode
    event = BenchEvent("o-1", 42)
    layout = KeyLayout(prefix, cluster=cluster)
    pos_key, log_key, head = layout.fixed("es:pos"), layout.fixed("es:log"), layout.per_id("es:s")[0]
    keys = [(f"{head}s{i}", pos_key, log_key) for i in range(env.max_concurrency)]

    async def op(worker: int) -> None:
        name, body = registry.encode(event)
        envelope = encode_env((name, time.time(), {}, body))
        ok, _version = await script(keys=keys[worker], args=[-2, f"s{worker}", envelope])
        if not ok:
            raise BenchError("redis-py append was rejected")

    try:
        yield op
    finally:
        await r.aclose()
        await _drop_prefix(url, prefix)


def cases(env: BenchEnv) -> list[BenchCase]:
    """The Redis cases; each needs a Redis server (``env.redis_url()``)."""
    lock_note = "distinct key per worker; acquire (ttl 10 s) + release"
    append_note = "1 event, expected version ANY, one stream per worker"
    return [
        BenchCase("lock_acquire_release", "catga", _catga_lock, note=lock_note + "; fencing token"),
        BenchCase("lock_acquire_release", "redis-py", _redis_py_lock, note=lock_note + "; asyncio Lock"),
        BenchCase("eventstore_append", "catga", _catga_append, note=append_note),
        BenchCase(
            "eventstore_append",
            "redis-py",
            _redis_py_append,
            note=append_note + "; same Lua script via redis-py",
        ),
        BenchCase(
            "cluster_lock_acquire_release",
            "catga",
            partial(_catga_lock, cluster=True),
            note=lock_note + "; fencing token; 3+3 cluster",
        ),
        BenchCase(
            "cluster_lock_acquire_release",
            "catga-wait1",
            partial(_catga_lock, cluster=True, wait=True),
            note=lock_note + "; wait_replicas=1 (WAIT after each write): the cost of durability",
        ),
        BenchCase(
            "cluster_lock_acquire_release",
            "redis-py",
            partial(_redis_py_lock, cluster=True),
            note=lock_note + "; RedisCluster Lock; 3+3 cluster",
        ),
        BenchCase(
            "cluster_eventstore_append",
            "catga",
            partial(_catga_append, cluster=True),
            note=append_note + "; 3+3 cluster (the event store is one slot)",
        ),
        BenchCase(
            "cluster_eventstore_append",
            "catga-wait1",
            partial(_catga_append, cluster=True, wait=True),
            note=append_note + "; wait_replicas=1 (WAIT after each append): the cost of durability",
        ),
        BenchCase(
            "cluster_eventstore_append",
            "redis-py",
            partial(_redis_py_append, cluster=True),
            note=append_note + "; same Lua script via RedisCluster",
        ),
    ]
