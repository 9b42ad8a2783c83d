"""A bytes cache on Redis: ``GET``, ``SET ... PX``, ``DEL`` on ``P:cache:<key>``."""

from __future__ import annotations

import asyncio
from typing import Any

from catga._cache import SingleFlight
from catga.errors import ConfigurationError
from catga.protocols import validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient

__all__ = ("RedisCache",)

_KIND = "cache key"


def _ttl_args(ttl: float | None) -> tuple[Any, ...]:
    if ttl is None:
        return ()
    if not ttl > 0:
        raise ConfigurationError(f"cache ttl must be > 0 seconds or None (no expiry), got {ttl!r}")
    return ("PX", max(1, round(ttl * 1000)))


class RedisCache(SingleFlight, RedisStoreBase):
    """Key → bytes with optional TTL in Redis (see :class:`~catga.protocols.Cache`); expiry is Redis's.

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._prefix = f"{client.prefix}:cache:"

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when missing or expired.

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        validate_identifier(key, _KIND)
        value: bytes | None = await self._client.execute("GET", self._prefix + key)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (overwriting), expiring after ``ttl`` seconds (None: never).

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``ttl`` is not positive, or ``value`` is not bytes-like.
        """
        validate_identifier(key, _KIND)
        if not isinstance(value, bytes):
            if not isinstance(value, bytearray | memoryview):
                raise ConfigurationError(f"cache values are bytes, got {type(value).__name__} for {key!r}")
            value = bytes(value)
        await self._client.execute("SET", self._prefix + key, value, *_ttl_args(ttl))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed (an expired key does not count).

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        validate_identifier(key, _KIND)
        return bool(await self._client.execute("DEL", self._prefix + key))
