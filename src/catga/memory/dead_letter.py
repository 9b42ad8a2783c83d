"""In-memory dead-letter queue: the reference implementation of :class:`~catga.protocols.DeadLetterQueue`.

Thread-safety: every method is thread-safe. Letters are copied on the way in and out; bodies are kept
as the exact bytes given.
"""

from __future__ import annotations

import builtins
import threading

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import DeadLetter

__all__ = ("MemoryDeadLetterQueue",)


def _copy(letter: DeadLetter) -> DeadLetter:
    return msgspec.structs.replace(letter, headers=dict(letter.headers))


class MemoryDeadLetterQueue:
    """Dead letters in process memory, listed oldest first (a re-added id moves to the end)."""

    __slots__ = ("_letters", "_lock")

    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}
        self._lock = threading.Lock()

    async def add(self, letter: DeadLetter) -> None:
        """Store ``letter``; a letter with the same id is replaced.

        Raises:
            ConfigurationError: ``letter`` is not a :class:`~catga.protocols.DeadLetter` or has no id.
        """
        if not isinstance(letter, DeadLetter) or not letter.id:
            raise ConfigurationError(f"add() takes a DeadLetter with a non-empty id, got {letter!r}")
        copy = _copy(letter)
        if not isinstance(copy.body, bytes):
            copy.body = bytes(copy.body)
        with self._lock:
            self._letters.pop(copy.id, None)
            self._letters[copy.id] = copy

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to ``limit`` letters, oldest first."""
        with self._lock:
            out: builtins.list[DeadLetter] = []
            for letter in self._letters.values():
                if len(out) >= limit:
                    break
                out.append(_copy(letter))
            return out

    async def get(self, id: str) -> DeadLetter | None:
        """The letter with this id, or None."""
        with self._lock:
            letter = self._letters.get(id)
            return None if letter is None else _copy(letter)

    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool:
        """Delete a letter; return whether it existed (and, with ``expected``, still equalled it)."""
        with self._lock:
            if expected is not None and self._letters.get(id) != expected:
                return False
            return self._letters.pop(id, None) is not None

    async def count(self) -> int:
        """How many letters are stored."""
        return len(self._letters)

    async def aclose(self) -> None:
        """Nothing to release; idempotent."""

    async def __aenter__(self) -> MemoryDeadLetterQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
