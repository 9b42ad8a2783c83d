"""The process's Snowflake worker id, leased through an app's backend (SPEC §10).

Every id catga draws in a process comes from one generator (:func:`catga.ids.default_generator`), so a
process needs **one** worker id, however many :class:`~catga.App` objects it runs. Two processes with
the same worker id draw the same ids, and then a broker's de-duplication (NATS ``Nats-Msg-Id``) or an
inbox silently drops the second process's messages. So an app with a NATS, Redis or PostgreSQL backend
leases the process's worker id through that backend when it starts
(:func:`catga.worker_lease.lease_worker_id`, renewed every ``ttl / 3``) and the generator adopts it:

* the first app of the process that starts leases the id; the others join that lease;
* when the app whose backend holds the lease stops while others still run, the id is leased again
  through the next app's backend (adopted before the old lease is released; ids stay increasing);
* when the last app stops, the lease is released and the generator goes back to its process-local id
  (``CATGA_WORKER_ID``, else 0) — ids drawn then never reach a broker through an app;
* a lease that is lost (another process took the key after renewals failed) makes the generator
  raise :class:`~catga.worker_lease.WorkerIdLostError` instead of drawing an id that may collide.

``App(worker_id=N)`` or ``CATGA_WORKER_ID`` set in the environment skip the lease (the deployment
hands out ids); ``App(worker_id=lock)`` leases through a :class:`~catga.protocols.DistributedLock`
of your choice (for apps built from objects rather than URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field

from catga.ids import WORKER_ID_ENV, _worker_id_from_env, default_generator
from catga.protocols import DistributedLock
from catga.worker_lease import WorkerIdLease, lease_worker_id

__all__ = ("DEFAULT_NAMESPACE", "DEFAULT_TTL", "ProcessWorkerId", "env_worker_id_set", "process_worker_id")

logger = logging.getLogger("catga.worker_lease")

#: Lock namespace of the app-level worker ids: every catga app on a backend shares one id space.
DEFAULT_NAMESPACE = "catga"
#: Seconds a crashed process keeps its worker id before another may take it.
DEFAULT_TTL = 30.0


def env_worker_id_set() -> bool:
    """True when ``CATGA_WORKER_ID`` is set (the deployment hands out worker ids: no lease)."""
    return bool(os.environ.get(WORKER_ID_ENV, "").strip())


@dataclass(eq=False)
class _Member:
    """One running app's stake in the process's worker id."""

    name: str
    lock: DistributedLock
    namespace: str
    ttl: float


@dataclass(eq=False)
class ProcessWorkerId:
    """The worker id lease shared by the apps of this process (use :func:`process_worker_id`)."""

    members: list[_Member] = field(default_factory=list)
    lease: WorkerIdLease | None = None
    owner: _Member | None = None
    _mutex: asyncio.Lock | None = None
    _mutex_loop: asyncio.AbstractEventLoop | None = None
    _watcher: asyncio.Task[None] | None = None

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._mutex is None or self._mutex_loop is not loop:
            self._mutex, self._mutex_loop = asyncio.Lock(), loop
        return self._mutex

    @property
    def worker_id(self) -> int | None:
        """The leased worker id, or None when no app holds a lease."""
        return None if self.lease is None else self.lease.worker_id

    async def join(
        self,
        name: str,
        lock: DistributedLock,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float = DEFAULT_TTL,
    ) -> _Member:
        """Register a starting app; lease the process's worker id through ``lock`` if none is held.

        Raises:
            NoFreeWorkerIdError: every worker id of the namespace is leased.
            BackendUnavailableError, BackendTimeoutError: the lock's backend failed.
        """
        member = _Member(name, lock, namespace, ttl)
        async with self._lock():
            if self.lease is None or not self.lease.valid:
                await self._lease_through(member)
            self.members.append(member)
        return member

    async def leave(self, member: _Member) -> None:
        """Unregister a stopping app; hand the lease over or release it as described above."""
        async with self._lock():
            with contextlib.suppress(ValueError):
                self.members.remove(member)
            if self.owner is not member:
                return
            old = self.lease
            self.lease = self.owner = None
            for other in self.members:
                try:
                    await self._lease_through(other)
                    break
                except Exception as exc:
                    logger.warning("re-leasing the worker id through app %r failed: %r", other.name, exc)
            if old is not None:
                await _close_quietly(old)
            if self.lease is None:
                # No app left (or none could lease): back to the process-local id, unguarded.
                default_generator()._adopt(_worker_id_from_env(), None)
                if self.members:
                    logger.error(
                        "apps %s run without a leased worker id: their ids may collide with another "
                        "process's; set CATGA_WORKER_ID or restart them",
                        [m.name for m in self.members],
                    )

    async def _lease_through(self, member: _Member) -> None:
        lease = await lease_worker_id(
            member.lock, namespace=member.namespace, ttl=member.ttl, generator=default_generator()
        )
        old, self.lease, self.owner = self.lease, lease, member
        watcher, self._watcher = self._watcher, asyncio.ensure_future(self._watch(lease))
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        logger.info(
            "worker id %s leased for this process through app %r (namespace %r)",
            lease.worker_id,
            member.name,
            member.namespace,
        )
        if old is not None:
            await _close_quietly(old)

    async def _watch(self, lease: WorkerIdLease) -> None:
        """Lease a new worker id when ``lease`` is lost (a renewal found its key taken, e.g. after the
        lock's server restarted empty and another process took the id): meanwhile the generator
        refuses ids (never one that may collide); then it draws again under the new id."""
        await asyncio.wait([lease.renewal])  # ends when the lease is lost (or closed: cancelled)
        delay = 0.1
        while self.lease is lease and lease.lost_reason is not None:
            async with self._lock():
                if self.lease is not lease:
                    return
                owner = self.owner
                candidates = [m for m in (owner, *self.members) if m is not None]
                for member in dict.fromkeys(candidates):
                    try:
                        await self._lease_through(member)
                    except Exception as exc:
                        logger.warning("leasing a new worker id through %r failed: %r", member.name, exc)
                        continue
                    logger.warning(
                        "worker id %s was lost (%s); this process now uses worker id %s",
                        lease.worker_id,
                        lease.lost_reason,
                        self.worker_id,
                    )
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _close_quietly(lease: WorkerIdLease) -> None:
    try:
        await lease.aclose()
    except Exception as exc:  # the backend may be gone; the key then expires after its ttl
        logger.warning("releasing worker id %s failed: %r (it expires by itself)", lease.worker_id, exc)


_PROCESS = ProcessWorkerId()


def process_worker_id() -> ProcessWorkerId:
    """The worker id lease of this process (shared by every app)."""
    return _PROCESS
