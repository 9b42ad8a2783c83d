"""Outbox on Redis: a hash per message and sorted sets that index it by state.

Keys (``P`` = the client's prefix):

* ``P:ob:<id>`` — hash: ``d`` destination, ``t`` type name, ``b`` body, ``h`` headers (JSON),
  ``c`` created_at, ``a`` attempts, ``n`` next_attempt_at, ``e`` last error, ``s`` status (0/1/2).
* ``P:ob-ready`` — PENDING messages that may be fetched now, scored by ``created_at`` (oldest first).
* ``P:ob-wait`` — PENDING messages not fetchable yet, scored by when they become fetchable: their
  ``next_attempt_at`` (a scheduled retry) or the end of their lease.
* ``P:ob-pub`` / ``P:ob-dead`` — PUBLISHED / DEAD messages scored by ``created_at``.

Every operation is one Lua script, atomic on the server. ``fetch_pending`` first moves the ``wait``
entries that became due into ``ready``, then takes the oldest ``limit`` from ``ready`` and moves them to
``wait`` scored ``now + lease`` — so two relays never get the same message while its lease runs, and a
relay that dies leaves its messages to the next one after the lease. Times are the clients' unix time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import OutboxMessage, OutboxStatus
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisOutboxStore",)

_ADD = Script(
    """
local pfx, now = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 10 do
  local id = ARGV[i]
  local key = pfx .. id
  if redis.call('EXISTS', key) == 0 then
    local c, n, s = ARGV[i + 5], ARGV[i + 7], ARGV[i + 9]
    redis.call('HSET', key, 'd', ARGV[i + 1], 't', ARGV[i + 2], 'b', ARGV[i + 3], 'h', ARGV[i + 4],
      'c', c, 'a', ARGV[i + 6], 'n', n, 's', s)
    if ARGV[i + 8] ~= '' then redis.call('HSET', key, 'e', ARGV[i + 8]) end
    if s == '0' then
      if tonumber(n) <= now then redis.call('ZADD', KEYS[1], c, id)
      else redis.call('ZADD', KEYS[2], n, id) end
    elseif s == '1' then redis.call('ZADD', KEYS[3], c, id)
    else redis.call('ZADD', KEYS[4], c, id) end
  end
end
return 1
""",
    "outbox-add",
)
_FETCH = Script(
    """
local pfx = ARGV[1]
while true do
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 500)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local c = redis.call('HGET', pfx .. id, 'c')
    if c then redis.call('ZADD', KEYS[1], c, id) end
  end
  if #due < 500 then break end
end
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[4], id)
  out[#out + 1] = id
  local h = redis.call('HMGET', pfx .. id, 'd', 't', 'b', 'h', 'c', 'a', 'n', 'e', 's')
  for j = 1, 9 do out[#out + 1] = h[j] end
end
return out
""",
    "outbox-fetch",
)
_PUBLISHED = Script(
    """
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local h = redis.call('HMGET', key, 's', 'c')
  if h[1] and h[1] ~= '1' then
    redis.call('HSET', key, 's', '1')
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[3], h[2], id)
  end
end
return 1
""",
    "outbox-mark-published",
)
_FAILED = Script(
    """
local id = ARGV[2]
local key = ARGV[1] .. id
local h = redis.call('HMGET', key, 's', 'c')
if not h[1] then return 0 end
redis.call('HINCRBY', key, 'a', 1)
redis.call('HSET', key, 'e', ARGV[3])
if ARGV[4] == '' then
  redis.call('HSET', key, 's', '2')
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], h[2], id)
else
  redis.call('HSET', key, 'n', ARGV[4])
  if h[1] == '0' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[4], id)
  end
end
return 1
""",
    "outbox-mark-failed",
)
_PURGE = Script(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
""",
    "outbox-purge",
)

