"""Workflow instances and histories on Redis: a hash per instance and per history, Lua-fenced.

Keys (``P`` = the client's prefix; on a Redis Cluster they share the hash tag ``{P:wf}``, see
:mod:`catga.redis._keys`):

* ``P:wf:<id>`` — hash: ``n`` name, ``v`` version, ``i`` input, ``s`` status, ``r`` result,
  ``e`` error, ``c`` created at, ``u`` updated at, ``w`` wake at, ``x`` cancel requested (``0``/``1``),
  ``t`` fencing token, ``o`` owner (``""`` when not leased), ``l`` lease end, ``f`` the event type
  a sleeper waits for, ``g`` the engine's wait spec.
* ``P:wf-h:<id>`` — hash: sequence number → the entry (msgpack of kind, name, ok, value, at,
  error type).
* ``P:wf-all`` — every instance id, scored by creation time (``list_instances()``).
* ``P:wf-st:<status>`` — the ids with that status, scored by creation time.
* ``P:wf-active`` — the unfinished ids, scored by creation time (``due()`` scans it in order).
* ``P:wf-wait:<event type>`` — the instances waiting for that event type (sleeping, or running
  with a wait open), scored by creation time.

Every write is one Lua script, atomic on the server: ``acquire`` increments the token (``HINCRBY``)
when the lease is free, ours or ended; ``record`` checks the token and owner, then ``HSETNX`` on the
history (a sequence number recorded once); ``offer`` is that ``HSETNX`` with no token, only
refused for a finished instance; ``update`` checks the token and moves the id between the
status sets. A script that names no sorted set gets the instance's hash as its one declared key
(``KEYS[1]``, unused by the script): that routes it to the node of the ``{P:wf}`` slot on a cluster.
Leases, wake times and ``due`` read the **server's** clock (``TIME``), so replicas whose
clocks disagree still agree on when a lease ends.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from catga.errors import ConcurrencyError, ConfigurationError, StaleFencingTokenError
from catga.protocols import validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script
from catga.workflows.store import (
    FINISHED,
    RUNNING,
    SLEEPING,
    STATUSES,
    HistoryEntry,
    WorkflowInstance,
)

__all__ = ("RedisWorkflowStore",)

_LIB = (
    """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local finished = {"""
    + ", ".join(f"['{s}'] = true" for s in sorted(FINISHED))
    + """}
local function move(sp, active, id, old, new, created)
  if old ~= new then
    redis.call('ZREM', sp .. old, id)
    redis.call('ZADD', sp .. new, created, id)
  end
  if finished[new] then redis.call('ZREM', active, id) end
end
"""
)

# KEYS: all, active. ARGV: hash prefix, status-set prefix, id, name, version, input, created (0: now)
_CREATE = Script(
    _LIB
    + """
local key = ARGV[1] .. ARGV[3]
if redis.call('EXISTS', key) == 1 then return 0 end
local t = now()
local created = tonumber(ARGV[7])
if created <= 0 then created = t end
redis.call('HSET', key, 'n', ARGV[4], 'v', ARGV[5], 'i', ARGV[6], 's', 'pending', 'r', '', 'e', '',
  'c', fmt(created), 'u', fmt(t), 'w', '0', 'x', '0', 't', 0, 'o', '', 'l', '0', 'f', '', 'g', '')
redis.call('ZADD', KEYS[1], created, ARGV[3])
redis.call('ZADD', KEYS[2], created, ARGV[3])
redis.call('ZADD', ARGV[2] .. 'pending', created, ARGV[3])
return 1
""",
    "workflow-create",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, id, owner, ttl
_ACQUIRE = Script(
    _LIB
    + """
local key = ARGV[1] .. ARGV[2]
local h = redis.call('HMGET', key, 's', 'o', 'l')
if not h[1] or finished[h[1]] then return false end
local t = now()
if h[2] ~= '' and h[2] ~= ARGV[3] and tonumber(h[3]) > t then return false end
local token = redis.call('HINCRBY', key, 't', 1)
redis.call('HSET', key, 'o', ARGV[3], 'l', fmt(t + tonumber(ARGV[4])))
return token
""",
    "workflow-acquire",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, id, token, ttl
_RENEW = Script(
    _LIB
    + """
