"""In-memory cache: the reference implementation of :class:`~catga.protocols.Cache`.

Expiry uses the monotonic clock and is checked on read; a sweep of expired entries runs every
``sweep_every`` writes, so memory held by expired keys stays bounded without a background task.

Thread-safety: every method is thread-safe (reads take no lock; writes and expiry deletions take one
``threading.Lock``). ``get_or_set`` is not single-flight: two concurrent misses may both call the
factory (the last write wins), as with a remote cache.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

from catga._cache import SingleFlight
from catga._lifecycle import AsyncCloseable
from catga.errors import ConfigurationError
from catga.protocols import validate_identifier

__all__ = ("MemoryCache",)

_KIND = "cache key"
_NEVER = math.inf


def _check_ttl(ttl: float | None) -> float:
    if ttl is None:
        return _NEVER
    if not ttl > 0:
        raise ConfigurationError(f"cache ttl must be > 0 seconds or None (no expiry), got {ttl!r}")
    return time.monotonic() + ttl


class MemoryCache(SingleFlight, AsyncCloseable):
    """Key → bytes with optional TTL, in process memory.

    Args:
        sweep_every: purge expired entries once every this many writes.
    """

    __slots__ = ("_data", "_inflight", "_lock", "_sweep_every", "_writes")

    def __init__(self, *, sweep_every: int = 1024) -> None:
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        if sweep_every < 1:
            raise ConfigurationError(f"sweep_every must be >= 1, got {sweep_every}")
        self._data: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._sweep_every = sweep_every
        self._writes = 0

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when missing or expired.

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        try:
            item = self._data.get(key)
        except TypeError:
            item = None
        if item is None:
            validate_identifier(key, _KIND)
            return None
        if item[1] <= time.monotonic():
            with self._lock:
                if self._data.get(key) is item:
                    del self._data[key]
            return None
        return item[0]

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
        expires = _check_ttl(ttl)
        with self._lock:
            self._data[key] = (value, expires)
            self._writes += 1
            if self._writes >= self._sweep_every:
                self._writes = 0
                self._sweep()

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed (an expired key does not count)."""
        validate_identifier(key, _KIND)
        with self._lock:
            item = self._data.pop(key, None)
        return item is not None and item[1] > time.monotonic()

    def _sweep(self) -> None:
        now = time.monotonic()
        expired = [k for k, (_, exp) in self._data.items() if exp <= now]
        for k in expired:
            del self._data[k]

    def __len__(self) -> int:
        """Number of entries, including expired ones not yet swept."""
        return len(self._data)

    async def aclose(self) -> None:
        """Nothing to release; idempotent."""
