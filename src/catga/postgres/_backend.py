"""What a ``postgresql://`` / ``postgres://`` URL builds (registered in :mod:`catga.backends`).

The idempotency store, the outbox and the schedule store; each opens its own pool. The worker
id lease lock runs on the pool of the store the URL opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from catga.errors import ConfigurationError
from catga.postgres import PostgresIdempotencyStore, PostgresLock, PostgresOutboxStore, PostgresScheduleStore

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

ROLES = frozenset({"idempotency_store", "outbox", "scheduler"})
LOCK_RANK = 1  # on a store's pool: only when no NATS or Redis URL offers a lock


async def idempotency_store(b: Backends, spec: BackendUrl) -> PostgresIdempotencyStore:
    """The idempotency store (table ``catga_idempotency``)."""
    return await PostgresIdempotencyStore.connect(spec.address, timeout=b.timeout)


async def outbox(b: Backends, spec: BackendUrl) -> PostgresOutboxStore:
    """The outbox (table ``catga_outbox``)."""
    return await PostgresOutboxStore.connect(spec.address, timeout=b.timeout)


async def scheduler(b: Backends, spec: BackendUrl) -> PostgresScheduleStore:
    """The schedule store (table ``catga_schedules``)."""
    return await PostgresScheduleStore.connect(spec.address, timeout=b.timeout)


async def worker_id_lock(b: Backends, spec: BackendUrl, opened: Any) -> tuple[str, PostgresLock]:
    """A lock on the pool of the store ``spec`` opened (the store closes the pool), table set up now.

    Raises:
        ConfigurationError: PostgreSQL refused to create the ``catga_locks`` table.
    """
    lock = PostgresLock(opened.pool, timeout=b.timeout)
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
