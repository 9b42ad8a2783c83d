"""PostgreSQL backend (``catga[postgres]``): an event store with a commit-ordered global position, an
outbox and inbox/idempotency records that can be written in the same transaction as your data (one unit
of work), snapshots and projection checkpoints (also writable in your transaction), and a distributed
lock (which apps lease worker ids through), scheduled messages and durable workflows."""

from catga.postgres._base import (
    DEFAULT_TIMEOUT,
    MIN_SERVER_VERSION,
    PgPool,
    check_server_version,
    format_version,
)
from catga.postgres.checkpoints import PostgresCheckpointStore
from catga.postgres.event_store import PostgresEventStore
from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.lock import PostgresLease, PostgresLock
from catga.postgres.outbox import PostgresOutboxStore
from catga.postgres.schedules import PostgresScheduleStore
from catga.postgres.snapshots import PostgresSnapshotStore
from catga.postgres.unit_of_work import PostgresUnitOfWork, UnitOfWorkBehavior, current_connection
from catga.postgres.workflows import PostgresWorkflowStore

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "PgPool",
    "PostgresCheckpointStore",
    "PostgresEventStore",
    "PostgresIdempotencyStore",
    "PostgresInboxStore",
    "PostgresLease",
    "PostgresLock",
    "PostgresOutboxStore",
    "PostgresScheduleStore",
    "PostgresSnapshotStore",
    "PostgresUnitOfWork",
    "PostgresWorkflowStore",
    "UnitOfWorkBehavior",
    "check_server_version",
    "current_connection",
    "format_version",
)
