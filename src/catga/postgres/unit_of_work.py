"""One PostgreSQL transaction per unit of work: events, outbox rows and the "done" record together.

A :class:`PostgresUnitOfWork` opens a transaction on a pool connection and makes it the *current*
transaction of the task (a context variable, so everything the handler awaits — and tasks it spawns —
sees it). Every catga PostgreSQL store on **the same pool** that is called without ``connection=``
joins it:

* :class:`~catga.postgres.PostgresEventStore` appends (so ``Repository.save`` does);
* :class:`~catga.postgres.PostgresOutboxStore` ``add`` — so the outbox rows of the events a handler
  publishes with ``ctx.publish`` (``App(outbox=...)`` plus :meth:`App.export <catga.App.export>`) are
  written by catga itself, no ``OutboxMessage`` built by hand;
* :class:`~catga.postgres.PostgresIdempotencyStore` / :class:`~catga.postgres.PostgresInboxStore`
  ``claim`` / ``complete`` / ``release`` — the pipeline's idempotency record and the transport's
  ``EXACTLY_ONCE`` inbox record.

They all commit together when the unit of work ends without error, or none of them does: a crash
between any two writes leaves nothing, and the redelivery runs the handler again on a clean slate;
once committed, the "done" record makes a redelivery a duplicate that is acknowledged unhandled.

Three ways in:

* ``App(..., unit_of_work=uow)`` wraps every command and query handler in one (a pipeline behavior
  placed outside the idempotency behavior, see :meth:`PostgresUnitOfWork.behavior`), and lets the
  app's PostgreSQL inbox run each ``EXACTLY_ONCE`` delivery in one (see :mod:`catga._delivery`);
* ``async with uow() as conn:`` in your own code — ``conn`` is the transaction's connection, for your
  own SQL (``conn.execute("UPDATE accounts ...")``): the state change commits with the rest;
* inside a handler, :func:`current_connection` returns the connection of the running unit of work.

A unit of work entered while another one on the same pool is running joins it (no nested transaction,
no savepoint). The transaction commits when the block ends, when a handler's
:class:`~catga.result.Result` is a success (the behavior); it rolls back on an exception, a failed
Result or a cancellation.

Keep units of work short: an event store append holds the store's head row until the commit (see
:mod:`catga.postgres.event_store`), and each one holds a pool connection while it runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import HandlerInfo
from catga.pipeline.base import Behavior, Next
from catga.postgres._base import DEFAULT_TIMEOUT
from catga.postgres._errors import PgErrors
from catga.postgres._tx import Tx, current, joined_connection
from catga.result import Result

__all__ = ("PostgresUnitOfWork", "UnitOfWorkBehavior", "current_connection", "joined_connection")

_log = logging.getLogger("catga.postgres.unit_of_work")


def current_connection() -> Any:
    """The ``asyncpg`` connection of the unit of work running in this task (for your own SQL).

    Raises:
        ConfigurationError: no unit of work is running here (wrap the code in ``async with uow():``,
            or give the app ``unit_of_work=``).
    """
    tx = current.get()
    if tx is None:
        raise ConfigurationError(
            "no PostgreSQL unit of work is running in this task: wrap the code in `async with uow():` "
            "or pass App(unit_of_work=PostgresUnitOfWork(pool)) so handlers run in one"
        )
    return tx.conn


class PostgresUnitOfWork:
    """Runs a block, a handler or a delivery in one transaction that catga's stores on ``pool`` join.

    Args:
        pool: the ``asyncpg`` pool the stores that should join use (the same object).
        timeout: seconds to wait for a pool connection, for ``BEGIN`` and for ``COMMIT``.
        isolation: the transaction's isolation level (``"read_committed"``, the default, or
            ``"repeatable_read"`` / ``"serializable"``; see asyncpg's ``transaction()``). Event store
            appends want the default: under the others, two units of work that append make one of
            them fail with a serialization error (both move the store's head row).

    Raises:
        ConfigurationError: a bad timeout or isolation level.

    Example:
        >>> uow = PostgresUnitOfWork(pool)  # doctest: +SKIP
        >>> async with uow() as conn:  # doctest: +SKIP
        ...     await conn.execute("UPDATE stock SET n = n - 1 WHERE sku = $1", sku)
        ...     await repository.save(order)        # same transaction
    """

    def __init__(
        self, pool: Any, *, timeout: float | None = DEFAULT_TIMEOUT, isolation: str = "read_committed"
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        if isolation not in ("read_committed", "repeatable_read", "serializable"):
            raise ConfigurationError(
                f"isolation must be 'read_committed', 'repeatable_read' or 'serializable', got {isolation!r}"
            )
        self.pool = pool
        self.timeout = timeout
        self.isolation = isolation
        self._begin = PgErrors("unit of work begin", timeout)
        self._commit = PgErrors("unit of work commit", timeout)

    @property
    def active(self) -> bool:
        """True inside a unit of work on this pool (in this task)."""
        return joined_connection(self.pool) is not None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Any]:
        """``async with uow() as conn``: a transaction the stores on the pool join; commit at the end.

        Joins the unit of work already running on this pool, if any (the outer one commits).

        Raises:
            BackendUnavailableError, BackendTimeoutError, BackendError: no connection, or ``BEGIN``
                or ``COMMIT`` failed (after a failed commit nothing was written).
        """
        outer = joined_connection(self.pool)
        if outer is not None:
            yield outer
            return
        with self._begin:
            acquired = self.pool.acquire(timeout=self.timeout)  # asyncpg's Pool or a catga PgPool
            conn = await acquired.__aenter__()
        try:
            tx = conn.transaction(isolation=self.isolation)
            with self._begin:
                await tx.start()
            state = Tx(self.pool, conn)
            token = current.set(state)
            try:
                try:
                    yield conn
                finally:
                    current.reset(token)
            except BaseException:
                await self._rollback(tx)
                raise
            with self._commit:
                await tx.commit()
        finally:
            await acquired.__aexit__(None, None, None)
        for fn in state.after_commit:  # e.g. wake the outbox relay: the rows are visible now
            try:
                fn()
            except Exception:
                _log.exception("after-commit callback %r failed", fn)

    async def _rollback(self, tx: Any) -> None:
        try:
            await tx.rollback()
        except Exception as exc:  # the connection is gone: the server rolled back itself
            _log.debug("rollback failed (%r); the server drops the transaction with the connection", exc)

    def behavior(self) -> UnitOfWorkBehavior:
        """The pipeline behavior running each command and query handler in a unit of work.

        Place it outside (before) :class:`~catga.pipeline.IdempotencyBehavior` so the idempotency
        record commits with the handler's writes, and inside :class:`~catga.pipeline.RetryBehavior`
        if you want retries (each attempt is then a fresh transaction)::

            logging → validation → retry → unit of work → idempotency → handler

        ``App(unit_of_work=uow)`` builds that pipeline for you.
        """
        return UnitOfWorkBehavior(self)

    def __repr__(self) -> str:
        return f"PostgresUnitOfWork(isolation={self.isolation!r})"


class UnitOfWorkBehavior(Behavior):
    """Runs a handler in a :class:`PostgresUnitOfWork`: commit on a successful Result, else roll back.

    Events are not wrapped on their own: an event published by a handler runs in that handler's unit
    of work, and an event arriving from the transport runs in the delivery's (when the inbox is a
    PostgreSQL one on the same pool), so its handlers commit with the inbox record.

    Args:
        unit_of_work: the unit of work.
        events: also wrap events published outside any unit of work (default False).
    """

    def __init__(self, unit_of_work: PostgresUnitOfWork, *, events: bool = False) -> None:
        self.unit_of_work = unit_of_work
        self.events = events

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the unit-of-work layer for one message type."""
        if info.is_event and not self.events:
            return call_next
        uow = self.unit_of_work

        async def in_unit_of_work(message: Any, ctx: Context) -> Result[Any]:
            if uow.active:
                return await call_next(message, ctx)
            try:
                async with uow():
                    result = await call_next(message, ctx)
                    if not result.ok:
                        raise _RolledBack(result)
            except _RolledBack as rolled_back:
                return rolled_back.result
            return result

        return in_unit_of_work


class _RolledBack(Exception):
    """Raised inside the unit of work to roll it back when the handler's Result is a failure."""

    def __init__(self, result: Result[Any]) -> None:
        super().__init__("the handler's Result is a failure")
        self.result = result
