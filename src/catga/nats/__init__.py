"""The NATS JetStream backend: event store, outbox, idempotency/inbox, dead letters, lock, cache and
scheduled messages.

Install with ``pip install "catga[nats]"``. See ``docs/nats.md`` for URLs, authentication, the stream
layout and what is atomic.
"""

from catga.nats.cache import NatsCache
from catga.nats.checkpoints import NatsCheckpointStore
from catga.nats.connection import LazyInit, NatsConnection
from catga.nats.dead_letter import NatsDeadLetterQueue
from catga.nats.event_store import NatsEventStore
from catga.nats.idempotency import NatsIdempotencyStore, NatsInboxStore
from catga.nats.layout import NatsLayout, nats_layout
from catga.nats.lock import NatsLease, NatsLock
from catga.nats.outbox import NatsOutboxStore
from catga.nats.rpc import NatsRpcClient, NatsRpcServer
from catga.nats.schedules import NatsScheduleStore
from catga.nats.snapshots import NatsSnapshotStore
from catga.nats.transport import NatsSubscription, NatsTransport
from catga.nats.workflows import NatsWorkflowStore

__all__ = (
    "LazyInit",
    "NatsCache",
    "NatsCheckpointStore",
    "NatsConnection",
    "NatsDeadLetterQueue",
    "NatsEventStore",
    "NatsIdempotencyStore",
    "NatsInboxStore",
    "NatsLayout",
    "NatsLease",
    "NatsLock",
    "NatsOutboxStore",
    "NatsRpcClient",
    "NatsRpcServer",
    "NatsScheduleStore",
    "NatsSnapshotStore",
    "NatsSubscription",
    "NatsTransport",
    "NatsWorkflowStore",
    "nats_layout",
)
