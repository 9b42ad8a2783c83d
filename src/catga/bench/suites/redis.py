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

Every case runs on a fresh key prefix; its keys are deleted afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


async def _drop_prefix(url: str, prefix: str) -> None:
    from catga.redis import RedisClient

    async with RedisClient.from_url(url, timeout=30.0) as client:
        cursor = b"0"
        while True:
            cursor, keys = await client.execute("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", 1000)
            if keys:
                await client.execute("UNLINK", *keys)
            if cursor == b"0":
                return


@asynccontextmanager
async def _catga_lock(env: BenchEnv) -> AsyncIterator[Op]:
    from catga.redis import RedisClient, RedisLock

    url = await env.redis_url()
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
async def _redis_py_lock(env: BenchEnv) -> AsyncIterator[Op]:
    import redis.asyncio as redis_asyncio

    url = await env.redis_url()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    r = redis_asyncio.Redis.from_url(url, max_connections=64)
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
async def _catga_append(env: BenchEnv) -> AsyncIterator[Op]:
    from catga.redis import RedisClient, RedisEventStore
    from catga.serialization import TypeRegistry

    url = await env.redis_url()
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
async def _redis_py_append(env: BenchEnv) -> AsyncIterator[Op]:
    import redis.asyncio as redis_asyncio

    from catga.redis.event_store import _APPEND
    from catga.serialization import TypeRegistry

    url = await env.redis_url()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    r = redis_asyncio.Redis.from_url(url, max_connections=64)
    script: Any = r.register_script(_APPEND.source)
    registry = TypeRegistry("json", [BenchEvent])
    encode_env = msgspec.msgpack.Encoder().encode
    event = BenchEvent("o-1", 42)
    pos_key, log_key = f"{prefix}:es:pos", f"{prefix}:es:log"
    keys = [(f"{prefix}:es:s:s{i}", pos_key, log_key) for i in range(env.max_concurrency)]

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
    ]
