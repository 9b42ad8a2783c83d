"""PostgreSQL backend: an outbox written in the same transaction as your data (``catga[postgres]``)."""

from catga.postgres.outbox import PostgresOutboxStore

__all__ = ("PostgresOutboxStore",)
