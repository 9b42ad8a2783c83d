"""Schedules on Redis: a hash per schedule and one sorted set by due time, claimed by a Lua script.

Keys (``P`` = the client's prefix; on a Redis Cluster they share the hash tag ``{P:sc}``, see
:mod:`catga.redis._keys`):

* ``P:sc:<id>`` — hash: ``u`` due_at, ``k`` kind, ``t`` type name, ``b`` body, ``h`` headers (JSON),
  ``v`` every, ``a`` attempts, ``e`` last error, ``c`` cron expression.
* ``P:sc-due`` — every schedule's id, scored by when it may be claimed: its due time, or the end of
  its lease or retry delay.

Every operation is one Lua script, atomic on the server. ``claim_due`` takes the ids scored up to
*now* (at most ``limit``) and re-scores them ``now + lease`` in the same script, so two schedulers
never claim one schedule while its lease runs, and a scheduler that dies leaves it to the next one
when the lease ends. ``complete`` and ``retry`` act only when the hash still holds the claimed
occurrence (its ``due_at``, compared as the exact string written), so a late or cancelled one is a
no-op. Times are the clients' unix time (the ``clock`` of the store).

Waiting: a ``claim_due`` that finds nothing reads the earliest score (``ZRANGE ... WITHSCORES``, one
more round trip) and sleeps until then, at most ``wait`` seconds; an ``add``/``complete``/``retry`` on
the same store object wakes it at once, schedules written by other processes are seen at the next
poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import Schedule, validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisScheduleStore",)

_ADD = Script(
    """
local key = ARGV[1] .. ARGV[2]
if redis.call('EXISTS', key) == 1 then return 0 end
redis.call('HSET', key, 'u', ARGV[3], 'k', ARGV[4], 't', ARGV[5], 'b', ARGV[6], 'h', ARGV[7],
  'v', ARGV[8], 'a', 0, 'c', ARGV[9])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
""",
    "schedule-add",
)
_CLAIM = Script(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'u', 'k', 't', 'b', 'h', 'v', 'a', 'e', 'c')
  if h[1] then
    redis.call('ZADD', KEYS[1], ARGV[4], id)
    out[#out + 1] = id
    for j = 1, 9 do out[#out + 1] = h[j] or '' end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
""",
    "schedule-claim",
)
_COMPLETE = Script(
    """
local key = ARGV[1] .. ARGV[2]
if redis.call('HGET', key, 'u') ~= ARGV[3] then return 0 end
if ARGV[4] == '' then
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], ARGV[2])
else
  redis.call('HSET', key, 'u', ARGV[4], 'a', 0, 'e', '')
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
end
return 1
""",
    "schedule-complete",
)
_RETRY = Script(
    """
local key = ARGV[1] .. ARGV[2]
if redis.call('HGET', key, 'u') ~= ARGV[3] then return 0 end
redis.call('HINCRBY', key, 'a', 1)
redis.call('HSET', key, 'e', ARGV[5])
redis.call('ZADD', KEYS[1], math.max(tonumber(ARGV[4]), tonumber(ARGV[3])), ARGV[2])
return 1
""",
    "schedule-retry",
)
_CANCEL = Script(
    """
redis.call('ZREM', KEYS[1], ARGV[2])
return redis.call('DEL', ARGV[1] .. ARGV[2])
""",
    "schedule-cancel",
)

_FIELDS = ("u", "k", "t", "b", "h", "v", "a", "e", "c")
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def _decode(id: str, f: list[Any]) -> Schedule:
    """Rebuild a schedule from the hash fields in ``_FIELDS`` order."""
    error = f[7]
    return Schedule(
        id=id,
        due_at=float(f[0]),
        kind=f[1].decode(),
        type_name=f[2].decode(),
        body=bytes(f[3]),
        headers=_decode_headers(f[4]),
        every=float(f[5]),
        attempts=int(f[6]),
        last_error=error[1:].decode() if error else None,
        cron=f[8].decode() if f[8] else "",
    )


class RedisScheduleStore(RedisStoreBase):
    """Schedules in Redis (see :class:`~catga.protocols.ScheduleStore` and the module docs).

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.

    Args:
        client: the client.
        owns_client: close ``client`` in :meth:`aclose`.
        clock: the unix-time clock that decides what is due.
    """

    def __init__(
        self, client: RedisClient, *, owns_client: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(client, owns_client=owns_client)
        self.clock = clock
        self._prefix = client.layout.per_id("sc")[0]
        self._keys = (client.layout.fixed("sc-due"),)
        self._changed = asyncio.Event()

    async def add(self, schedule: Schedule) -> bool:
        """Store ``schedule``; False (nothing changed) when its id is already stored.

        Raises:
            ConfigurationError: not a :class:`~catga.protocols.Schedule`.
            InvalidIdentifierError: an invalid id.
        """
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"add() takes a Schedule, got {schedule!r}")
        validate_identifier(schedule.id, "schedule id")
        s = schedule
        added = await self._client.run_script(
            _ADD,
            self._keys,
            (self._prefix, s.id, repr(float(s.due_at)), s.kind, s.type_name, bytes(s.body),
             _encode_headers(s.headers), repr(float(s.every)), s.cron),
        )  # fmt: skip
        self._changed.set()
        return bool(added)

    async def claim_due(self, limit: int = 100, lease: float = 30.0, wait: float = 0.0) -> list[Schedule]:
        """Lease up to ``limit`` due schedules for ``lease`` s; wait up to ``wait`` s when none is due."""
        if limit <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._changed.clear()
            now = self.clock()
            flat = await self._client.run_script(
                _CLAIM, self._keys, (self._prefix, repr(now), limit, repr(now + lease))
            )
            if flat:
                return [_decode(flat[i].decode(), flat[i + 1 : i + 10]) for i in range(0, len(flat), 10)]
            left = deadline - loop.time()
            if left <= 0:
                return []
            first = await self._client.execute("ZRANGE", self._keys[0], 0, 0, "WITHSCORES")
            if first:
                left = min(left, max(float(first[1]) - self.clock(), 0.001))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def complete(self, schedule: Schedule, next_due: float | None = None) -> None:
        """Delete the schedule, or move it to ``next_due``; a no-op for another occurrence."""
        nxt = "" if next_due is None else repr(float(next_due))
        await self._client.run_script(
            _COMPLETE, self._keys, (self._prefix, schedule.id, repr(float(schedule.due_at)), nxt)
        )
        if next_due is not None:
            self._changed.set()

    async def retry(self, schedule: Schedule, retry_at: float, error: str) -> None:
        """Count a failed delivery; claimable again at ``retry_at``. A no-op for another occurrence."""
        await self._client.run_script(
            _RETRY,
            self._keys,
            (self._prefix, schedule.id, repr(float(schedule.due_at)), repr(float(retry_at)), "=" + error),
        )
        self._changed.set()

    async def cancel(self, id: str) -> bool:
        """Delete the schedule; False when there is none."""
        removed = await self._client.run_script(_CANCEL, self._keys, (self._prefix, id))
        return bool(removed)

    async def get(self, id: str) -> Schedule | None:
        """The schedule as stored, or None."""
        fields = await self._client.execute("HMGET", self._prefix + id, *_FIELDS)
        if fields[0] is None:
            return None
        return _decode(id, fields)
