"""Lease a unique Snowflake worker id through a :class:`~catga.protocols.DistributedLock`.

Two processes that generate ids with the same worker id can produce the same id. A fixed
``CATGA_WORKER_ID`` per process works when a deployment tool hands them out; otherwise lease one::

    lock = RedisLock(client)                       # or NatsLock(conn), MemoryLock()
    lease = await lease_worker_id(lock, namespace="orders")
    gen = lease.generator                           # ids with lease.worker_id, guarded by the lease
    ...
    await lease.aclose()                            # stop renewing, free the id

Every worker id ``0 .. layout.max_worker_id`` is one lock key (``worker-id.<namespace>.<id>``); a lease
holds one key, starting the search at a random id so that processes starting together rarely collide.
The lease renews its key every ``ttl / 3`` seconds in a background task.

**Correct under failure.** The guarded generator refuses ids (raises :class:`WorkerIdLostError`)

* at once when a renewal finds the key held by someone else (the lease expired and was taken), and
* when renewals have failed (backend unreachable) until ``ttl - margin`` seconds after the start of the
  last successful acquisition or renewal (``margin`` = ``min(1 s, ttl / 10)``), measured on the
  monotonic clock: after that another process may already hold the id.

The check runs whenever the generator opens a new millisecond, and a loss found by a renewal (or
:meth:`WorkerIdLease.aclose`) also ends the current millisecond's window at once; only a lease that
runs out between renewals can let the rest of one millisecond's ids through. A renewal that succeeds
again (the backend came back and the key was still ours) makes the generator usable again. Pass
``generator=default_generator()`` to make every id catga draws in this process (message ids,
transport metadata) use the leased worker id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from catga.errors import CatgaError, ConfigurationError, ErrorCode, LockNotAcquiredError, LockNotOwnedError
from catga.ids import SnowflakeIdGenerator, SnowflakeLayout
from catga.protocols import DistributedLock, Lease, validate_identifier

__all__ = ("NoFreeWorkerIdError", "WorkerIdLease", "WorkerIdLostError", "lease_worker_id")

logger = logging.getLogger("catga.worker_lease")


class NoFreeWorkerIdError(CatgaError):
    """Every worker id of the layout is leased by another process."""

    def __init__(self, namespace: str, count: int) -> None:
        super().__init__(
            f"all {count} worker ids of namespace {namespace!r} are leased; stop a process, use a "
            "layout with more worker bits, or another namespace"
        )
        self.namespace = namespace
        self.count = count


class WorkerIdLostError(CatgaError):
    """The generator's worker id lease was lost or could not be renewed in time: no more ids.

    Code ``unavailable``: a retry helps once an app's process has leased a new worker id (it does so
    by itself, see :mod:`catga._worker_ids`).
    """

    code = ErrorCode.UNAVAILABLE

    def __init__(self, worker_id: int, reason: str) -> None:
        super().__init__(f"worker id {worker_id} is no longer leased ({reason}); refusing to generate ids")
        self.worker_id = worker_id
        self.reason = reason


class WorkerIdLease:
    """A leased worker id, its guarded generator and the task that renews the lease.

    Attributes:
        worker_id: the leased id.
        namespace: the namespace it was leased in.
        generator: the generator using it; it raises :class:`WorkerIdLostError` once the lease can no
            longer be vouched for (see the module docstring).

    Use :func:`lease_worker_id` to create one; close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        lease: Lease,
        worker_id: int,
        namespace: str,
        generator: SnowflakeIdGenerator,
        ttl: float,
        started: float,
    ) -> None:
        self.worker_id = worker_id
        self.namespace = namespace
        self.generator = generator
        self._lease = lease
        self._ttl = ttl
        self._margin = min(1.0, ttl / 10)
        self._valid_until = started + ttl - self._margin
        self._lost: str | None = None
        self._closed = False
        generator._adopt(worker_id, self._check)
        self._renewer = asyncio.create_task(self._renew(), name=f"catga-worker-id-{worker_id}")

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost (a renewal found the key taken), or None."""
        return self._lost

    @property
    def renewal(self) -> asyncio.Task[None]:
        """The renewal task: it returns when the lease is lost and is cancelled by :meth:`aclose`."""
        return self._renewer

    @property
    def valid(self) -> bool:
        """Whether the generator may still draw ids."""
        return self._lost is None and not self._closed and time.monotonic() < self._valid_until

    def _check(self) -> None:
        # Runs under the generator's lock before each new millisecond window.
        if self._lost is not None:
            raise WorkerIdLostError(self.worker_id, self._lost)
        if self._closed:
            raise WorkerIdLostError(self.worker_id, "the lease was closed")
        if time.monotonic() >= self._valid_until:
            raise WorkerIdLostError(self.worker_id, "renewals failed until the lease may have expired")

    async def _renew(self) -> None:
        interval = self._ttl / 3
        retry = min(interval, max(self._margin / 2, 0.05))
        delay = interval
        while True:
            await asyncio.sleep(delay)
            started = time.monotonic()
            try:
                await self._lease.extend(self._ttl)
            except LockNotOwnedError:
                self._lost = "the lock key is held by another owner"
                self.generator._invalidate()  # not even the rest of the current millisecond
                logger.error("worker id %s of %r was lost: %s", self.worker_id, self.namespace, self._lost)
                return
            except Exception as exc:  # backend trouble: keep trying while the lease may still hold
                logger.warning("renewing worker id %s failed: %r; retrying", self.worker_id, exc)
                delay = retry
                continue
            self._valid_until = started + self._ttl - self._margin
            delay = interval

    async def aclose(self) -> None:
        """Stop renewing and release the id; the generator refuses ids from now on."""
        if self._closed:
            return
        self._closed = True
        self.generator._invalidate()
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        if self._lost is None:
            with contextlib.suppress(LockNotOwnedError):
                await self._lease.release()

    async def __aenter__(self) -> WorkerIdLease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "valid" if self.valid else "invalid"
        return f"WorkerIdLease(worker_id={self.worker_id}, namespace={self.namespace!r}, {state})"


async def lease_worker_id(
    lock: DistributedLock,
    *,
    namespace: str = "default",
    ttl: float = 30.0,
    layout: SnowflakeLayout | None = None,
    generator: SnowflakeIdGenerator | None = None,
) -> WorkerIdLease:
    """Lease a worker id no other live lease in ``namespace`` holds, and a generator guarded by it.

    Args:
        lock: the distributed lock to lease through (its backend is what the processes share).
        namespace: processes that must not share worker ids use the same namespace (one per id space,
            e.g. one per application).
        ttl: seconds the lease outlives a process that stops renewing it (crash, partition).
        layout: the id layout of the new generator (ignored when ``generator`` is given).
        generator: adopt this generator instead of creating one; pass
            :func:`~catga.ids.default_generator` to make the process-wide ids use the leased id.

    Raises:
        NoFreeWorkerIdError: every worker id is leased.
        InvalidIdentifierError: the namespace is not a valid identifier.
        ConfigurationError: ``ttl`` is not positive.
    """
    validate_identifier(namespace, "worker id namespace")
    if not ttl > 0:
        raise ConfigurationError(f"worker id lease ttl must be > 0 seconds, got {ttl!r}")
    chosen_layout = generator.layout if generator is not None else (layout or SnowflakeLayout())
    count = chosen_layout.max_worker_id + 1
    first = random.randrange(count)
    for k in range(count):
        worker_id = (first + k) % count
        started = time.monotonic()
        try:
            lease = await lock.acquire(f"worker-id.{namespace}.{worker_id}", ttl=ttl, wait=0)
        except LockNotAcquiredError:
            continue
        gen = generator if generator is not None else SnowflakeIdGenerator(worker_id, layout=chosen_layout)
        return WorkerIdLease(lease, worker_id, namespace, gen, ttl, started)
    raise NoFreeWorkerIdError(namespace, count)
