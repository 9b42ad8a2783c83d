"""PostgreSQL backend (``catga[postgres]``): an outbox and inbox/idempotency records that can be written
in the same transaction as your data, snapshots and projection checkpoints (also writable in your
transaction), and a distributed lock (which apps lease worker ids through)."""

from catga.postgres._base import (
    DEFAULT_TIMEOUT,
    MIN_SERVER_VERSION,
    PgPool,
    check_server_version,
    format_version,
)
from catga.postgres.checkpoints import PostgresCheckpointStore
from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.lock import PostgresLease, PostgresLock
from catga.postgres.outbox import PostgresOutboxStore
from catga.postgres.snapshots import PostgresSnapshotStore

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "PgPool",
    "PostgresCheckpointStore",
    "PostgresIdempotencyStore",
    "PostgresInboxStore",
    "PostgresLease",
    "PostgresLock",
    "PostgresOutboxStore",
    "PostgresSnapshotStore",
    "check_server_version",
    "format_version",
)
