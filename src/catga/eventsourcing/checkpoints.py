"""Checkpoints: the global position of the last event a projection handled, per projection name.

A checkpoint can be **fenced**: the runner that owns a projection (through a lease, see
:class:`~catga.eventsourcing.ProjectionRunner`) passes its lease's fencing token with every write, and the
store keeps the highest token it has seen per name. A write with a lower token -- from an owner that
paused past its lease while another replica took over -- is refused with
:class:`~catga.errors.StaleFencingTokenError`, atomically on the server, and stores nothing. A new
owner first calls :meth:`CheckpointStore.claim`, which raises the stored token to its own *and* returns
the position in one step, so no write of the old owner can land after the new owner read the position.

Durable stores: ``NatsCheckpointStore``, ``RedisCheckpointStore``, ``PostgresCheckpointStore`` (the last
can write inside your transaction: ``save(..., connection=conn)``, so a read model and its checkpoint
commit together).
"""

from __future__ import annotations

from typing import Protocol

from catga.errors import ConfigurationError, StaleFencingTokenError
from catga.protocols import validate_identifier

__all__ = ("CheckpointStore", "MemoryCheckpointStore")

_KIND = "projection name"


def check_position(position: object) -> int:
    """Check a checkpoint position (an int >= 0) and return it.

    Raises:
        ConfigurationError: it is not a non-negative int.
    """
    if type(position) is not int or position < 0:
        raise ConfigurationError(f"a checkpoint position is an int >= 0, got {position!r}")
    return position


class CheckpointStore(Protocol):
    """Remembers, per projection name, the global position of the last event it handled.

    Contract (:class:`~catga.testing.contracts.CheckpointStoreContract`):
        * ``get(name)`` returns the saved position, 0 for an unknown name.
        * ``save(name, position)`` overwrites (a smaller position too: a rebuild saves 0).
        * ``save(name, position, fencing_token=t)`` stores ``position`` and ``t`` unless a token higher
          than ``t`` is stored, checked atomically with the write; then it raises
          :class:`~catga.errors.StaleFencingTokenError` and stores nothing. ``fencing_token=None`` skips
          the check and keeps the stored token.
        * ``claim(name, fencing_token)`` raises the stored token to ``fencing_token`` and returns the
          position, in one atomic step (so a lower token can no longer write); a higher stored token
          raises :class:`~catga.errors.StaleFencingTokenError`.
        * Names are validated with :func:`~catga.protocols.validate_identifier` before any I/O;
          positions are ints >= 0 (:class:`~catga.errors.ConfigurationError` otherwise).
    """

    async def get(self, name: str) -> int: ...
    async def save(self, name: str, position: int, *, fencing_token: int | None = None) -> None: ...
    async def claim(self, name: str, fencing_token: int) -> int: ...
    async def aclose(self) -> None: ...


class MemoryCheckpointStore:
    """In-process :class:`CheckpointStore` (a dict); the reference implementation and test double.

    Not thread-safe: use it from one event loop.
    """

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    async def get(self, name: str) -> int:
        """The last saved position of ``name``, 0 when none."""
        return self._positions.get(validate_identifier(name, _KIND), 0)

    async def save(self, name: str, position: int, *, fencing_token: int | None = None) -> None:
        """Record ``position`` as the last handled position of ``name`` (see the protocol for fencing).

        Raises:
            StaleFencingTokenError: a higher fencing token is stored.
        """
        validate_identifier(name, _KIND)
        check_position(position)
        if fencing_token is not None:
            self._fence(name, fencing_token)
        self._positions[name] = position

    async def claim(self, name: str, fencing_token: int) -> int:
        """Raise the stored token of ``name`` to ``fencing_token``; return its position.

        Raises:
            StaleFencingTokenError: a higher fencing token is stored.
        """
        validate_identifier(name, _KIND)
        self._fence(name, fencing_token)
        return self._positions.get(name, 0)

    def _fence(self, name: str, token: int) -> None:
        current = self._tokens.get(name)
        if current is not None and current > token:
            raise StaleFencingTokenError(name, token, current)
        self._tokens[name] = token

    async def aclose(self) -> None:
        """Nothing to release; present for the protocol."""

    async def __aenter__(self) -> MemoryCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
