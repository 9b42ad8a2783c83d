"""What a ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://`` URL builds.

Registered in :mod:`catga.backends`.

Every part of one app shares one :class:`~catga.redis.RedisClient` per URL and ``prefix``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.redis import (
    RedisClient,
    RedisDeadLetterQueue,
    RedisEventStore,
    RedisIdempotencyStore,
    RedisLock,
    RedisOutboxStore,
    RedisTransport,
)
from catga.redis._durability import log_durability
from catga.redis.cluster import parse_cluster_url
from catga.redis.sentinel import parse_sentinel_url

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

ROLES = frozenset({"transport", "store", "idempotency_store", "outbox"})
LOCK_RANK = 0  # a lock on the shared client: preferred over a PostgreSQL pool


def url_options(base: str, options: dict[str, str], role: str, shown: str) -> dict[str, Any]:
    """Check the host(s) of ``base``; the client's options stay in the address.

    A ``redis+cluster://`` URL lists several seeds (``h1:7000,h2:7001``), a ``redis+sentinel://`` URL
    several sentinels and the service name; each is checked.

    Returns:
        ``address``: the URL the client is built from (``base`` plus the remaining options).

    Raises:
        ConfigurationError: a malformed host or port.
    """
    address = base + (f"?{urlencode(options)}" if options else "")
    try:
        scheme = base.partition("://")[0].lower()
        if scheme.endswith("+cluster"):
            parse_cluster_url(address)
        elif scheme.endswith("+sentinel"):
            parse_sentinel_url(address)
        else:
            urlsplit(base).port  # noqa: B018 - raises on a malformed port
    except (ValueError, ConfigurationError) as exc:
        raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
    return {"address": address}


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


async def worker_id_lock(b: Backends, spec: BackendUrl, opened: Any) -> tuple[str, RedisLock]:
    """The worker id lease lock on the shared client."""
    return f"Redis {redact_url(spec.address)}", RedisLock(await connection(b, spec))
