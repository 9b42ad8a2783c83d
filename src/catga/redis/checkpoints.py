"""Projection checkpoints on Redis: one hash ``P:ckpt:<name>`` per projection.

Fields: ``position`` and ``fencing`` (absent until a fenced write). A fenced ``save`` and ``claim`` are
Lua scripts, so the fencing check and the write are one atomic step. Fencing tokens are compared as
Lua numbers: exact up to 2**53.
"""

from __future__ import annotations

from typing import Any

from catga.errors import StaleFencingTokenError
from catga.eventsourcing.checkpoints import check_position
from catga.protocols import validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisCheckpointStore",)

_KIND = "projection name"

_SAVE = Script(
    """
if ARGV[2] ~= '' then
  local f = redis.call('HGET', KEYS[1], 'fencing')
  if f and tonumber(f) > tonumber(ARGV[2]) then return {0, f} end
  redis.call('HSET', KEYS[1], 'position', ARGV[1], 'fencing', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'position', ARGV[1])
end
return {1}
""",
    "checkpoint-save",
)
_CLAIM = Script(
    """
local f = redis.call('HGET', KEYS[1], 'fencing')
if f and tonumber(f) > tonumber(ARGV[1]) then return {0, f} end
redis.call('HSET', KEYS[1], 'fencing', ARGV[1])
local p = redis.call('HGET', KEYS[1], 'position')
if not p then
  p = '0'
  redis.call('HSET', KEYS[1], 'position', p)
end
return {1, p}
""",
    "checkpoint-claim",
)


class RedisCheckpointStore(RedisStoreBase):
    """:class:`~catga.eventsourcing.CheckpointStore` on Redis (keys ``P:ckpt:<name>``).

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        self._prefix = client.layout.per_id("ckpt")[0]

    async def get(self, name: str) -> int:
        """The last saved position of ``name``, 0 when none.

        Raises:
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        value = await self._client.execute(
            "HGET", self._prefix + validate_identifier(name, _KIND), "position"
        )
        return 0 if value is None else int(value)

    async def save(self, name: str, position: int, *, fencing_token: int | None = None) -> None:
        """Record ``position`` for ``name``; with ``fencing_token``, only if no higher token is stored.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored; nothing was written.
            InvalidIdentifierError: ``name`` is invalid; ConfigurationError: bad ``position``.
        """
        key = self._prefix + validate_identifier(name, _KIND)
        check_position(position)
        token = "" if fencing_token is None else int(fencing_token)
        reply: Any = await self._client.run_script(_SAVE, (key,), (position, token))
        if reply[0] != 1:
            raise StaleFencingTokenError(name, int(fencing_token or 0), int(reply[1]))

    async def claim(self, name: str, fencing_token: int) -> int:
        """Raise the stored token of ``name`` to ``fencing_token`` and return its position, atomically.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored.
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        key = self._prefix + validate_identifier(name, _KIND)
        reply: Any = await self._client.run_script(_CLAIM, (key,), (int(fencing_token),))
        if reply[0] != 1:
            raise StaleFencingTokenError(name, int(fencing_token), int(reply[1]))
        return int(reply[1])
