"""In-memory backends: the reference implementation of every protocol and the test double.

Every class here passes the conformance suites in :mod:`catga.testing.contracts`, raises the same errors
as the NATS and Redis backends, and documents its thread-safety. Nothing survives the process.
"""

from catga.memory.broker import MemoryBroker
from catga.memory.cache import MemoryCache
from catga.memory.dead_letter import MemoryDeadLetterQueue
from catga.memory.event_store import MemoryEventStore
from catga.memory.idempotency import MemoryIdempotencyStore, MemoryInboxStore
from catga.memory.lock import MemoryLease, MemoryLock
from catga.memory.outbox import MemoryOutboxStore
from catga.memory.schedules import MemoryScheduleStore
from catga.memory.transport import MemorySubscription, MemoryTransport
from catga.memory.workflows import MemoryWorkflowStore

__all__ = (
    "MemoryBroker",
    "MemoryCache",
    "MemoryDeadLetterQueue",
    "MemoryEventStore",
    "MemoryIdempotencyStore",
    "MemoryInboxStore",
    "MemoryLease",
    "MemoryLock",
    "MemoryOutboxStore",
    "MemoryScheduleStore",
    "MemorySubscription",
    "MemoryTransport",
    "MemoryWorkflowStore",
)
