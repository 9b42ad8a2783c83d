# Over 500 lines: the runner's loop, ownership, rebuild and stop act on the same state and are read
# together; the waiting helpers live in _waiting.py, the error policy in _policy.py.
"""Projections: read models built from the global event stream, with resumable checkpoints.

A :class:`Projection` declares handlers per event type with :func:`handles`. A :class:`ProjectionRunner`
feeds it every stored event in global position order: first it *catches up* with
:meth:`~catga.protocols.EventStore.read_all` in batches from the checkpoint + 1 (committing after each
batch, see :meth:`Projection.commit`), then it goes *live* with
:meth:`~catga.protocols.EventStore.subscribe_all` (committing after each event). Restarted with the same
name and checkpoint store, it continues after the last checkpoint.

Delivery to the projection is **at-least-once** unless the read model and the checkpoint commit together
(:meth:`Projection.commit` writing both in one transaction, e.g. with
:class:`~catga.postgres.PostgresCheckpointStore`): a crash between handling an event and saving the
checkpoint replays that event on restart. Otherwise write idempotent projections (upserts keyed by
stream id, or remember ``stored.position`` with the read model and ignore older positions).

**Errors** follow the runner's :class:`ErrorPolicy`: retry the handler with exponential backoff, then
either *stop* (the default: the error is logged with the event's stream, version and position, the
checkpoint stays at the last handled event, and :meth:`ProjectionRunner.run` re-raises it) or *park* the
event in a dead-letter queue and continue. Events are never skipped silently.

**One owner across replicas.** Given a ``lock`` (any :class:`~catga.protocols.DistributedLock`), runners
of the same name on several processes compete for the lease ``projection-<name>``: one owns the
projection and feeds it, the others stand by and take over when its lease expires (its process died).
Every checkpoint write carries the lease's fencing token and the checkpoint store refuses an older
token, so an owner that paused past its lease cannot overwrite the new owner's progress (and, with a
transactional read model, its model changes roll back with the refused write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from catga.errors import (
    BackendError,
    ConfigurationError,
    LockNotAcquiredError,
    LockNotOwnedError,
    OperationTimeoutError,
    StaleFencingTokenError,
)
from catga.eventsourcing._dispatch import Projection, SaveCheckpoint, handles
from catga.eventsourcing._policy import ErrorPolicy, parked_letter
from catga.eventsourcing._waiting import WaitingMixin
from catga.eventsourcing.checkpoints import CheckpointStore
from catga.protocols import (
    DeadLetterQueue,
    DistributedLock,
    EventStore,
    Lease,
    StoredEvent,
    validate_identifier,
)
from catga.raw import last_position

__all__ = ("ErrorPolicy", "Projection", "ProjectionRunner", "SaveCheckpoint", "handles")

T = TypeVar("T")
logger = logging.getLogger("catga.eventsourcing")


class _Interrupted(Exception):
    """stop() or rebuild() interrupted an idle wait (internal)."""


class _Deposed(Exception):
    """The lease was lost: another replica owns the projection now (internal)."""


class ProjectionRunner(WaitingMixin):
    """Feeds a projection from an event store: catch-up in batches, then live, with checkpoints.

    Args:
        store: any :class:`~catga.protocols.EventStore`.
        projection: the projection to feed.
        checkpoints: where the last handled position is saved.
        name: the checkpoint name (one per projection); a valid identifier.
        batch_size: events per ``read_all`` call while catching up.
        on_error: the :class:`ErrorPolicy` (default: stop at the first error, no retry).
        dead_letters: where ``ErrorPolicy(then="park")`` parks events (required for it).
        lock: run only while holding the lease ``projection-<name>`` of this lock (one owner across
            replicas, takeover on death, fenced checkpoint writes); None: no coordination.
        lease_ttl: seconds of that lease (renewed every third of it); a dead owner is replaced after
            at most this long.

    Attributes:
        position: global position of the last handled event (the checkpoint once committed).
        head: the newest global position the runner has seen in the store (see :meth:`measure_lag`).
        live: True once caught up and following ``subscribe_all``.
        owner: True while this runner owns the projection (always, without a lock, while running).
        fencing_token: the owner's lease fencing token (None without a lock or when not owner).
        parked: events parked in the dead-letter queue by this runner.
        error: the handler (or store) error that stopped the runner, if any.

    Raises:
        ConfigurationError: bad options (``then="park"`` without ``dead_letters``...).

    Example:
        >>> runner = ProjectionRunner(store, BalanceView(), MemoryCheckpointStore(), "balances")
        >>> async with runner:              # start() ... stop()
        ...     await runner.wait_for_position(await last_position())
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        checkpoints: CheckpointStore,
        name: str,
        *,
        batch_size: int = 500,
        on_error: ErrorPolicy | None = None,
        dead_letters: DeadLetterQueue | None = None,
        lock: DistributedLock | None = None,
        lease_ttl: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        policy = ErrorPolicy() if on_error is None else on_error
        if policy.then == "park" and dead_letters is None:
            raise ConfigurationError(
                f"projection {name!r}: ErrorPolicy(then='park') needs a dead-letter queue: "
                "pass dead_letters=..."
            )
        if not lease_ttl > 0:
            raise ConfigurationError(f"lease_ttl must be > 0 seconds, got {lease_ttl!r}")
        self.store = store
        self.projection = projection
        self.checkpoints = checkpoints
        self.name = validate_identifier(name, "projection name")
        self.batch_size = batch_size
        self.on_error = policy
        self.dead_letters = dead_letters
        self.lock = lock
        self.lease_ttl = float(lease_ttl)
        self.lease_key = validate_identifier(f"projection-{self.name}", "lock key")
        self.position = self.head = self.parked = 0
        self.live = self.owner = False
        self.fencing_token: int | None = None
        self.error: BaseException | None = None
        self._lease: Lease | None = None
        self._saved = 0
        self._task: asyncio.Task[Any] | None = None
        self._own_task: asyncio.Task[None] | None = None
        self._running = self._stopping = self._waiting = self._interrupted = self._ended = False
        self._rebuild: asyncio.Future[None] | None = None
        self._finished_runs = 0
        self._init_waiting()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is in progress."""
        return self._running

    @property
    def lag(self) -> int:
        """Events between :attr:`head` and :attr:`position` (0 when caught up)."""
        return max(0, self.head - self.position)

    async def measure_lag(self) -> int:
        """Ask the store for its newest position (when it tells: ``last_position()``), then :attr:`lag`."""
        head = await last_position(self.store)
        if head is not None:
            self.head = max(self.head, head)
        return self.lag

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Own the projection (with a lock: wait for its lease), catch up from the checkpoint, then follow
        new events until :meth:`stop` (or the store ends).

        Raises:
            ConfigurationError: the runner is already running.
            Exception: whatever a projection handler or the store raised under the "stop" policy.
        """
        if self._running:
            raise ConfigurationError(f"projection runner {self.name!r} is already running")
        self._running = True
        self.error = None
        self._task = asyncio.current_task()
        try:
            while not (self._stopping or self._ended):
                try:
                    lease = None if self.lock is None else await self._acquire(self.lock)
                    try:
                        await self._serve(lease)
                    finally:
                        await self._give_up(lease)
                except _Interrupted:
                    continue
                except (_Deposed, StaleFencingTokenError) as exc:
                    logger.warning(
                        "projection %r: another replica took it over at position %d (%s); standing by",
                        self.name,
                        self.position,
                        exc,
                    )
                    await self.projection.discard()
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self._running = self._waiting = self._stopping = self._interrupted = self._ended = False
            self._task = None
            self._finished_runs += 1
            if self._rebuild is not None and not self._rebuild.done():
                self._rebuild.set_exception(self._stopped_error(0))
                self._rebuild.exception()  # the caller may have given up waiting: never "never retrieved"
            self._rebuild = None
            self._fail_waiters()

    async def _acquire(self, lock: DistributedLock) -> Lease:
        delay = 0.1
        while True:
            try:
                return await self._idle(
                    lock.acquire(self.lease_key, ttl=self.lease_ttl, wait=self.lease_ttl, auto_renew=True)
                )
            except LockNotAcquiredError:
                continue  # another replica owns it: keep standing by
            except BackendError as exc:
                logger.warning("projection %r: cannot reach the lock (%s); retrying", self.name, exc)
                await self._idle(asyncio.sleep(delay))
                delay = min(delay * 2, self.lease_ttl)

    async def _give_up(self, lease: Lease | None) -> None:
        self.owner = self.live = False
        self.fencing_token = self._lease = None
        if lease is None:
            return
        try:
            await lease.release()
        except (LockNotOwnedError, BackendError) as exc:
            logger.debug("projection %r: lease release: %s", self.name, exc)

    async def _serve(self, lease: Lease | None) -> None:
        token = None if lease is None else lease.fencing_token
        self._lease, self.fencing_token = lease, token
        if token is None:
            self.position = self._saved = await self.checkpoints.get(self.name)
        else:
            self.position = self._saved = await self.checkpoints.claim(self.name, token)
            logger.info(
                "projection %r: owner from position %d (fencing token %d)", self.name, self.position, token
            )
        self.owner = True
        self.head = max(self.head, self.position)
        self._notify()
        while not (self._stopping or self._ended):
            if self._rebuild is not None:
                await self._rebuild_now(self._rebuild)
            try:
                await self._catch_up()
                if not (self._stopping or self._rebuild is not None):
                    await self._follow()
            except _Interrupted:
                pass
        await self._checkpoint()

    def _check_owner(self) -> None:
        lease = self._lease
        if lease is not None and lease.lost:
            raise _Deposed(f"lease {self.lease_key!r} (fencing token {lease.fencing_token}) was lost")

    def _busy(self) -> bool:
        return self._stopping or self._rebuild is not None

    async def _catch_up(self) -> None:
        while not self._busy():
            self._check_owner()
            batch = await self.store.read_all(self.position + 1, self.batch_size)
            if not batch:
                return
            self.head = max(self.head, batch[-1].position)
            try:
                await self._handle_all(batch)
            except _Deposed:
                raise  # nothing to commit: the new owner handles these events
            except Exception:  # a handler error, or an interruption: keep what was handled
                await self._checkpoint_after_error()
                raise
            await self._checkpoint()
            if len(batch) < self.batch_size:
                return

    async def _handle_all(self, batch: Sequence[StoredEvent]) -> None:
        for stored in batch:
            await self._handle(stored)
            if self._busy():
                return

    async def _handle(self, stored: StoredEvent) -> None:
        if stored.position <= self.position:
            return  # already handled (a store may replay the checkpoint's event)
        policy = self.on_error
        attempt = 0
        while True:
            try:
                await self.projection.handle(stored)
                break
            except Exception as exc:
                attempt += 1
                if attempt <= policy.retries:
                    logger.warning(
                        "projection %r failed on event %s at position %d (%s: %s); retry %d of %d",
                        self.name,
                        stored.type_name,
                        stored.position,
                        type(exc).__name__,
                        exc,
                        attempt,
                        policy.retries,
                    )
                    await self._idle(asyncio.sleep(policy.delay(attempt)))
                    self._check_owner()
                    continue
                if policy.then == "park":
                    await self._park(stored, exc, attempt)
                    break
                logger.exception(
                    "projection %r failed on event %s (stream %r, version %d, position %d); stopping",
                    self.name,
                    stored.type_name,
                    stored.stream_id,
                    stored.version,
                    stored.position,
                )
                raise
        self.position = stored.position
        if self._waiters:
            self._notify()

    async def _park(self, stored: StoredEvent, exc: Exception, attempts: int) -> None:
        dead_letters = self.dead_letters
        if dead_letters is None:  # checked in __init__; here for the type checker
            raise ConfigurationError(f"projection {self.name!r} has no dead-letter queue to park in")
        letter = parked_letter(self.name, stored, exc, attempts)
        await dead_letters.add(letter)  # a failure here stops the runner: never lose the event
        self.parked += 1
        logger.error(
            "projection %r parked event %s (stream %r, version %d, position %d) after %d attempts: %s",
            self.name,
            stored.type_name,
            stored.stream_id,
            stored.version,
            stored.position,
            attempts,
            letter.error,
        )

    async def _follow(self) -> None:
        events: AsyncIterator[StoredEvent] = self.store.subscribe_all(self.position + 1)
        self.live = True
        self._notify_live()
        try:
            while not self._busy():
                try:
                    stored = await self._idle(anext(events))
                except StopAsyncIteration:
                    self._ended = True
                    return
                self._check_owner()
                self.head = max(self.head, stored.position)
                try:
                    await self._handle(stored)
                except Exception:
                    await self._checkpoint_after_error()
                    raise
                await self._checkpoint()
        finally:
            self.live = False
            close: Callable[[], Awaitable[None]] | None = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def _idle(self, awaitable: Awaitable[T]) -> T:
        """Await something that may take long; stop() and rebuild() interrupt it at once."""
        self._waiting = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            task = self._task
            if self._interrupted and task is not None and task.uncancel() == 0:
                self._interrupted = False
                raise _Interrupted from None
            raise
        finally:
            self._waiting = False

    async def _save(self, position: int, **options: Any) -> None:
        token = self.fencing_token
        if token is None and not options:
            await self.checkpoints.save(self.name, position)
        else:
            await self.checkpoints.save(self.name, position, fencing_token=token, **options)

    async def _checkpoint(self) -> None:
        position = self.position
        if position == self._saved:
            return

        def save(**options: Any) -> Awaitable[None]:
            return self._save(position, **options)

        try:
            await self.projection.commit(position, save)
        except Exception:
            self.position = self._saved  # back to what is committed: the rest is handled again
            await self.projection.discard()
            raise
        self._saved = position

    async def _checkpoint_after_error(self) -> None:
        try:
            await self._checkpoint()  # keep the events handled before the failure
        except Exception:
            logger.exception("projection %r: saving checkpoint %d failed", self.name, self.position)

    # -- rebuild ------------------------------------------------------------------------------------

    async def _rebuild_now(self, future: asyncio.Future[None]) -> None:
        try:
            await self.projection.discard()
            await self.projection.reset()
            await self._save(0)
        except StaleFencingTokenError:
            raise  # deposed: the request stays pending until this runner owns the projection again
        except Exception as exc:
            self._rebuild = None
            if not future.done():
                future.set_exception(exc)
            raise
        self.position = self._saved = 0
        self._rebuild = None
        logger.warning("projection %r rebuilt: read model reset, replaying from position 1", self.name)
        if not future.done():
            future.set_result(None)

    async def rebuild(self, timeout: float = 30.0) -> None:
        """Clear the read model (:meth:`Projection.reset`), set the checkpoint to 0 and replay every event.

        On a running runner this happens as soon as it owns the projection (at once on the owner: see
        :attr:`owner`; a standby replica does it when it takes over) and this waits for the reset, not for
        the replay (use :meth:`wait_for_position`). On a stopped runner it is done here (taking the lease
        first, with a lock) and the next :meth:`run` replays.

        Raises:
            ConfigurationError: the projection does not override :meth:`Projection.reset`.
            LockNotAcquiredError: (stopped runner with a lock) another replica owns it for ``timeout`` s.
            OperationTimeoutError: (running) not done within ``timeout`` seconds; it stays requested.
        """
        if self._running:
            future = self._rebuild
            if future is None:
                future = self._rebuild = asyncio.get_running_loop().create_future()
                self._interrupt()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(future)
            except TimeoutError:
                raise OperationTimeoutError(f"rebuild of projection {self.name!r}", timeout) from None
            return
        lease = None
        if self.lock is not None:
            lease = await self.lock.acquire(self.lease_key, ttl=self.lease_ttl, wait=timeout, auto_renew=True)
        try:
            self.fencing_token = None if lease is None else lease.fencing_token
            if self.fencing_token is not None:
                await self.checkpoints.claim(self.name, self.fencing_token)
            await self.projection.discard()
            await self.projection.reset()
            await self._save(0)
            self.position = self._saved = 0
        finally:
            await self._give_up(lease)

    # -- control ------------------------------------------------------------------------------------

    def _interrupt(self) -> None:
        task = self._task
        if task is not None and self._waiting and not self._interrupted:
            self._interrupted = True
            task.cancel()

    def start(self) -> asyncio.Task[None]:
        """Run in a background task owned by this runner; :meth:`stop` or :meth:`aclose` ends it."""
        if self._own_task is not None and not self._own_task.done():
            raise ConfigurationError(f"projection runner {self.name!r} is already started")
        self._own_task = asyncio.create_task(self.run(), name=f"catga-projection-{self.name}")
        return self._own_task

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop after the event in hand is handled and checkpointed; idle waits are interrupted at once.

        After ``timeout`` seconds the run is cancelled (the event in hand is then replayed on restart).
        Errors of the run are not raised here: see :attr:`error` (they were logged when they happened).
        When :meth:`run` is awaited by a task of yours, this only signals it: await that task.
        """
        own = self._own_task
        if not self._running and (own is None or own.done()):
            self._own_task = None
            if own is not None and not own.cancelled():
                own.exception()  # retrieved: recorded in self.error and logged already
            return
        self._stopping = True
        self._interrupt()
        if own is None:
            return
        done, _ = await asyncio.wait({own}, timeout=timeout)
        if not done:
            own.cancel()
            await asyncio.wait({own})
        self._own_task = None
        if not own.cancelled():
            own.exception()  # retrieved: recorded in self.error and logged already

    async def aclose(self) -> None:
        """Stop the runner (see :meth:`stop`). Idempotent."""
        await self.stop()

    async def __aenter__(self) -> ProjectionRunner:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def health_check(self) -> str:
        """A health probe (see :class:`~catga.eventsourcing.Projections`): the runner's state and lag.

        Raises:
            RuntimeError: the runner is not running (stopped, or failed: the error is named).
        """
        if not self._running:
            why = f": {type(self.error).__name__}: {self.error}" if self.error else ""
            raise RuntimeError(f"projection {self.name!r} is not running{why}")
        if not self.owner:
            return f"{self.name}: standby (another replica owns it)"
        lag = await self.measure_lag()
        state = "live" if self.live else "catching up"
        parked = f", {self.parked} parked" if self.parked else ""
        return f"{self.name}: {state} at position {self.position}, lag {lag}{parked}"
