"""The transaction a :class:`~catga.postgres.PostgresUnitOfWork` makes current in a task (private).

A tiny module of its own so :mod:`catga.postgres._base` can look it up without importing the unit of
work (which imports the pipeline).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ("Tx", "current", "joined_connection")


class Tx:
    """The running unit of work's pool and connection."""

    __slots__ = ("conn", "pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool = pool
        self.conn = conn


current: ContextVar[Tx | None] = ContextVar("catga_pg_unit_of_work", default=None)


def joined_connection(pool: Any) -> Any:
    """The connection of the unit of work running in this task on ``pool``, or None.

    What the stores call when they are given no ``connection=``.
    """
    tx = current.get()
    if tx is not None and tx.pool is pool:
        return tx.conn
    return None
