"""The transaction a :class:`~catga.postgres.PostgresUnitOfWork` makes current in a task (private).

A tiny module of its own so :mod:`catga.postgres._base` can look it up without importing the unit of
work (which imports the pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ("Tx", "call_after_commit", "current", "joined_connection")


class Tx:
    """The running unit of work's pool, connection, and what to call once it has committed."""

    __slots__ = ("after_commit", "conn", "pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.after_commit: list[Callable[[], object]] = []


current: ContextVar[Tx | None] = ContextVar("catga_pg_unit_of_work", default=None)


def joined_connection(pool: Any) -> Any:
    """The connection of the unit of work running in this task on ``pool``, or None.

    What the stores call when they are given no ``connection=``.
    """
    tx = current.get()
    if tx is not None and tx.pool is pool:
        return tx.conn
    return None


def call_after_commit(pool: Any, fn: Callable[[], object]) -> None:
    """Call ``fn()`` once the unit of work running on ``pool`` commits (never if it rolls back); at
    once when none is running."""
    tx = current.get()
    if tx is not None and tx.pool is pool:
        tx.after_commit.append(fn)
    else:
        fn()
