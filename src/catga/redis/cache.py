"""A bytes cache on Redis: ``GET``, ``SET ... PX``, ``DEL`` on ``P:cache:<key>``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from catga.errors import ConfigurationError
from catga.protocols import validate_identifier
from catga.redis.connection import DEFAULT_URL, RedisClient

__all__ = ("RedisCache",)

_KIND = "cache key"


def _ttl_args(ttl: float | None) -> tuple[Any, ...]:
    if ttl is None:
        return ()
    if not ttl > 0:
        raise ConfigurationError(f"cache ttl must be > 0 seconds or None (no expiry), got {ttl!r}")
    return ("PX", max(1, round(ttl * 1000)))


class RedisCache:
    """Key → bytes with optional TTL in Redis (see :class:`~catga.protocols.Cache`); expiry is Redis's.

    Args:
        client: the :class:`~catga.redis.RedisClient` to use; keys live under its prefix.
        owns_client: close ``client`` in :meth:`aclose` (set by :meth:`connect`).
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._prefix = f"{client.prefix}:cache:"

    @classmethod
    def connect(cls, url: str = DEFAULT_URL, *, prefix: str = "catga", timeout: float | None = 5.0) -> Self:
        """A cache with its own client for ``url`` (closed by :meth:`aclose`)."""
        return cls(RedisClient.from_url(url, prefix=prefix, timeout=timeout), owns_client=True)

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

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[bytes]], ttl: float | None = None
    ) -> bytes:
        """Return the cached value, or await ``factory()`` on a miss, store and return its value.

        Concurrent misses may each call ``factory`` (the last ``SET`` wins); no lock is taken.
        """
        value = await self.get(key)
        if value is not None:
            return value
        _ttl_args(ttl)
        value = await factory()
        await self.set(key, value, ttl)
        return value

    async def aclose(self) -> None:
        """Close an owned client. Idempotent."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self._client.prefix!r})"
