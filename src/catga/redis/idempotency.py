"""Idempotency / inbox records on Redis, one key per message id with server-side expiry.

``P:idem:<key>`` holds ``b"c"`` while claimed (expiring after ``lock_ttl``) or ``b"d" + result`` once
completed (expiring after ``ttl``). ``claim`` is one Lua script (read and claim-if-free in one atomic
step, so of N concurrent claims exactly one wins); ``complete`` is one ``SET ... PX``; ``release`` is a
script that deletes the key only while it is an unfinished claim.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from catga.errors import ConfigurationError
from catga.protocols import Claim, ClaimStatus, validate_identifier
from catga.redis.connection import DEFAULT_URL, RedisClient, Script

__all__ = ("RedisIdempotencyStore", "RedisInboxStore")

_CLAIM = Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'c', 'PX', ARGV[1])
  return 0
end
if string.byte(v, 1) == 100 then return {string.sub(v, 2)} end
return 1
""",
    "idempotency-claim",
)
_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == 'c' then return redis.call('DEL', KEYS[1]) end
return 0
""",
    "idempotency-release",
)

_CLAIMED = Claim(ClaimStatus.CLAIMED)
_IN_PROGRESS = Claim(ClaimStatus.IN_PROGRESS)
_KIND = "idempotency key"


def _check_key(key: str) -> None:
    # Message ids are decimal strings: accept them without the regex.
    if not (type(key) is str and key.isdigit() and key.isascii() and len(key) <= 200):
        validate_identifier(key, _KIND)


def _ms(seconds: float, what: str) -> int:
    if not seconds > 0:
        raise ConfigurationError(f"idempotency {what} must be > 0 seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


class RedisIdempotencyStore:
    """Idempotency records in Redis (see :class:`~catga.protocols.IdempotencyStore`); TTL-based expiry.

    Args:
        client: the :class:`~catga.redis.RedisClient` to use; keys live under its prefix.
        owns_client: close ``client`` in :meth:`aclose` (set by :meth:`connect`).
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._prefix = f"{client.prefix}:idem:"

    @classmethod
    def connect(cls, url: str = DEFAULT_URL, *, prefix: str = "catga", timeout: float | None = 5.0) -> Self:
        """A store with its own client for ``url`` (closed by :meth:`aclose`)."""
        return cls(RedisClient.from_url(url, prefix=prefix, timeout=timeout), owns_client=True)

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        """Claim ``key`` for ``lock_ttl`` seconds if free; else report IN_PROGRESS or COMPLETED (+ result).

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``lock_ttl`` is not positive.
        """
        _check_key(key)
        reply = await self._client.run_script(_CLAIM, (self._prefix + key,), (_ms(lock_ttl, "lock_ttl"),))
        if reply == 0:
            return _CLAIMED
        if reply == 1:
            return _IN_PROGRESS
        return Claim(ClaimStatus.COMPLETED, reply[0])

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        """Store ``result`` for ``key``; claims return it (COMPLETED) for ``ttl`` seconds.

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``ttl`` is not positive.
        """
        _check_key(key)
        await self._client.execute("SET", self._prefix + key, b"d" + bytes(result), "PX", _ms(ttl, "ttl"))

    async def release(self, key: str) -> None:
        """Drop an unfinished claim of ``key`` (a completed record is kept).

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        _check_key(key)
        await self._client.run_script(_RELEASE, (self._prefix + key,))

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
        return f"{type(self).__name__}(prefix={self._client.prefix!r})"


RedisInboxStore = RedisIdempotencyStore
"""The inbox is the same store: consumers claim the message id, complete or release it."""
