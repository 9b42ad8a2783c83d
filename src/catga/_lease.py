"""What every backend's lock lease shares: auto-renewal, the ``lost`` flag, ``async with``.

A backend's lease (:class:`~catga.memory.MemoryLease`, ``NatsLease``, ``RedisLease``,
``PostgresLease``) implements :meth:`LeaseBase.release` and :meth:`LeaseBase.extend` against its
server; this base runs the renewal task of ``auto_renew=True`` (an extension every ``ttl / 3``, a
quicker retry after a backend error, ``lost = True`` and a WARNING once the key turned out to be
someone else's) and releases on leaving an ``async with`` block without hiding the block's own error.

:func:`observed_acquire` decorates each backend's ``acquire``: with :mod:`catga.otel` installed, every
acquisition is a span and its wait a histogram (one check of the probe slot when not).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import catga._observe as _observe
from catga.errors import BackendError, LockNotOwnedError

__all__ = ("LeaseBase", "observed_acquire")

P = ParamSpec("P")
L = TypeVar("L")


def observed_acquire(acquire: Callable[P, Awaitable[L]]) -> Callable[P, Awaitable[L]]:
    """Report a lock's ``acquire(self, key, *, ttl, wait, auto_renew)`` to the installed probe, if any.

    The probe's ``lock`` scope ends ``acquired``, or with the error (``LockNotAcquiredError`` when the key
    stayed taken for ``wait`` seconds). Without a probe the wrapper returns ``acquire``'s own coroutine:
    no extra coroutine per call.
    """

    async def observed(probe: _observe.Probe, args: Any, kwargs: Any) -> L:
        key = args[1] if len(args) > 1 else kwargs.get("key", "")
        with probe.lock(_observe.system_of(args[0]), str(key), float(kwargs.get("wait", 0.0))) as scope:
            lease = await acquire(*args, **kwargs)
            scope.outcome("acquired")
            return lease

    @functools.wraps(acquire)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Awaitable[L]:
        probe = _observe.probe
        if probe is None:
            return acquire(*args, **kwargs)
        return observed(probe, args, kwargs)

    return wrapper


logger = logging.getLogger("catga.lock")


class LeaseBase:
    """Base of the backends' leases (see :class:`~catga.protocols.Lease`).

    Subclasses set ``key``, ``token``, ``fencing_token``, ``ttl`` and call ``_init_lease(renewals)``
    with the set in which their lock keeps its renewal tasks (so that ``aclose()`` can cancel them).

    Attributes:
        lost: True once an automatic renewal found the key expired or held by another holder.
    """

    __slots__ = ("_released", "_renewal", "_renewals", "lost")

    key: str
    token: str
    fencing_token: int
    ttl: float
    #: Wait for a cancelled renewal to finish when stopping it (a renewal whose write must not be
    #: abandoned half-way, e.g. NATS's revision-checked write).
    _await_renewal_on_stop = False

    def _init_lease(self, renewals: set[asyncio.Task[None]]) -> None:
        self.lost = False
        self._released = False
        self._renewal: asyncio.Task[None] | None = None
        self._renewals = renewals

    @property
    def released(self) -> bool:
        """True once :meth:`release` succeeded."""
        return self._released

    async def release(self) -> None:
        """Release the lock; raises :class:`~catga.errors.LockNotOwnedError` if no longer the holder."""
        raise NotImplementedError

    async def extend(self, ttl: float) -> None:
        """Reset the ttl; raises :class:`~catga.errors.LockNotOwnedError` if not the holder."""
        raise NotImplementedError

    # -- auto-renewal -------------------------------------------------------------------------------
    def _start_renewal(self) -> None:
        task = asyncio.get_running_loop().create_task(
            self._renew_forever(), name=f"catga-lock-renew:{self.key}"
        )
        self._renewal = task
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _stop_renewal(self) -> None:
        task, self._renewal = self._renewal, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            if self._await_renewal_on_stop:
                await asyncio.gather(task, return_exceptions=True)

    async def _renew_once(self) -> None:
        await self.extend(self.ttl)

    async def _renew_forever(self) -> None:
        while True:
            interval = self.ttl / 3
            await asyncio.sleep(interval)
            try:
                await self._renew_once()
            except LockNotOwnedError:
                self.lost = True
                logger.warning(
                    "lock %r lost (fencing token %d): the lease expired or was taken over before renewal",
                    self.key,
                    self.fencing_token,
                )
                return
            except BackendError as exc:  # transient: try again sooner, until the lease would expire
                logger.warning("lock %r renewal failed (%s); retrying", self.key, exc)
                await asyncio.sleep(min(interval, 0.5))

    # -- async with -----------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._released:
            await self._stop_renewal()
            return
        if exc is None:
            await self.release()
            return
        try:  # the body failed: release, but never hide the body's error
            await self.release()
        except LockNotOwnedError:
            logger.warning("lock %r was no longer held when its block raised %r", self.key, exc)
