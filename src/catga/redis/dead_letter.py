"""Dead-letter queue on Redis: a hash of records plus a sorted set for order.

``P:dlq`` maps id → the letter encoded with msgpack (bodies kept byte for byte); ``P:dlq-idx`` orders
ids by an insertion counter ``P:dlq-seq`` (oldest first; re-adding an id replaces the letter and moves
it to the end). ``add``, ``list`` and ``delete`` are Lua scripts, so each is one atomic round trip;
``delete(id, expected=...)`` reads the letter, compares it, then deletes it only if the stored bytes are
still those it read (a second script).

Letters written by catga before the dead-letter record carried ``kind`` stored the transport's stream
key as ``source`` (``P:t:evt:OrderPlaced``); they are read back as the logical destination and kind
(``OrderPlaced``, ``event``), so they replay to the right place.
"""

from __future__ import annotations

import builtins

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import COMMAND, EVENT, DeadLetter
from catga.redis._base import RedisStoreBase
from catga.redis.connection import RedisClient, Script

__all__ = ("RedisDeadLetterQueue",)

_ADD = Script(
    """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
return 1
""",
    "dlq-add",
)
_LIST = Script(
    """
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local out = {}
for i = 1, #ids, 500 do
  local part = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(i + 499, #ids)))
  for _, v in ipairs(part) do out[#out + 1] = v end
end
return out
""",
    "dlq-list",
)
_DELETE_IF = Script(
    """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
""",
    "dlq-delete-if",
)
_DELETE = Script(
    """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
""",
    "dlq-delete",
)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(DeadLetter).decode


class RedisDeadLetterQueue(RedisStoreBase):
    """Dead letters in Redis (see :class:`~catga.protocols.DeadLetterQueue`), listed oldest first.

    Built on a :class:`~catga.redis.RedisClient` (keys live under its prefix); ``owns_client`` and
    :meth:`connect` as in :class:`~catga.redis._base.RedisStoreBase`.
    """

    def __init__(self, client: RedisClient, *, owns_client: bool = False) -> None:
        super().__init__(client, owns_client=owns_client)
        p = client.prefix
        self._keys = tuple(client.layout.fixed(f) for f in ("dlq", "dlq-idx", "dlq-seq"))
        self._old_sources = ((f"{p}:t:evt:", EVENT), (f"{p}:t:cmd:", COMMAND))

    def _decode(self, blob: bytes) -> DeadLetter:
        letter = _decode(blob)
        if not letter.kind:  # an older record: its source may be the transport's stream key
            for key_prefix, kind in self._old_sources:
                if letter.source.startswith(key_prefix) and len(letter.source) > len(key_prefix):
                    letter.source, letter.kind = letter.source[len(key_prefix) :], kind
                    break
        return letter

    async def add(self, letter: DeadLetter) -> None:
        """Store ``letter``; a letter with the same id is replaced (and moves to the end).

        Raises:
            ConfigurationError: ``letter`` is not a :class:`~catga.protocols.DeadLetter` or has no id.
        """
        if not isinstance(letter, DeadLetter) or not isinstance(letter.id, str) or not letter.id:
            raise ConfigurationError(f"add() takes a DeadLetter with a non-empty id, got {letter!r}")
        if not isinstance(letter.body, bytes):
            letter = msgspec.structs.replace(letter, body=bytes(letter.body))
        await self._client.run_script(_ADD, self._keys, (letter.id, _encode(letter)))

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to ``limit`` letters, oldest first."""
        if limit <= 0:
            return []
        blobs = await self._client.run_script(_LIST, self._keys[:2], (limit,))
        return [self._decode(b) for b in blobs if b is not None]

    async def get(self, id: str) -> DeadLetter | None:
        """The letter with this id, or None."""
        blob = await self._client.execute("HGET", self._keys[0], id)
        return None if blob is None else self._decode(blob)

    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool:
        """Delete a letter; return whether it existed (and, with ``expected``, still equalled it)."""
        if expected is None:
            return bool(await self._client.run_script(_DELETE, self._keys[:2], (id,)))
        blob = await self._client.execute("HGET", self._keys[0], id)
        if blob is None or self._decode(blob) != expected:
            return False
        return bool(await self._client.run_script(_DELETE_IF, self._keys[:2], (id, blob)))

    async def count(self) -> int:
        """How many letters are stored."""
        n: int = await self._client.execute("HLEN", self._keys[0])
        return n
