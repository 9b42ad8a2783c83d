"""PostgreSQL backend (``catga[postgres]``): an outbox and inbox/idempotency records that can be written
in the same transaction as your data."""

from catga.postgres.idempotency import PostgresIdempotencyStore, PostgresInboxStore
from catga.postgres.outbox import PostgresOutboxStore

__all__ = ("PostgresIdempotencyStore", "PostgresInboxStore", "PostgresOutboxStore")