local key = ARGV[1] .. ARGV[2]
local h = redis.call('HMGET', key, 't', 'o')
if not h[1] or h[1] ~= ARGV[3] or h[2] == '' then return 0 end
redis.call('HSET', key, 'l', fmt(now() + tonumber(ARGV[4])))
return 1
""",
    "workflow-renew",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, id, token
_RELEASE = Script(
    """
local key = ARGV[1] .. ARGV[2]
if redis.call('HGET', key, 't') == ARGV[3] then redis.call('HSET', key, 'o', '', 'l', '0') end
return 1
""",
    "workflow-release",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, history prefix, id, token, seq, entry.
# Returns 1, 0 (seq taken), -(token + 1).
_RECORD = Script(
    """
local h = redis.call('HMGET', ARGV[1] .. ARGV[3], 't', 'o')
if not h[1] then return -1 end
if h[1] ~= ARGV[4] or h[2] == '' then return -(tonumber(h[1]) + 1) end
return redis.call('HSETNX', ARGV[2] .. ARGV[3], ARGV[5], ARGV[6])
""",
    "workflow-record",
)
# KEYS: active. ARGV: hash prefix, status-set prefix, id, token, status, result, error, wake at,
# wait for, wait spec, wait-set prefix.
_UPDATE = Script(
    _LIB
    + """
local key = ARGV[1] .. ARGV[3]
local h = redis.call('HMGET', key, 't', 'o', 's', 'x', 'c', 'f')
if not h[1] then return -1 end
if h[1] ~= ARGV[4] or h[2] == '' then return -(tonumber(h[1]) + 1) end
local status, wake, waitfor, spec = ARGV[5], ARGV[8], ARGV[9], ARGV[10]
if status == 'sleeping' and h[4] == '1' then status, wake = 'pending', '0' end
if status ~= 'sleeping' and status ~= 'running' then waitfor, spec = '', '' end
redis.call('HSET', key, 's', status, 'r', ARGV[6], 'e', ARGV[7], 'w', wake, 'u', fmt(now()),
  'f', waitfor, 'g', spec)
move(ARGV[2], KEYS[1], ARGV[3], h[3], status, tonumber(h[5]))
if h[6] and h[6] ~= '' and h[6] ~= waitfor then redis.call('ZREM', ARGV[11] .. h[6], ARGV[3]) end
if waitfor ~= '' then redis.call('ZADD', ARGV[11] .. waitfor, tonumber(h[5]), ARGV[3]) end
return 1
""",
    "workflow-update",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, history prefix, id, seq, entry.
# Returns 1 (stored), 0 (seq taken), -1 (finished or unknown).
_OFFER = Script(
    _LIB
    + """
local s = redis.call('HGET', ARGV[1] .. ARGV[3], 's')
if not s or finished[s] then return -1 end
return redis.call('HSETNX', ARGV[2] .. ARGV[3], ARGV[4], ARGV[5])
""",
    "workflow-offer",
)
# KEYS: the instance hash (routing). ARGV: hash prefix, status-set prefix, id, wait-set prefix
_CANCEL = Script(
    _LIB
    + """
local key = ARGV[1] .. ARGV[3]
local h = redis.call('HMGET', key, 's', 'c', 'f')
if not h[1] or finished[h[1]] then return 0 end
local status = h[1]
if status == 'sleeping' then status = 'pending' end
if h[3] and h[3] ~= '' then redis.call('ZREM', ARGV[4] .. h[3], ARGV[3]) end
redis.call('HSET', key, 'x', '1', 'w', '0', 's', status, 'u', fmt(now()), 'f', '', 'g', '')
move(ARGV[2], '', ARGV[3], h[1], status, tonumber(h[2]))
return 1
""",
    "workflow-cancel",
)
# KEYS: active. ARGV: hash prefix, limit.
_DUE = Script(
    _LIB
    + """
