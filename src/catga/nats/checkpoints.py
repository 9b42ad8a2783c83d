"""Projection checkpoints in a JetStream KV-layout bucket (default ``catga_checkpoints``).

One entry per projection name; its value is JSON, ``{"position": 1234, "fencing": 7}`` (``fencing`` is
null until a fenced write). Every write is a compare-and-set on the revision read just before
(``Nats-Expected-Last-Subject-Sequence``), so the fencing check and the write are one atomic step on the
server: a writer that lost the race reads again and re-checks.
"""

from __future__ import annotations

import msgspec

from catga.errors import BackendError, StaleFencingTokenError
from catga.eventsourcing.checkpoints import check_position
from catga.nats._kv import KvEntry, KvStore

__all__ = ("NatsCheckpointStore",)

_RETRIES = 64


class _Checkpoint(msgspec.Struct):
    position: int
    fencing: int | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Checkpoint).decode


class NatsCheckpointStore(KvStore):
    """:class:`~catga.eventsourcing.CheckpointStore` on a NATS KV-layout bucket (default
    ``catga_checkpoints``).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`.
    """

    default_bucket = "catga_checkpoints"
    _kind = "projection name"

    async def _read(self, name: str) -> tuple[_Checkpoint, int]:
        entry: KvEntry | None = await self._bucket.get(name)
        if entry is None:
            return _Checkpoint(0), 0
        try:
            return _decode(entry.value), entry.revision
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendError(
                f"checkpoint {name!r} in bucket {self.bucket!r} is unreadable ({exc}); "
                "fix or delete the entry (a rebuild saves position 0)",
                backend="nats",
            ) from exc

    async def get(self, name: str) -> int:
        """The last saved position of ``name``, 0 when none.

        Raises:
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        checkpoint, _ = await self._read(name)
        return checkpoint.position

    async def save(self, name: str, position: int, *, fencing_token: int | None = None) -> None:
        """Record ``position`` for ``name``; with ``fencing_token``, only if no higher token is stored.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored; nothing was written.
            InvalidIdentifierError: ``name`` is invalid; ConfigurationError: bad ``position``.
        """
        self._bucket.subject(name)
        check_position(position)
        await self._write(name, position, fencing_token)

    async def claim(self, name: str, fencing_token: int) -> int:
        """Raise the stored token of ``name`` to ``fencing_token`` and return its position, atomically.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored.
            InvalidIdentifierError: ``name`` is invalid (before any I/O).
        """
        self._bucket.subject(name)
        return await self._write(name, None, fencing_token)

    async def _write(self, name: str, position: int | None, token: int | None) -> int:
        for _ in range(_RETRIES):
            current, revision = await self._read(name)
            stored = current.fencing
            if token is not None and stored is not None and stored > token:
                raise StaleFencingTokenError(name, token, stored)
            new = _Checkpoint(
                current.position if position is None else position, stored if token is None else token
            )
            if position is None and revision and stored == token:
                return current.position  # claimed already: nothing to change
            if await self._bucket.write(name, _encode(new), last=revision) is not None:
                return new.position
        raise BackendError(
            f"writing checkpoint {name!r} lost {_RETRIES} compare-and-set races in bucket {self.bucket!r}; "
            "several owners write it at once (run the projection under a lock)",
            backend="nats",
        )
