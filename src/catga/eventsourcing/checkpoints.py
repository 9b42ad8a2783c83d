"""Checkpoints: the global position of the last event a projection handled, per projection name."""

from __future__ import annotations

from typing import Protocol

from catga.protocols import validate_identifier

__all__ = ("CheckpointStore", "MemoryCheckpointStore")


class CheckpointStore(Protocol):
    """Remembers, per projection name, the global position of the last event it handled.

    Contract: ``get(name)`` returns 0 for an unknown name; ``save(name, position)`` overwrites.
    """

    async def get(self, name: str) -> int: ...
    async def save(self, name: str, position: int) -> None: ...
    async def aclose(self) -> None: ...


class MemoryCheckpointStore:
    """In-process :class:`CheckpointStore` (a dict); the reference implementation and test double."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}

    async def get(self, name: str) -> int:
        """The last saved position of ``name``, 0 when none."""
        return self._positions.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        """Record ``position`` as the last handled position of ``name``."""
        self._positions[validate_identifier(name, "projection name")] = position

    async def aclose(self) -> None:
        """Nothing to release; present for the protocol."""

    async def __aenter__(self) -> MemoryCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
