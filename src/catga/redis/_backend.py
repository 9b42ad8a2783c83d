"""What a ``redis://`` / ``rediss://`` URL builds (registered in :mod:`catga.backends`).

Every part of one app shares one :class:`~catga.redis.RedisClient` per URL and ``prefix``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from catga._urls import redact_url
from catga.redis import (
    RedisClient,
    RedisDeadLetterQueue,
    RedisEventStore,
    RedisIdempotencyStore,
    RedisLock,
    RedisOutboxStore,
    RedisScheduleStore,
    RedisTransport,
)
from catga.redis._durability import log_durability

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

ROLES = frozenset({"transport", "store", "idempotency_store", "outbox", "scheduler"})
LOCK_RANK = 0  # a lock on the shared client: preferred over a PostgreSQL pool


async def connection(b: Backends, spec: BackendUrl) -> RedisClient:
    """The app's client for ``spec`` (connected and checked on first use, then shared)."""

    async def connect() -> RedisClient:
        client = RedisClient.from_url(
            spec.address, prefix=spec.prefix, timeout=b.timeout, connect_timeout=b.timeout
        )
        try:
            await client.ping()  # connect now: a wrong URL fails at start, not at the first message
            await log_durability(client, logging.getLogger("catga.redis"))  # WARNING if it can lose data
        except BaseException:
            await client.aclose()
            raise
        return client

    key = ("redis", f"{spec.address}#{spec.prefix}")
    client: RedisClient = await b.shared(key, f"Redis client {redact_url(spec.address)}", connect)
    return client


async def transport(b: Backends, spec: BackendUrl) -> RedisTransport:
    """The transport, with its dead-letter queue on the same server."""
    client = await connection(b, spec)
    dead_letters = b.track(f"dead letters {spec}", RedisDeadLetterQueue(client))
    return RedisTransport(
        client, registry=b.registry, dead_letters=dead_letters, max_payload=spec.max_payload or b.max_payload
    )


async def store(b: Backends, spec: BackendUrl) -> RedisEventStore:
    """The event store."""
    return RedisEventStore(
        await connection(b, spec), registry=b.registry, max_payload=spec.max_payload or b.max_payload
    )


async def idempotency_store(b: Backends, spec: BackendUrl) -> RedisIdempotencyStore:
    """The idempotency store."""
    return RedisIdempotencyStore(await connection(b, spec))


async def outbox(b: Backends, spec: BackendUrl) -> RedisOutboxStore:
    """The outbox."""
    return RedisOutboxStore(await connection(b, spec))


async def scheduler(b: Backends, spec: BackendUrl) -> RedisScheduleStore:
    """The schedule store (keys ``P:sc:*``)."""
    return RedisScheduleStore(await connection(b, spec))


async def worker_id_lock(b: Backends, spec: BackendUrl, opened: Any) -> tuple[str, RedisLock]:
    """The worker id lease lock on the shared client."""
    return f"Redis {redact_url(spec.address)}", RedisLock(await connection(b, spec))
