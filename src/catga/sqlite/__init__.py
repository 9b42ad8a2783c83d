"""SQLite backend (standard library ``sqlite3``): an event store in one file, for a single host."""

from catga.sqlite.event_store import SqliteEventStore

__all__ = ("SqliteEventStore",)