local limit = tonumber(ARGV[2])
local t = now()
local out = {}
local start = 0
while #out < limit do
  local ids = redis.call('ZRANGE', KEYS[1], start, start + 99)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', ARGV[1] .. id, 's', 'o', 'l', 'w')
    if h[1] and not finished[h[1]] and not (h[2] ~= '' and tonumber(h[3]) > t)
        and (h[1] ~= 'sleeping' or tonumber(h[4]) <= t) then
      out[#out + 1] = id
      if #out >= limit then break end
    end
  end
  start = start + 100
end
return out
""",
    "workflow-due",
)
# KEYS: the sorted set to list. ARGV: hash prefix, limit.
_LIST = Script(
    """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. id,
    'n', 'v', 'i', 's', 'r', 'e', 'c', 'u', 'w', 'x', 't', 'o', 'l', 'f', 'g')
  if h[1] then
    out[#out + 1] = id
    for j = 1, 15 do out[#out + 1] = h[j] end
  end
end
return out
""",
    "workflow-list",
)

_WAITING = frozenset({RUNNING, SLEEPING})
_FIELDS = ("n", "v", "i", "s", "r", "e", "c", "u", "w", "x", "t", "o", "l", "f", "g")
_Entry = tuple[str, str, bool, bytes, float, str]
_encode_entry = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(_Entry).decode


def _instance(id: str, f: list[Any]) -> WorkflowInstance:
    return WorkflowInstance(
        id=id, name=f[0].decode(), version=int(f[1]), input=bytes(f[2]), status=f[3].decode(),
        result=bytes(f[4]), error=f[5].decode(), created_at=float(f[6]), updated_at=float(f[7]),
        wake_at=float(f[8]), cancel_requested=f[9] == b"1", token=int(f[10]), owner=f[11].decode(),
        lease_until=float(f[12]), wait_for=(f[13] or b"").decode(), wait_spec=bytes(f[14] or b""),
    )  # fmt: skip


def _instances(flat: list[Any]) -> list[WorkflowInstance]:
    n = len(_FIELDS) + 1
    return [_instance(flat[i].decode(), flat[i + 1 : i + n]) for i in range(0, len(flat), n)]


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")


class RedisWorkflowStore(RedisStoreBase):
    """:class:`~catga.workflows.WorkflowStore` on Redis (see the module docs).

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.

    Args:
        client: the client.
        owns_client: close ``client`` in :meth:`aclose`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        layout = client.layout
        self._hash = layout.per_id("wf")[0]
        self._history = layout.per_id("wf-h")[0]
        self._status = layout.per_id("wf-st")[0]
        self._all = layout.fixed("wf-all")
        self._active = layout.fixed("wf-active")
        self._wait = layout.per_id("wf-wait")[0]

    def _stale(self, id: str, token: int, code: int) -> StaleFencingTokenError:
        return StaleFencingTokenError(f"workflow {id}", token, -code - 1)

    async def create(self, instance: WorkflowInstance) -> bool:
        """See :meth:`WorkflowStore.create <catga.workflows.WorkflowStore.create>`."""
        validate_identifier(instance.id, "workflow id")
        i = instance
        args = (
            self._hash,
            self._status,
            i.id,
            i.name,
            int(i.version),
            bytes(i.input),
            repr(float(i.created_at)),
        )
        created = await self._client.run_script(_CREATE, (self._all, self._active), args)
        return bool(created)

    async def get(self, id: str) -> WorkflowInstance | None:
        """See :meth:`WorkflowStore.get <catga.workflows.WorkflowStore.get>`."""
        fields = await self._client.execute("HMGET", self._hash + id, *_FIELDS)
        return None if fields[0] is None else _instance(id, fields)

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.list_instances <catga.workflows.WorkflowStore.list_instances>`."""
        _check_status(status)
        if limit <= 0:
            return []
        key = self._all if status is None else self._status + status
        flat = await self._client.run_script(_LIST, (key,), (self._hash, limit))
        return _instances(flat)

    async def history(self, id: str) -> list[HistoryEntry]:
        """See :meth:`WorkflowStore.history <catga.workflows.WorkflowStore.history>`."""
        flat = await self._client.execute("HGETALL", self._history + id)
        entries = []
        for i in range(0, len(flat), 2):
            kind, name, ok, value, at, error_type = _decode_entry(flat[i + 1])
            entries.append(HistoryEntry(seq=int(flat[i]), kind=kind, name=name, ok=ok, value=value,
                                        at=at, error_type=error_type))  # fmt: skip
        entries.sort(key=lambda e: e.seq)
        return entries

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """See :meth:`WorkflowStore.acquire <catga.workflows.WorkflowStore.acquire>`."""
        token = await self._client.run_script(
            _ACQUIRE, (self._hash + id,), (self._hash, id, owner, repr(float(ttl)))
        )
        return None if token is None else int(token)

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """See :meth:`WorkflowStore.renew <catga.workflows.WorkflowStore.renew>`."""
        return bool(
            await self._client.run_script(
                _RENEW, (self._hash + id,), (self._hash, id, token, repr(float(ttl)))
            )
        )

    async def release(self, id: str, token: int) -> None:
        """See :meth:`WorkflowStore.release <catga.workflows.WorkflowStore.release>`."""
        await self._client.run_script(_RELEASE, (self._hash + id,), (self._hash, id, token))

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        """See :meth:`WorkflowStore.record <catga.workflows.WorkflowStore.record>`."""
        e = entry
        body = _encode_entry((e.kind, e.name, e.ok, bytes(e.value), e.at or time.time(), e.error_type))
        code = int(
            await self._client.run_script(
                _RECORD, (self._hash + id,), (self._hash, self._history, id, token, e.seq, body)
            )
        )
        if code < 0:
            raise self._stale(id, token, code)
        if code == 0:
            raise ConcurrencyError(f"workflow {id}", e.seq, None)

    async def update(
        self,
        id: str,
        token: int,
        status: str,
        *,
        result: bytes = b"",
        error: str = "",
        wake_at: float = 0.0,
        wait_for: str = "",
        wait_spec: bytes = b"",
    ) -> None:
        """See :meth:`WorkflowStore.update <catga.workflows.WorkflowStore.update>`."""
        _check_status(status)
        args = (self._hash, self._status, id, token, status, bytes(result), error, repr(float(wake_at)),
                wait_for, bytes(wait_spec), self._wait)  # fmt: skip
        code = int(await self._client.run_script(_UPDATE, (self._active,), args))
        if code < 0:
            raise self._stale(id, token, code)

    async def request_cancel(self, id: str) -> bool:
        """See :meth:`WorkflowStore.request_cancel <catga.workflows.WorkflowStore.request_cancel>`."""
        return bool(
            await self._client.run_script(
                _CANCEL, (self._hash + id,), (self._hash, self._status, id, self._wait)
            )
        )

    async def waiting(self, event_type: str, limit: int = 1000) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.waiting <catga.workflows.WorkflowStore.waiting>`."""
        if limit <= 0:
            return []
        flat = await self._client.run_script(_LIST, (self._wait + event_type,), (self._hash, limit))
        return [i for i in _instances(flat) if i.status in _WAITING and i.wait_for == event_type]

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>`."""
        e = entry
        body = _encode_entry((e.kind, e.name, e.ok, bytes(e.value), e.at or time.time(), e.error_type))
        code = await self._client.run_script(
            _OFFER, (self._hash + id,), (self._hash, self._history, id, e.seq, body)
        )
        return int(code) == 1

    async def due(self, limit: int = 100) -> list[str]:
        """See :meth:`WorkflowStore.due <catga.workflows.WorkflowStore.due>`."""
        if limit <= 0:
            return []
        ids = await self._client.run_script(_DUE, (self._active,), (self._hash, limit))
        return [i.decode() for i in ids]
