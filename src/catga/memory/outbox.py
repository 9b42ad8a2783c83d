"""In-memory outbox: the reference implementation of :class:`~catga.protocols.OutboxStore`.

Nothing survives the process, so this store gives the outbox's *semantics* (idempotent add, leases,
retries, dead messages) to tests and single-process apps, not its durability.

Thread-safety: every method is thread-safe (one ``threading.Lock`` around each short, await-free
operation). Messages are copied on the way in and out, so callers never share state with the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import OutboxMessage, OutboxStatus

__all__ = ("MemoryOutboxStore",)


def _copy(message: OutboxMessage) -> OutboxMessage:
    return msgspec.structs.replace(message, headers=dict(message.headers))


class MemoryOutboxStore:
    """Outbox messages in process memory.

    Leases are measured on the monotonic clock; ``next_attempt_at``, ``created_at`` and ``older_than``
    are unix times, as in the protocol.
    """

    __slots__ = ("_leases", "_lock", "_messages")

    def __init__(self) -> None:
        self._messages: dict[str, OutboxMessage] = {}
        self._leases: dict[str, float] = {}
        self._lock = threading.Lock()

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """Store ``messages`` atomically; an id that is already stored is ignored (the first wins).

        Raises:
            ConfigurationError: an item is not an :class:`~catga.protocols.OutboxMessage` or has an
                empty id (nothing is stored).
        """
        copies: list[OutboxMessage] = []
        for message in messages:
            if not isinstance(message, OutboxMessage) or not message.id:
                raise ConfigurationError(
                    f"outbox add() takes OutboxMessage values with a non-empty id, got {message!r}"
                )
            copies.append(_copy(message))
        with self._lock:
            stored = self._messages
            for copy in copies:
                if copy.id not in stored:
                    stored[copy.id] = copy

    async def fetch_pending(self, limit: int = 100, lease: float = 30.0) -> list[OutboxMessage]:
        """Lease up to ``limit`` due PENDING messages, oldest ``created_at`` first.

        A leased message is not returned again until ``lease`` seconds have passed or it is marked
        failed (which ends the lease).
        """
        if limit <= 0:
            return []
        now = time.time()
        mono = time.monotonic()
        with self._lock:
            leases = self._leases
            due = [
                m
                for m in self._messages.values()
                if m.status == OutboxStatus.PENDING
                and m.next_attempt_at <= now
                and leases.get(m.id, 0.0) <= mono
            ]
            due.sort(key=lambda m: m.created_at)
            picked = due[:limit]
            until = mono + lease
            for m in picked:
                leases[m.id] = until
            return [_copy(m) for m in picked]

    async def mark_published(self, ids: Sequence[str]) -> None:
        """Mark messages PUBLISHED. Idempotent; unknown ids are ignored."""
        with self._lock:
            for id in ids:
                message = self._messages.get(id)
                if message is not None:
                    message.status = OutboxStatus.PUBLISHED
                    self._leases.pop(id, None)

    async def mark_failed(self, id: str, error: str, retry_at: float | None) -> None:
        """Record a failed attempt and end the lease; ``retry_at=None`` makes the message DEAD.

        Unknown ids are ignored.
        """
        with self._lock:
            message = self._messages.get(id)
            if message is None:
                return
            message.attempts += 1
            message.last_error = error
            self._leases.pop(id, None)
            if retry_at is None:
                message.status = OutboxStatus.DEAD
            else:
                message.next_attempt_at = retry_at

    async def get(self, id: str) -> OutboxMessage | None:
        """The message with this id in whatever state, or None."""
        message = self._messages.get(id)
        if message is None:
            return None
        with self._lock:
            return _copy(message)

    async def count(self, status: OutboxStatus = OutboxStatus.PENDING) -> int:
        """How many messages are in ``status``."""
        with self._lock:
            return sum(1 for m in self._messages.values() if m.status == status)

    async def purge_published(self, older_than: float) -> int:
        """Delete PUBLISHED messages created before the unix time ``older_than``; return how many."""
        with self._lock:
            doomed = [
                m.id
                for m in self._messages.values()
                if m.status == OutboxStatus.PUBLISHED and m.created_at < older_than
            ]
            for id in doomed:
                del self._messages[id]
            return len(doomed)

    async def aclose(self) -> None:
        """Nothing to release; idempotent."""

    async def __aenter__(self) -> MemoryOutboxStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
