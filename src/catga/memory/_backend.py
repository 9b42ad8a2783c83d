"""What a ``memory://`` URL builds (registered in :mod:`catga.backends`): everything in this process.

No transport (``App.transport`` is None: events stay in the app), no connection, no worker id lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from catga.memory.event_store import MemoryEventStore
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.memory.outbox import MemoryOutboxStore
from catga.memory.schedules import MemoryScheduleStore
from catga.memory.workflows import MemoryWorkflowStore

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl


def transport(b: Backends, spec: BackendUrl) -> None:
    """No transport: the app dispatches in process."""
    return None


def store(b: Backends, spec: BackendUrl) -> MemoryEventStore:
    """An in-memory event store."""
    return MemoryEventStore(registry=b.registry, max_payload=b.max_payload)


def idempotency_store(b: Backends, spec: BackendUrl) -> MemoryIdempotencyStore:
    """An in-memory idempotency store."""
    return MemoryIdempotencyStore()


def outbox(b: Backends, spec: BackendUrl) -> MemoryOutboxStore:
    """An in-memory outbox."""
    return MemoryOutboxStore()


def scheduler(b: Backends, spec: BackendUrl) -> MemoryScheduleStore:
    """An in-memory schedule store (a timer heap: schedules are lost at exit)."""
    return MemoryScheduleStore()


def workflows(b: Backends, spec: BackendUrl) -> MemoryWorkflowStore:
    """An in-memory workflow store (workflows are lost at exit)."""
    return MemoryWorkflowStore()
