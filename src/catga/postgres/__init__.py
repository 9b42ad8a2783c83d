"""PostgreSQL backend (``catga[postgres]``): an outbox and inbox/idempotency records that can be written
in the same transaction as your data, and a distributed lock (which apps lease worker ids through)."""

from catga.postgres._base import (
    DEFAULT_TIMEOUT,
    MIN_SERVER_VERSION,
    PgPool,
    check_server_version,
    format_version,
)
from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.lock import PostgresLease, PostgresLock
from catga.postgres.outbox import PostgresOutboxStore

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "PgPool",
    "PostgresIdempotencyStore",
    "PostgresInboxStore",
    "PostgresLease",
    "PostgresLock",
    "PostgresOutboxStore",
    "check_server_version",
    "format_version",
)
