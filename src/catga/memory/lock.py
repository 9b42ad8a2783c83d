"""In-memory lock: the reference implementation of :class:`~catga.protocols.DistributedLock`.

One :class:`MemoryLock` plays the role of the lock server: it holds, per key, the current holder's
random token, its expiry (monotonic clock) and a fencing counter that only ever grows. A waiting
``acquire`` sleeps on an ``asyncio`` future that a release wakes (or until the holder's expiry or the
wait deadline, whichever comes first), so waiting costs no polling.

Thread-safety: every method is thread-safe; several event loops in several threads may share one
``MemoryLock`` (wake-ups cross loops with ``call_soon_threadsafe``). A :class:`MemoryLease` belongs to
its holder, never to a thread or a task: whoever holds the object may release it, nobody else can.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

from catga._lease import LeaseBase, observed_acquire
from catga.errors import ConfigurationError, LockNotAcquiredError, LockNotOwnedError
from catga.memory._wakeup import Waiter, notify
from catga.protocols import validate_identifier

__all__ = ("MemoryLease", "MemoryLock")


class _KeyState:
    __slots__ = ("expires", "fencing", "token", "waiters")

    def __init__(self) -> None:
        self.token: str | None = None
        self.expires = 0.0
        self.fencing = 0
        self.waiters: list[Waiter] = []


class MemoryLease(LeaseBase):
    """A held :class:`MemoryLock` key. Use ``async with lease:`` to release on exit.

    Attributes:
        key: the lock key.
        token: this holder's random token.
        fencing_token: strictly increasing per key across acquisitions.
        ttl: the ttl the lease was acquired (or last extended) with.
        lost: True when auto-renewal found the lease expired or taken.
    """

    __slots__ = ("_lock", "fencing_token", "key", "token", "ttl")

    def __init__(self, lock: MemoryLock, key: str, token: str, fencing_token: int, ttl: float) -> None:
        self._lock = lock
        self.key = key
        self.token = token
        self.fencing_token = fencing_token
        self.ttl = ttl
        self._init_lease(lock._renewers)

    async def release(self) -> None:
        """Release the lock.

        Raises:
            LockNotOwnedError: the lease expired or was already released.
        """
        await self._stop_renewal()
        self._lock._release(self)
        self._released = True

    async def extend(self, ttl: float) -> None:
        """Make the lease expire ``ttl`` seconds from now.

        Raises:
            LockNotOwnedError: the lease expired or was released.
            ConfigurationError: ``ttl`` is not positive.
        """
        self._lock._extend(self, ttl)
        self.ttl = ttl

    @property
    def held(self) -> bool:
        """Whether this lease still holds its key (not released, not expired)."""
        return self._lock._holds(self)

    def __repr__(self) -> str:
        return f"MemoryLease(key={self.key!r}, fencing_token={self.fencing_token})"


class MemoryLock:
    """Named locks with ttl, wait, fencing tokens and auto-renewal, in process memory.

    Example:
        >>> lock = MemoryLock()
        >>> async with await lock.acquire("order-1", ttl=10, wait=2) as lease:  # doctest: +SKIP
        ...     await ledger.write(key, entry, fencing_token=lease.fencing_token)  # see docs/protocols.md
    """

    __slots__ = ("_keys", "_mutex", "_renewers")

    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}
        self._mutex = threading.Lock()
        self._renewers: set[asyncio.Task[None]] = set()

    @observed_acquire
    async def acquire(
        self, key: str, *, ttl: float = 30.0, wait: float = 0.0, auto_renew: bool = False
    ) -> MemoryLease:
        """Take ``key`` for ``ttl`` seconds, waiting up to ``wait`` seconds for it to be free.

        Args:
            key: lock key (:func:`~catga.protocols.validate_identifier`, kind ``"lock key"``).
            ttl: seconds until the lease expires unless extended.
            wait: seconds to keep trying; 0 tries once.
            auto_renew: extend the lease every ``ttl / 3`` seconds until released.

        Raises:
            LockNotAcquiredError: the key stayed taken for ``wait`` seconds.
            InvalidIdentifierError: the key is malformed.
            ConfigurationError: ``ttl`` is not positive or ``wait`` is negative.
        """
        validate_identifier(key, "lock key")
        if not ttl > 0:
            raise ConfigurationError(f"lock ttl must be > 0 seconds, got {ttl!r}")
        if not wait >= 0:
            raise ConfigurationError(f"lock wait must be >= 0 seconds, got {wait!r}")
        deadline = time.monotonic() + wait
        loop = asyncio.get_running_loop()
        while True:
            with self._mutex:
                state = self._keys.get(key)
                if state is None:
                    state = self._keys[key] = _KeyState()
                now = time.monotonic()
                if state.token is None or state.expires <= now:
                    token = secrets.token_hex(16)
                    state.token = token
                    state.expires = now + ttl
                    state.fencing += 1
                    lease = MemoryLease(self, key, token, state.fencing, ttl)
                    break
                remaining = deadline - now
                if remaining <= 0:
                    raise LockNotAcquiredError(key, wait)
                fut: asyncio.Future[None] = loop.create_future()
                waiter: Waiter = (loop, fut)
                state.waiters.append(waiter)
                delay = min(remaining, state.expires - now)
            try:
                async with asyncio.timeout(delay):
                    await fut
            except TimeoutError:
                pass
            finally:
                if fut.cancelled() or not fut.done():  # not woken: take the waiter back out
                    with self._mutex:
                        if waiter in state.waiters:
                            state.waiters.remove(waiter)
        if auto_renew:
            lease._start_renewal()
        return lease

    def _holds(self, lease: MemoryLease) -> bool:
        state = self._keys.get(lease.key)
        return state is not None and state.token == lease.token and state.expires > time.monotonic()

    def _release(self, lease: MemoryLease) -> None:
        with self._mutex:
            state = self._keys.get(lease.key)
            if state is None or state.token != lease.token or state.expires <= time.monotonic():
                raise LockNotOwnedError(lease.key)
            state.token = None
            waiters, state.waiters = state.waiters, []
        notify(waiters)

    def _extend(self, lease: MemoryLease, ttl: float) -> None:
        if not ttl > 0:
            raise ConfigurationError(f"lock ttl must be > 0 seconds, got {ttl!r}")
        with self._mutex:
            state = self._keys.get(lease.key)
            now = time.monotonic()
            if state is None or state.token != lease.token or state.expires <= now:
                raise LockNotOwnedError(lease.key)
            state.expires = now + ttl

    async def aclose(self) -> None:
        """Stop every auto-renewal task started by this lock. Idempotent; held leases simply expire."""
        tasks = list(self._renewers)
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        mine = [t for t in tasks if t.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    async def __aenter__(self) -> MemoryLock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
