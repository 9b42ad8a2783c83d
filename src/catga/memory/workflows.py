"""In-memory workflow store: the reference :class:`~catga.workflows.WorkflowStore`.

Nothing survives the process: this store gives tests and single-process apps the *semantics* of
workflows (history with optimistic concurrency, leases with fencing, cancel), not their durability.

Thread-safety: every method is thread-safe (one ``threading.Lock`` around each short, await-free
step). Instances and entries are immutable dataclasses, so callers never share mutable state.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from catga.clock import get_clock
from catga.errors import ConcurrencyError, ConfigurationError, StaleFencingTokenError
from catga.protocols import validate_identifier
from catga.workflows.store import (
    ACTIVE,
    COMPENSATING,
    FINISHED,
    PENDING,
    RUNNING,
    SLEEPING,
    STATUSES,
    HistoryEntry,
    WorkflowInstance,
)

__all__ = ("MemoryWorkflowStore",)


class MemoryWorkflowStore:
    """Workflow instances and histories in process memory (see the module docs).

    Args:
        clock: the unix-time clock leases and wake times are read with (default catga's clock,
            :func:`catga.clock.get_clock`, so a :class:`~catga.testing.FakeClock` drives it).
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or (lambda: get_clock().time())
        self._instances: dict[str, WorkflowInstance] = {}
        self._history: dict[str, dict[int, HistoryEntry]] = {}
        self._lock = threading.Lock()

    async def create(self, instance: WorkflowInstance) -> bool:
        """See :meth:`WorkflowStore.create <catga.workflows.WorkflowStore.create>`."""
        validate_identifier(instance.id, "workflow id")
        with self._lock:
            if instance.id in self._instances:
                return False
            now = self.clock()
            self._instances[instance.id] = dataclasses.replace(
                instance,
                status=PENDING,
                created_at=instance.created_at or now,
                updated_at=now,
                token=0,
                owner="",
                lease_until=0.0,
            )
            self._history[instance.id] = {}
        return True

    async def get(self, id: str) -> WorkflowInstance | None:
        """See :meth:`WorkflowStore.get <catga.workflows.WorkflowStore.get>`."""
        with self._lock:
            return self._instances.get(id)

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.list_instances <catga.workflows.WorkflowStore.list_instances>`."""
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")
        with self._lock:
            found = [i for i in self._instances.values() if status is None or i.status == status]
        found.sort(key=lambda i: (i.created_at, i.id))
        return found[:limit]

    async def history(self, id: str) -> list[HistoryEntry]:
        """See :meth:`WorkflowStore.history <catga.workflows.WorkflowStore.history>`."""
        with self._lock:
            entries = self._history.get(id, {})
            return [entries[seq] for seq in sorted(entries)]

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """See :meth:`WorkflowStore.acquire <catga.workflows.WorkflowStore.acquire>`."""
        with self._lock:
            found = self._instances.get(id)
            now = self.clock()
            if found is None or found.status in FINISHED:
                return None
            if found.owner and found.owner != owner and found.lease_until > now:
                return None
            token = found.token + 1
            self._instances[id] = dataclasses.replace(found, token=token, owner=owner, lease_until=now + ttl)
            return token

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """See :meth:`WorkflowStore.renew <catga.workflows.WorkflowStore.renew>`."""
        with self._lock:
            found = self._instances.get(id)
            if found is None or found.token != token or not found.owner:
                return False
            self._instances[id] = dataclasses.replace(found, lease_until=self.clock() + ttl)
            return True

    async def release(self, id: str, token: int) -> None:
        """See :meth:`WorkflowStore.release <catga.workflows.WorkflowStore.release>`."""
        with self._lock:
            found = self._instances.get(id)
            if found is not None and found.token == token:
                self._instances[id] = dataclasses.replace(found, owner="", lease_until=0.0)

    def _check(self, id: str, token: int) -> WorkflowInstance:
        found = self._instances.get(id)
        current = 0 if found is None else found.token
        if found is None or found.token != token or not found.owner:
            raise StaleFencingTokenError(f"workflow {id}", token, current)
        return found

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        """See :meth:`WorkflowStore.record <catga.workflows.WorkflowStore.record>`."""
        with self._lock:
            self._check(id, token)
            entries = self._history[id]
            if entry.seq in entries:
                raise ConcurrencyError(f"workflow {id}", entry.seq, max(entries) + 1)
            entries[entry.seq] = dataclasses.replace(entry, at=entry.at or self.clock())

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
        if status not in STATUSES:
            raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")
        with self._lock:
            found = self._check(id, token)
            if status == SLEEPING and found.cancel_requested:
                status, wake_at = PENDING, 0.0  # a cancel came in meanwhile: due at once
            if status not in (RUNNING, SLEEPING):
                wait_for, wait_spec = "", b""
            self._instances[id] = dataclasses.replace(
                found,
                status=status,
                result=result,
                error=error,
                wake_at=wake_at,
                wait_for=wait_for,
                wait_spec=wait_spec,
                updated_at=self.clock(),
            )

    async def request_cancel(self, id: str) -> bool:
        """See :meth:`WorkflowStore.request_cancel <catga.workflows.WorkflowStore.request_cancel>`."""
        with self._lock:
            found = self._instances.get(id)
            if found is None or found.status in FINISHED:
                return False
            status = PENDING if found.status == SLEEPING else found.status
            self._instances[id] = dataclasses.replace(
                found, cancel_requested=True, status=status, wake_at=0.0, updated_at=self.clock(),
                wait_for="" if status != SLEEPING else found.wait_for,
                wait_spec=b"" if status != SLEEPING else found.wait_spec,
            )  # fmt: skip
            return True

    async def waiting(self, event_type: str, limit: int = 1000) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.waiting <catga.workflows.WorkflowStore.waiting>`."""
        with self._lock:
            found = [
                i
                for i in self._instances.values()
                if i.status in (RUNNING, SLEEPING) and i.wait_for == event_type
            ]
        found.sort(key=lambda i: (i.created_at, i.id))
        return found[:limit]

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>`."""
        with self._lock:
            found = self._instances.get(id)
            if found is None or found.status in FINISHED:
                return False
            entries = self._history[id]
            if entry.seq in entries:
                return False
            entries[entry.seq] = dataclasses.replace(entry, at=entry.at or self.clock())
            return True

    async def due(self, limit: int = 100) -> list[str]:
        """See :meth:`WorkflowStore.due <catga.workflows.WorkflowStore.due>`."""
        with self._lock:
            now = self.clock()
            found = [
                i
                for i in self._instances.values()
                if i.status in ACTIVE
                and not (i.owner and i.lease_until > now)
                and (
                    i.status in (PENDING, RUNNING, COMPENSATING)
                    or (i.status == SLEEPING and i.wake_at <= now)
                )
            ]
        found.sort(key=lambda i: (i.created_at, i.id))
        return [i.id for i in found[:limit]]

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> MemoryWorkflowStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemoryWorkflowStore({len(self._instances)} instance(s))"
