"""PostgreSQL backend (``catga[postgres]``): an outbox and inbox/idempotency records that can be written
in the same transaction as your data, a distributed lock (which apps lease worker ids through) and
scheduled messages."""

from catga.postgres._base import DEFAULT_TIMEOUT, MIN_SERVER_VERSION, check_server_version, format_version
from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.lock import PostgresLease, PostgresLock
from catga.postgres.outbox import PostgresOutboxStore
from catga.postgres.schedules import PostgresScheduleStore

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "PostgresIdempotencyStore",
    "PostgresInboxStore",
    "PostgresLease",
    "PostgresLock",
    "PostgresOutboxStore",
    "PostgresScheduleStore",
    "check_server_version",
    "format_version",
)
