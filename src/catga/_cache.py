"""``get_or_set`` with one rule on every cache backend: one factory call per key at a time.

:class:`SingleFlight` is mixed into :class:`~catga.memory.MemoryCache`, ``NatsCache`` and
``RedisCache``: on a miss, concurrent ``get_or_set`` calls for one key **on one cache object** share one
``factory()`` call (the others await its result, or its exception); a failing factory stores nothing.
Calls from other processes are not coordinated (each may call its factory once; the last ``set``
wins): a distributed lock around the factory is the tool for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from catga.errors import ConfigurationError

__all__ = ("SingleFlight", "check_cache_ttl")


def check_cache_ttl(ttl: float | None) -> None:
    """Refuse a ttl that is neither None (no expiry) nor a positive number of seconds."""
    if ttl is not None and not ttl > 0:
        raise ConfigurationError(f"cache ttl must be > 0 seconds or None (no expiry), got {ttl!r}")


class SingleFlight:
    """Mixin: :meth:`get_or_set` on top of the cache's own ``get`` and ``set``."""

    __slots__ = ()

    _inflight: dict[str, asyncio.Future[bytes]]

    if TYPE_CHECKING:  # the cache's own methods

        async def get(self, key: str) -> bytes | None: ...
        async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[bytes]], ttl: float | None = None
    ) -> bytes:
        """The value of ``key``; on a miss, ``await factory()``, store it with ``ttl`` and return it.

        Concurrent calls for one key on this object share one factory call; a failing factory stores
        nothing and its exception reaches every caller waiting on it.

        Raises:
            ConfigurationError: ``ttl`` is not positive (before ``factory`` is called).
            InvalidIdentifierError: ``key`` is invalid.
        """
        value = await self.get(key)
        if value is not None:
            return value
        check_cache_ttl(ttl)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await factory()
            await self.set(key, value, ttl)
            fut.set_result(value)
            return value
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # mark it retrieved: no waiter is required to exist
            raise
        finally:
            del self._inflight[key]
