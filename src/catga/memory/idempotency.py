"""In-memory idempotency store (and inbox).

Thread-safe and atomic without a lock on the hot path:

* claiming a key that is not there is one ``dict.setdefault`` — a single atomic step under the GIL
  (and a per-object critical section on free-threaded builds): of N concurrent claims exactly one
  inserts its entry and gets CLAIMED, for asyncio tasks and threads alike;
* completing is one atomic ``dict`` store;
* everything that reads, decides and then writes an *existing* entry (an expired or completed key,
  a release) holds the key's lock stripe (one of ``shards`` :class:`threading.Lock`); a sweep holds
  all of them. Those paths only replace or delete keys that exist, so they never race with the
  lock-free insert.

This layout was measured faster than one dict per shard (the shard lookup is two extra steps per
call) and than a lock held on every claim (figures in ``docs/benchmarks.md``, *Design figures*).

Expiry is checked on read: an expired claim or record is free. Memory is reclaimed by a sweep
amortised over writes: the store is swept (expired entries dropped) once it has grown by
``max(sweep_every, entries left by the last sweep)`` since then, at most once per ``sweep_interval``
seconds, and only when an entry may have expired (the earliest claim expiry is tracked); so each
write pays O(1) on average and a burst of writes that cannot have expired yet never rescans the
store. A sweep scans every entry while holding the locks (a few ms per 100k entries).
:meth:`MemoryIdempotencyStore.sweep` sweeps now. Completed records are ``gc=False`` msgspec Structs
and claims are floats: millions of records add nothing to garbage-collection passes.

Keys: strings as validated by :func:`~catga.protocols.validate_identifier`. A canonical decimal key
(a message id: ``"123"``, no leading zero) is stored as the int it spells, so ``claim("123")`` and
``claim_nowait(123)`` address the same record. Besides the async protocol methods, the store offers
synchronous ``claim_nowait`` / ``complete_nowait`` / ``release_nowait`` that also take such ints, and
:meth:`MemoryIdempotencyStore.sync_guard`, the claim/complete/release hooks the idempotency behavior
fuses into the handler call: claiming a new message id there is one frame and one ``setdefault``
(no coroutine, no ``str()``, no extra call into the store).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple, TypeVar

import msgspec

from catga.errors import ConfigurationError
from catga.protocols import Claim, ClaimStatus, validate_identifier

__all__ = ("GuardHooks", "MemoryIdempotencyStore", "MemoryInboxStore")

R = TypeVar("R")

_CLAIMED = ClaimStatus.CLAIMED
_COMPLETED = ClaimStatus.COMPLETED
_CLAIMED_RESULT = Claim(ClaimStatus.CLAIMED)
_IN_PROGRESS_RESULT = Claim(ClaimStatus.IN_PROGRESS)
Key = str | int


class _Done(msgspec.Struct, gc=False):
    """A completed record. ``gc=False``: millions of them cost the garbage collector nothing."""

    expiry: float
    result: bytes


# An entry is a float (an unfinished claim: its expiry, recognised by identity) or a _Done.
_Entry = float | _Done


class GuardHooks(NamedTuple):
    """Synchronous hooks around one handler call, keyed by ``ctx.message_id``; see
    :meth:`MemoryIdempotencyStore.sync_guard`."""

    enter: Callable[[Any, Any], Any]
    """``enter(message, ctx)``: None when the id was claimed (run the handler), else the answer."""
    leave: Callable[[Any, Any, Any], None]
    """``leave(message, ctx, result)``: store the result, or release the claim."""
    abort: Callable[[Any, Any], None]
    """``abort(message, ctx)``: release the claim (an exception or cancellation escaped)."""


_NOTHING = object()


def _expiry(entry: _Entry) -> float:
    return entry.expiry if isinstance(entry, _Done) else entry


def _normalize(key: Key) -> Key:
    if type(key) is int:
        return key if key >= 0 else validate_identifier(str(key), "idempotency key")
    if type(key) is str and key.isdigit() and key.isascii() and len(key) <= 200:
        return int(key) if key[0] != "0" or len(key) == 1 else key
    return validate_identifier(key, "idempotency key")


class MemoryIdempotencyStore:
    """Idempotency records in process memory. Thread-safe; survives nothing (use NATS/Redis for that).

    Args:
        shards: number of lock stripes for the paths that update existing keys (default 16).
        sweep_every: minimum new keys between two automatic sweeps (default 4096).
        sweep_interval: minimum seconds between two automatic sweeps (default 1.0).
        clock: returns seconds (monotonic); injectable for tests.

    Raises:
        ConfigurationError: ``shards`` or ``sweep_every`` < 1.
    """

    def __init__(
        self,
        *,
        shards: int = 16,
        sweep_every: int = 4096,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shards < 1:
            raise ConfigurationError(f"shards must be >= 1, got {shards}")
        if sweep_every < 1:
            raise ConfigurationError(f"sweep_every must be >= 1, got {sweep_every}")
        self._data: dict[Key, _Entry] = {}
        self._locks = tuple(threading.Lock() for _ in range(shards))
        self._sweep_every = sweep_every
        self._sweep_interval = sweep_interval
        self._sweep_at = sweep_every  # sweep when the store holds this many entries...
        self._next_sweep = 0.0  # ...the clock has passed this...
        self._earliest = math.inf  # ...and an entry may have expired (min claim expiry seen)
        # Claims are fresh float objects recognised by identity: a custom clock is coerced so an
        # int clock can never hand out a cached (shared) small int.
        self._clock: Callable[[], float] = clock if clock is time.monotonic else lambda: float(clock())

    # -- synchronous core -------------------------------------------------------------------------

    def claim_nowait(self, key: Key, lock_ttl: float = 30.0) -> Claim:
        """Synchronous :meth:`claim`: CLAIMED, IN_PROGRESS or COMPLETED (with the stored result).

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        if type(key) is not int or key < 0:
            key = _normalize(key)
        data = self._data
        mine = self._clock() + lock_ttl
        if data.setdefault(key, mine) is mine:  # inserted: the key was free
            if mine < self._earliest:
                self._earliest = mine
            if len(data) >= self._sweep_at:
                self._maybe_sweep()
            return _CLAIMED_RESULT
        return self._claim_existing(key, lock_ttl)

    def _inserted(self, expiry: float) -> None:
        # Bookkeeping after a lock-free insert, called only when one of these may apply.
        if expiry < self._earliest:
            self._earliest = expiry
        if len(self._data) >= self._sweep_at:
            self._maybe_sweep()

    def _claim_existing(self, key: Key, lock_ttl: float) -> Claim:
        data = self._data
        with self._locks[hash(key) % len(self._locks)]:
            while True:
                now = self._clock()
                entry = data.get(key)
                if entry is None:  # released or swept meanwhile: claim it like a new key
                    mine = now + lock_ttl
                    if data.setdefault(key, mine) is mine:
                        return _CLAIMED_RESULT
                    continue
                if _expiry(entry) <= now:  # an expired claim or record: free
                    data[key] = now + lock_ttl
                    return _CLAIMED_RESULT
                if type(entry) is _Done:
                    return Claim(ClaimStatus.COMPLETED, entry.result)
                return _IN_PROGRESS_RESULT

    def complete_nowait(self, key: Key, result: bytes = b"", ttl: float = 86400.0) -> None:
        """Synchronous :meth:`complete`."""
        if type(key) is not int or key < 0:
            key = _normalize(key)
        self._data[key] = _Done(self._clock() + ttl, result)

    def release_nowait(self, key: Key) -> None:
        """Synchronous :meth:`release`: drop an unfinished claim; a completed record is kept."""
        if type(key) is not int or key < 0:
            key = _normalize(key)
        with self._locks[hash(key) % len(self._locks)]:
            entry = self._data.get(key)
            if entry is not None and type(entry) is not _Done:
                self._drop(key, entry)

    def sync_guard(
        self,
        *,
        lock_ttl: float,
        ttl: float,
        replay: Callable[[bytes], R],
        busy: Callable[[Any], R],
        encode: Callable[[Any], bytes | None],
        known: tuple[object, bytes] | None = None,
    ) -> GuardHooks:
        """Claim/complete/release hooks for one handler, keyed by ``ctx.message_id``.

        Same records and semantics as :meth:`claim_nowait` / :meth:`complete_nowait` /
        :meth:`release_nowait`, written out in the hooks themselves: claiming a new id is one
        ``dict.setdefault`` in the hook's own frame. The idempotency behavior fuses the hooks into
        the mediator's handler call (a :class:`~catga.mediator.Guard`).

        Args:
            lock_ttl: seconds a claim blocks duplicates.
            ttl: seconds a completed result is kept.
            replay: turns a stored result into ``enter``'s answer for a completed id.
            busy: ``busy(ctx)`` is ``enter``'s answer for an id claimed by another delivery.
            encode: the bytes to store for a result, or None to release the claim instead.
            known: a ``(result, its bytes)`` pair stored without calling ``encode`` when ``leave``
                gets that very object (the shared success without a value).
        """
        data = self._data
        setdefault = data.setdefault
        clock = self._clock
        release = self.release_nowait
        known_result, known_bytes = known if known is not None else (_NOTHING, b"")

        def enter(message: Any, ctx: Any) -> R | None:
            key = ctx.message_id
            if type(key) is int and key >= 0:
                mine = clock() + lock_ttl
                if setdefault(key, mine) is mine:  # inserted: the key was free
                    if mine < self._earliest or len(data) >= self._sweep_at:
                        self._inserted(mine)
                    return None
                claim = self._claim_existing(key, lock_ttl)
            else:
                claim = self.claim_nowait(key, lock_ttl)
            status = claim.status
            if status == _CLAIMED:
                return None
            if status == _COMPLETED:
                return replay(claim.result or b"")
            return busy(ctx)

        def leave(message: Any, ctx: Any, result: Any) -> None:
            key = ctx.message_id
            if type(key) is not int or key < 0:
                key = _normalize(key)
            if result is known_result:
                data[key] = _Done(clock() + ttl, known_bytes)
                return
            payload = encode(result)
            if payload is None:
                release(key)
            else:
                data[key] = _Done(clock() + ttl, payload)

        def abort(message: Any, ctx: Any) -> None:
            release(ctx.message_id)

        return GuardHooks(enter, leave, abort)

    def _drop(self, key: Key, entry: _Entry) -> None:
        # Called with the key's lock held. A lock-free complete() may have replaced ``entry`` just
        # now: put that back (unless a new claim took the free key meanwhile).
        data = self._data
        popped = data.pop(key, None)
        if popped is not None and popped is not entry:
            data.setdefault(key, popped)

    @contextmanager
    def _all_locks(self) -> Iterator[None]:
        with ExitStack() as stack:
            for lock in self._locks:
                stack.enter_context(lock)
            yield

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if now >= self._next_sweep and now >= self._earliest:
            self.sweep()
        else:  # swept recently, or nothing can have expired yet: look again later
            size = len(self._data)
            self._sweep_at = size + max(self._sweep_every, size // 2)

    def sweep(self) -> int:
        """Drop every expired entry now; return how many were dropped."""
        with self._all_locks():
            data = self._data
            now = self._clock()
            try:
                dead = [(k, e) for k, e in data.items() if _expiry(e) <= now]
            except RuntimeError:  # another thread inserted meanwhile: scan a copy
                dead = [(k, e) for k, e in list(data.items()) if _expiry(e) <= now]
            for k, e in dead:
                self._drop(k, e)
            claims = [e for e in list(data.values()) if not isinstance(e, _Done)]
            self._earliest = min(claims, default=math.inf)
            live = len(data)
            self._sweep_at = live + max(self._sweep_every, live)  # amortised O(1) per write
            self._next_sweep = now + self._sweep_interval
            return len(dead)

    def __len__(self) -> int:
        """Entries held, expired ones not yet swept included."""
        return len(self._data)

    # -- IdempotencyStore protocol ----------------------------------------------------------------

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        """Claim ``key`` atomically. See :class:`~catga.protocols.IdempotencyStore`.

        Raises:
            InvalidIdentifierError: the key is malformed.
        """
        return self.claim_nowait(key, lock_ttl)

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        """Store ``result`` for ``key``; claims return it for ``ttl`` seconds."""
        self.complete_nowait(key, result, ttl)

    async def release(self, key: str) -> None:
        """Drop an unfinished claim of ``key``; a completed record is kept."""
        self.release_nowait(key)

    async def aclose(self) -> None:
        """Forget everything. Idempotent."""
        with self._all_locks():
            self._data.clear()

    async def __aenter__(self) -> MemoryIdempotencyStore:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore(entries={len(self)})"


MemoryInboxStore = MemoryIdempotencyStore
"""The inbox is the idempotency store keyed by message id (same class)."""
