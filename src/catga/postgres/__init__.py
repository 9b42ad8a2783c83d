"""PostgreSQL backend (``catga[postgres]``): an event store with a commit-ordered global position, an
outbox and inbox/idempotency records that can be written in the same transaction as your data, and a
distributed lock (which apps lease worker ids through)."""

from catga.postgres._base import DEFAULT_TIMEOUT, MIN_SERVER_VERSION, check_server_version, format_version
from catga.postgres.event_store import PostgresEventStore
from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.lock import PostgresLease, PostgresLock
from catga.postgres.outbox import PostgresOutboxStore
from catga.postgres.unit_of_work import PostgresUnitOfWork, UnitOfWorkBehavior, current_connection

__all__ = (
    "DEFAULT_TIMEOUT",
    "MIN_SERVER_VERSION",
    "PostgresEventStore",
    "PostgresIdempotencyStore",
    "PostgresInboxStore",
    "PostgresLease",
    "PostgresLock",
    "PostgresOutboxStore",
    "PostgresUnitOfWork",
    "UnitOfWorkBehavior",
    "check_server_version",
    "current_connection",
    "format_version",
)
