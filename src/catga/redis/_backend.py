"""What a ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://`` URL builds.

Registered in :mod:`catga.backends`.

Every part of one app shares one :class:`~catga.redis.RedisClient` per URL and ``prefix``, built
with ``opened=False`` and opened at ``App.start()`` (connected and checked at once).
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
    RedisScheduleStore,
    RedisTransport,
    RedisWorkflowStore,
)
from catga.redis._durability import log_durability
from catga.redis.cluster import parse_cluster_url
from catga.redis.sentinel import parse_sentinel_url

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

LOCK_RANK = 0  # a lock on the shared client: preferred over a PostgreSQL pool


async def _open(client: RedisClient) -> None:
    await client.open()  # connect now: a wrong URL fails at start, not at the first message
    try:
        await log_durability(client, logging.getLogger("catga.redis"))  # WARNING if it can lose data
    except BaseException:
        await client.aclose()
        raise


def url_options(base: str, options: dict[str, str], role: str, shown: str) -> dict[str, Any]:
    """Check the host(s) of ``base``; the client's options stay in the address.

    ``redis://`` without a host is refused (it never means localhost by itself); a ``redis+cluster://``
    URL lists several seeds (``h1:7000,h2:7001``), a ``redis+sentinel://`` URL several sentinels and the
    service name; each is checked.

    Returns:
        ``address``: the URL the client is built from (``base`` plus the remaining options).

    Raises:
        ConfigurationError: no host, or a malformed host or port.
    """
    address = base + (f"?{urlencode(options)}" if options else "")
    scheme = base.partition("://")[0].lower()
    try:
        if scheme.endswith("+cluster"):
            parse_cluster_url(address)
        elif scheme.endswith("+sentinel"):
            parse_sentinel_url(address)
        elif not urlsplit(base).hostname:
            raise ConfigurationError(
                f"has no host; write the server's address, e.g. {scheme}://127.0.0.1:6379/0"
            )
        else:
            urlsplit(base).port  # noqa: B018 - raises on a malformed port
    except (ValueError, ConfigurationError) as exc:
        raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
    return {"address": address}


def connection(b: Backends, spec: BackendUrl) -> RedisClient:
    """The app's client for ``spec`` (made on first use, then shared)."""

    def make() -> RedisClient:
        return RedisClient.from_url(
            spec.address, prefix=spec.prefix, timeout=b.timeout, connect_timeout=b.timeout, opened=False
        )

    key = ("redis", f"{spec.address}#{spec.prefix}")
    return b.shared(key, f"Redis client {redact_url(spec.address)}", make, _open)


def transport(b: Backends, spec: BackendUrl) -> RedisTransport:
    """The transport, with its dead-letter queue on the same server."""
    client = connection(b, spec)
    dead_letters = b.track(RedisDeadLetterQueue(client))
    return RedisTransport(
        client, registry=b.registry, dead_letters=dead_letters, max_payload=spec.max_payload or b.max_payload
    )


def store(b: Backends, spec: BackendUrl) -> RedisEventStore:
    """The event store."""
    return RedisEventStore(
        connection(b, spec), registry=b.registry, max_payload=spec.max_payload or b.max_payload
    )


def idempotency_store(b: Backends, spec: BackendUrl) -> RedisIdempotencyStore:
    """The idempotency store."""
    return RedisIdempotencyStore(connection(b, spec))


def outbox(b: Backends, spec: BackendUrl) -> RedisOutboxStore:
    """The outbox."""
    return RedisOutboxStore(connection(b, spec))


def scheduler(b: Backends, spec: BackendUrl) -> RedisScheduleStore:
    """The schedule store (keys ``P:sc:*``)."""
    return RedisScheduleStore(connection(b, spec))


def workflows(b: Backends, spec: BackendUrl) -> RedisWorkflowStore:
    """The workflow store (keys ``P:wf:*``, ``P:wf-*``)."""
    return RedisWorkflowStore(connection(b, spec))


async def worker_id_lock(b: Backends, spec: BackendUrl) -> tuple[str, RedisLock]:
    """The worker id lease lock on the shared client."""
    return f"Redis {redact_url(spec.address)}", RedisLock(connection(b, spec))
