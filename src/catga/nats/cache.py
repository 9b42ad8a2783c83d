"""A cache on a JetStream KV-layout bucket.

Each key holds the raw value bytes (readable with ``nats kv get``); a value with a TTL carries a
``Catga-Expires`` header (unix seconds, checked on read, so sub-second TTLs work) and a per-message
``Nats-TTL`` (whole seconds, rounded up, +1) so the server drops it. Overwriting without a TTL removes
the expiry. ``get_or_set`` calls the factory once per key at a time within one cache object.
Needs nats-server 2.11+ (per-message TTL).
"""

from __future__ import annotations

import asyncio
import time
from typing import Unpack

from nats.aio.client import Client

from catga._cache import SingleFlight
from catga.nats._kv import KvEntry, KvOptions, KvStore
from catga.nats.connection import NatsConnection

__all__ = ("NatsCache",)

_EXPIRES = "Catga-Expires"


def _live(entry: KvEntry | None, now: float) -> bool:
    if entry is None:
        return False
    expires = entry.headers.get(_EXPIRES)
    return expires is None or float(expires) > now


class NatsCache(SingleFlight, KvStore):
    """:class:`~catga.protocols.Cache` on a NATS KV-layout bucket (default ``catga_cache``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`; a cache rarely needs ``storage="file"``.
    """

    default_bucket = "catga_cache"
    _kind = "cache key"

    def __init__(self, source: NatsConnection | Client, **options: Unpack[KvOptions]) -> None:
        super().__init__(source, **options)
        self._inflight: dict[str, asyncio.Future[bytes]] = {}

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when missing or expired.

        Raises:
            InvalidIdentifierError: ``key`` is invalid.
        """
        entry = await self._bucket.get(key)
        return entry.value if entry is not None and _live(entry, time.time()) else None

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (None: never).

        Raises:
            InvalidIdentifierError: ``key`` is invalid.
        """
        headers = b""
        if ttl is not None:
            headers = b"%s: %r\r\n" % (_EXPIRES.encode(), time.time() + ttl)
        await self._bucket.write(
            key, bytes(value), last=None, ttl=None if ttl is None else ttl + 1, headers=headers
        )

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it held a live value.

        Raises:
            InvalidIdentifierError: ``key`` is invalid.
        """
        bucket = self._bucket
        while True:
            entry = await bucket.get(key)
            if entry is None:
                return False
            live = _live(entry, time.time())
            if await bucket.delete(entry.revision):
                return live
