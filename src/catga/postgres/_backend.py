"""What a ``postgresql://`` / ``postgres://`` URL builds (registered in :mod:`catga.backends`).

The event store, the idempotency store, the outbox and the schedule store, on one
:class:`~catga.postgres.PgPool` per URL (created at ``App.start()``, closed at ``App.aclose()``); the
worker id lease lock runs on that pool too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from catga.errors import ConfigurationError
from catga.postgres import (
    PgPool,
    PostgresEventStore,
    PostgresIdempotencyStore,
    PostgresLock,
    PostgresOutboxStore,
    PostgresScheduleStore,
    PostgresWorkflowStore,
)

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

LOCK_RANK = 1  # on a store's pool: only when no NATS or Redis URL offers a lock


def pool(b: Backends, spec: BackendUrl) -> PgPool:
    """The app's pool for ``spec`` (made on first use, then shared)."""
    return b.shared(
        ("postgres", spec.address),
        f"PostgreSQL pool {spec}",
        lambda: PgPool(spec.address, timeout=b.timeout),
        PgPool.open,
    )


def store(b: Backends, spec: BackendUrl) -> PostgresEventStore:
    """The event store (tables ``catga_events``, ``catga_events_streams``, ``catga_events_head``)."""
    return PostgresEventStore(
        pool(b, spec), timeout=b.timeout, registry=b.registry, max_payload=spec.max_payload or b.max_payload
    )


def idempotency_store(b: Backends, spec: BackendUrl) -> PostgresIdempotencyStore:
    """The idempotency store (table ``catga_idempotency``, set up when the app starts)."""
    return PostgresIdempotencyStore(pool(b, spec), timeout=b.timeout)


def outbox(b: Backends, spec: BackendUrl) -> PostgresOutboxStore:
    """The outbox (table ``catga_outbox``, set up when the app starts)."""
    return PostgresOutboxStore(pool(b, spec), timeout=b.timeout)


def scheduler(b: Backends, spec: BackendUrl) -> PostgresScheduleStore:
    """The schedule store (table ``catga_schedules``, set up when the app starts)."""
    return PostgresScheduleStore(pool(b, spec), timeout=b.timeout)


def workflows(b: Backends, spec: BackendUrl) -> PostgresWorkflowStore:
    """The workflow store (tables ``catga_workflows`` and ``catga_workflows_history``, set up when
    the app starts)."""
    return PostgresWorkflowStore(pool(b, spec), timeout=b.timeout)


async def worker_id_lock(b: Backends, spec: BackendUrl) -> tuple[str, PostgresLock]:
    """A lock on the URL's pool, its table set up now.

    Raises:
        ConfigurationError: PostgreSQL refused to create the ``catga_locks`` table.
    """
    lock = PostgresLock(pool(b, spec), timeout=b.timeout)
    try:
        await lock.ensure_schema()
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc}. The app leases its Snowflake worker id through table {lock.table} of "
            f"{spec}: create it (CREATE TABLE {lock.table} (key text PRIMARY KEY, token text, "
            "fencing bigint NOT NULL, expires_at timestamptz)), or hand out worker ids yourself "
            "(CATGA_WORKER_ID, or App(worker_id=N))"
        ) from exc
    return f"PostgreSQL {spec}", lock