_FIELDS = ("d", "t", "b", "h", "c", "a", "n", "e", "s")
_PURGE_BATCH = 1000
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def _decode(id: str, f: list[Any]) -> OutboxMessage:
    """Rebuild a message from the hash fields in ``_FIELDS`` order."""
    error = f[7]
    return OutboxMessage(
        id=id,
        destination=f[0].decode(),
        type_name=f[1].decode(),
        body=f[2],
        headers=_decode_headers(f[3]),
        created_at=float(f[4]),
        attempts=int(f[5]),
        next_attempt_at=float(f[6]),
        last_error=error[1:].decode() if error else None,
        status=OutboxStatus(int(f[8])),
    )


class RedisOutboxStore(RedisStoreBase):
    """Outbox messages in Redis (see :class:`~catga.protocols.OutboxStore`).

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        layout = client.layout
        self._msg_prefix = layout.per_id("ob")[0]
        self._keys = tuple(layout.fixed(f) for f in ("ob-ready", "ob-wait", "ob-pub", "ob-dead"))

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """Store ``messages`` atomically; an id that is already stored is ignored (the first wins).

        Raises:
            ConfigurationError: an item is not an :class:`~catga.protocols.OutboxMessage` or has an
                empty id (nothing is stored).
        """
        args: list[Any] = [self._msg_prefix, repr(time.time())]
        for m in messages:
            if not isinstance(m, OutboxMessage) or not isinstance(m.id, str) or not m.id:
                raise ConfigurationError(
                    f"outbox add() takes OutboxMessage values with a non-empty id, got {m!r}"
                )
            args += (
                m.id,
                m.destination,
                m.type_name,
                bytes(m.body),
                _encode_headers(m.headers),
                repr(float(m.created_at)),
                int(m.attempts),
                repr(float(m.next_attempt_at)),
                "" if m.last_error is None else "=" + m.last_error,
                int(m.status),
            )
        if len(args) > 2:
            await self._client.run_script(_ADD, self._keys, args)

    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
        """Lease up to ``limit`` due PENDING messages, oldest ``created_at`` first, for ``lease`` seconds.

        A leased message is not returned again until the lease ends or it is marked failed.
        """
        if limit <= 0:
            return []
        now = time.time()
        flat = await self._client.run_script(
            _FETCH, self._keys[:2], (self._msg_prefix, repr(now), limit, repr(now + lease))
        )
        return [_decode(flat[i].decode(), flat[i + 1 : i + 10]) for i in range(0, len(flat), 10)]

    async def mark_published(self, ids: Sequence[str]) -> None:
        """Mark messages PUBLISHED. Idempotent; unknown ids are ignored."""
        if ids:
            await self._client.run_script(_PUBLISHED, self._keys, (self._msg_prefix, *ids))

    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None:
        """Record a failed attempt and end the lease; ``retry_at=None`` makes the message DEAD.

        Unknown ids are ignored.
        """
        retry = "" if retry_at is None else repr(float(retry_at))
        await self._client.run_script(_FAILED, self._keys, (self._msg_prefix, id, "=" + error, retry))

    async def get(self, id: str) -> OutboxMessage | None:
        """The message with this id in whatever state, or None."""
        fields = await self._client.execute("HMGET", self._msg_prefix + id, *_FIELDS)
        if fields[0] is None:
            return None
        return _decode(id, fields)

    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int:
        """How many messages are in ``status``."""
        ready, wait, pub, dead = self._keys
        if status == OutboxStatus.PENDING:
            a, b = await self._client.execute_many([("ZCARD", ready), ("ZCARD", wait)])
            return int(a) + int(b)
        n: int = await self._client.execute("ZCARD", pub if status == OutboxStatus.PUBLISHED else dead)
        return n

    async def purge_published(self, older_than: float) -> int:
        """Delete PUBLISHED messages created before the unix time ``older_than``; return how many.

        Works in batches of 1,000 (one script each) so Redis is never blocked for long.
        """
        total = 0
        while True:
            n: int = await self._client.run_script(
                _PURGE, self._keys[2:3], (self._msg_prefix, repr(float(older_than)), _PURGE_BATCH)
            )
            total += n
            if n < _PURGE_BATCH:
                return total
