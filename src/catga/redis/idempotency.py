"""Idempotency / inbox records on Redis, one key per message id with server-side expiry.

``P:idem:<key>`` holds ``b"c"`` while claimed (expiring after ``lock_ttl``) or ``b"d" + result`` once
completed (expiring after ``ttl``). ``claim`` is one Lua script (read and claim-if-free in one atomic
step, so of N concurrent claims exactly one wins); ``complete`` is one ``SET ... PX``; ``release`` is a
script that deletes the key only while it is an unfinished claim.
"""

from __future__ import annotations

from catga.protocols import Claim, ClaimStatus, validate_identifier
from catga.redis._base import RedisStoreBase, positive_ms
from catga.redis.connection import RedisClient, Script

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


class RedisIdempotencyStore(RedisStoreBase):
    """Idempotency records in Redis (see :class:`~catga.protocols.IdempotencyStore`); TTL-based expiry.

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        self._prefix = f"{client.prefix}:idem:"

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        """Claim ``key`` for ``lock_ttl`` seconds if free; else report IN_PROGRESS or COMPLETED (+ result).

        Raises:
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``lock_ttl`` is not positive.
        """
        _check_key(key)
        reply = await self._client.run_script(
            _CLAIM, (self._prefix + key,), (positive_ms(lock_ttl, "idempotency lock_ttl"),)
        )
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
        await self._client.execute(
            "SET", self._prefix + key, b"d" + bytes(result), "PX", positive_ms(ttl, "idempotency ttl")
        )

    async def release(self, key: str) -> None:
        """Drop an unfinished claim of ``key`` (a completed record is kept).

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        _check_key(key)
        await self._client.run_script(_RELEASE, (self._prefix + key,))


RedisInboxStore = RedisIdempotencyStore
"""The inbox is the same store: consumers claim the message id, complete or release it."""
