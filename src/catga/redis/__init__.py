"""Redis backend: event store, outbox, idempotency/inbox, dead letters, lock, cache, transport and RPC.

Everything runs on :class:`RedisClient`, an auto-pipelining client (one connection shared by all
concurrent tasks, hiredis parsing) with a key prefix per application. Build a component from an open
client (shared) or from a URL with its ``connect`` classmethod (owned, closed by ``aclose()``)::

    from catga.redis import RedisClient, RedisEventStore, RedisLock

    client = RedisClient.from_url("redis://127.0.0.1:6379/0", prefix="shop")
    store = RedisEventStore(client, registry=registry)
    lock = RedisLock(client)

A ``redis+cluster://host:port,host:port/`` URL gives a :class:`RedisClusterClient` (slot map,
redirects, one connection per node; keys hash-tagged so every script stays in one slot); a
``redis+sentinel://sentinel:26379/mymaster`` URL a :class:`RedisSentinelClient` (asks the sentinels
for the primary at each (re)connection, so it follows a failover).

See ``docs/redis.md`` for URLs, TLS, the key layout and what each Lua script guarantees.
"""

from catga.redis.cache import RedisCache
from catga.redis.checkpoints import RedisCheckpointStore
from catga.redis.cluster import RedisClusterClient
from catga.redis.connection import RedisClient, RedisSettings, Script
from catga.redis.dead_letter import RedisDeadLetterQueue
from catga.redis.event_store import RedisEventStore
from catga.redis.idempotency import RedisIdempotencyStore, RedisInboxStore
from catga.redis.lock import RedisLease, RedisLock
from catga.redis.outbox import RedisOutboxStore
from catga.redis.rpc import RedisRpcClient, RedisRpcServer
from catga.redis.schedules import RedisScheduleStore
from catga.redis.sentinel import RedisSentinelClient
from catga.redis.snapshots import RedisSnapshotStore
from catga.redis.transport import RedisRpcEndpoint, RedisSubscription, RedisTransport
from catga.redis.workflows import RedisWorkflowStore

__all__ = (
    "RedisCache",
    "RedisCheckpointStore",
    "RedisClient",
    "RedisClusterClient",
    "RedisDeadLetterQueue",
    "RedisEventStore",
    "RedisIdempotencyStore",
    "RedisInboxStore",
    "RedisLease",
    "RedisLock",
    "RedisOutboxStore",
    "RedisRpcClient",
    "RedisRpcServer",
    "RedisRpcEndpoint",
    "RedisScheduleStore",
    "RedisSentinelClient",
    "RedisWorkflowStore",
    "RedisSettings",
    "RedisSnapshotStore",
    "RedisSubscription",
    "RedisTransport",
    "Script",
)
