"""What every Redis store shares: its client, ownership, ``connect()``, ``start()``, ``aclose()``."""

from __future__ import annotations

from typing import Self

from catga._lifecycle import AsyncCloseable
from catga.errors import ConfigurationError
from catga.redis.connection import DEFAULT_URL, RedisClient

__all__ = ("RedisStoreBase", "positive_ms")


def positive_ms(seconds: float, what: str) -> int:
    """``seconds`` as whole milliseconds (at least 1), for ``PX`` / ``PEXPIRE``.

    Raises:
        ConfigurationError: ``seconds`` is not > 0 (``what`` names it in the message).
    """
    if not seconds > 0:
        raise ConfigurationError(f"{what} must be > 0 seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


class RedisStoreBase(AsyncCloseable):
    """Base of the Redis stores: holds the :class:`~catga.redis.RedisClient`, closes it when owned.

    Args:
        client: the :class:`~catga.redis.RedisClient` to use; keys live under its prefix.
        owns_client: close ``client`` in :meth:`aclose` (set by :meth:`connect`).
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client

    @classmethod
    def connect(cls, url: str = DEFAULT_URL, *, prefix: str = "catga", timeout: float | None = 5.0) -> Self:
        """A store with its own client for ``url`` (closed by :meth:`aclose`)."""
        return cls(RedisClient.from_url(url, prefix=prefix, timeout=timeout), owns_client=True)

    async def start(self) -> None:
        """Use the store again after :meth:`aclose` (an ``App`` starting again); reopens an owned client."""
        if self._owns_client and self._client.closed:
            await self._client.open()
        self._reopen()

    def _reopen(self) -> None:
        """Subclass hook: undo what :meth:`_close` stopped for good (the store is used again)."""

    async def _close(self) -> None:
        """Subclass hook: stop the store's own work before an owned client is closed."""

    async def aclose(self) -> None:
        """Stop the store's own work (live reads, lock renewals) and close an owned client. Idempotent."""
        await self._close()
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self._client.prefix!r})"
