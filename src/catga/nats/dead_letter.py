"""A dead-letter queue on a JetStream KV-layout bucket.

One entry per letter id; the value is the :class:`~catga.protocols.DeadLetter` in msgpack (bodies kept
byte for byte). Listing reads the bucket in revision order, so "oldest first" means in the order the
letters were (last) added -- re-adding an id moves it to the end, like the in-memory queue. ``count``
reads the stream's message count (one message per letter: deletes remove the message, no tombstones).
Letter ids may be any non-empty string (escaped into one subject token).

Reads (``list``, ``get``, ``count``, ``delete``) never create the bucket: on a bucket that does not
exist they find nothing, so ``catga dlq list`` with a mistyped ``?prefix=`` leaves no empty bucket behind.
Only :meth:`NatsDeadLetterQueue.add` creates it.
"""

from __future__ import annotations

import builtins
import contextlib

import msgspec

from catga.errors import ConfigurationError
from catga.nats._kv import KvStore
from catga.protocols import DeadLetter

__all__ = ("NatsDeadLetterQueue",)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(DeadLetter).decode


class NatsDeadLetterQueue(KvStore):
    """:class:`~catga.protocols.DeadLetterQueue` on a NATS KV-layout bucket (default ``catga_dead_letters``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`.
    """

    default_bucket = "catga_dead_letters"
    _kind = "dead letter id"
    _identifiers = False

    async def add(self, letter: DeadLetter) -> None:
        """Store ``letter``; a letter with the same id is replaced.

        Raises:
            ConfigurationError: ``letter`` is not a :class:`~catga.protocols.DeadLetter` or has no id.
        """
        if not isinstance(letter, DeadLetter) or not letter.id:
            raise ConfigurationError(f"add() takes a DeadLetter with a non-empty id, got {letter!r}")
        await self._bucket.write(letter.id, _encode(letter), last=None)

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to ``limit`` letters, oldest first."""
        out: builtins.list[DeadLetter] = []
        if limit <= 0 or not await self._bucket.exists():
            return out
        async with contextlib.aclosing(self._bucket.scan()) as entries:
            async for entry in entries:
                out.append(_decode(entry.value))
                if len(out) >= limit:
                    break
        return out

    async def get(self, id: str) -> DeadLetter | None:
        """The letter with this id, or None."""
        if not await self._bucket.exists():
            return None
        entry = await self._bucket.get(id)
        return None if entry is None else _decode(entry.value)

    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool:
        """Delete the letter; return whether it existed (and, with ``expected``, still equalled it).

        With ``expected``, the delete is conditional on the revision read: a letter re-added meanwhile
        is kept.
        """
        bucket = self._bucket
        if not await bucket.exists():
            return False
        while True:
            entry = await bucket.get(id)
            if entry is None:
                return False
            if expected is not None and _decode(entry.value) != expected:
                return False
            if await bucket.delete(entry.revision):
                return True
            if expected is not None:
                return False  # replaced since read: that is another letter

    async def count(self) -> int:
        """Number of letters."""
        if not await self._bucket.exists():
            return 0
        return await self._bucket.count()
