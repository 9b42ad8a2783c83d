"""The outbox relay: publishes what an :class:`~catga.protocols.OutboxStore` holds, until it is out.

An outbox makes "change state, then publish" safe against a crash in between: the message is stored
first (with the state change, where the store allows it), and the relay publishes it afterwards,
however long that takes. The relay:

1. leases up to ``batch_size`` due PENDING messages (``fetch_pending``; a relay that dies mid-batch leaves
   them to another one once the lease ends: nothing is lost, a message may be published twice),
2. publishes them through the transport (``publish_raw``: the stored bytes and headers, untouched),
   concurrently,
3. marks the published ones PUBLISHED in one call, and for each failure records the error and a retry
   time with exponential backoff (``retry_backoff * 2**(attempts-1)``, capped at ``retry_backoff_max``);
   after ``max_attempts`` failed attempts (at once for a message over the transport's payload limit,
   which no retry can fix) the message becomes DEAD and goes to the dead-letter queue (when one is
   given) with its last error,
4. repeats at once while batches come back full, else waits for :meth:`OutboxRelay.notify` or
   ``poll_interval`` seconds, and deletes PUBLISHED messages older than ``keep_published`` seconds every
   ``purge_interval`` seconds.

Logging: a transport or store that is down fails every message alike, so failed attempts are logged
once per outage (the first error, then one "still failing" line per 30 s with the count, then one
"recovered" line; see :mod:`catga._outage`); a message that becomes DEAD is logged at ERROR, each one.

Delivery is **at least once**: a message can be published again if the relay dies between publishing
and marking, or if its lease ends during a very slow publish. Consumers de-duplicate by message id
(the ``Nats-Msg-Id`` / inbox of catga's transports does so).

Example::

    relay = OutboxRelay(outbox_store, transport, dead_letters=dlq)
    await relay.start()
    await outbox_store.add([...]); relay.notify()
    ...
    await relay.aclose()        # stops after the batch in flight, then one last pass
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

import catga._observe as _observe
from catga._outage import OutageLog
from catga._transport import check_retry_backoff, retry_delay
from catga.errors import ConfigurationError, PayloadTooLargeError
from catga.messages import H_ID
from catga.protocols import EVENT, DeadLetter, DeadLetterQueue, OutboxMessage, OutboxStore, Transport

__all__ = ("OutboxRelay",)

logger = logging.getLogger("catga.outbox")


class OutboxRelay:
    """Moves messages from an outbox store to a transport; one per process is enough, several are safe.

    Args:
        store: the outbox to drain.
        transport: where to publish (``publish_raw(destination, body, headers)``).
        dead_letters: where DEAD messages go (None: they only stay DEAD in the store).
        batch_size: messages leased and published per pass.
        lease: seconds a leased batch is hidden from other relays; longer than a batch takes.
        poll_interval: seconds between passes when idle and not notified.
        max_attempts: failed publish attempts before a message is DEAD.
        retry_backoff: delay before the first retry, doubled per failure.
        retry_backoff_max: the cap of that delay.
        keep_published: seconds PUBLISHED messages are kept before they are purged (None: never purged).
        purge_interval: seconds between purges.

    Raises:
        ConfigurationError: a count or duration out of range.
    """

    def __init__(
        self,
        store: OutboxStore,
        transport: Transport,
        *,
        dead_letters: DeadLetterQueue | None = None,
        batch_size: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = 10,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 60.0,
        keep_published: float | None = 3600.0,
        purge_interval: float = 60.0,
    ) -> None:
        if batch_size < 1 or max_attempts < 1:
            raise ConfigurationError(
                f"batch_size and max_attempts must be >= 1, got {batch_size} and {max_attempts}"
            )
        if not (lease > 0 and poll_interval > 0 and purge_interval > 0):
            raise ConfigurationError("lease, poll_interval and purge_interval must be > 0 seconds")
        if keep_published is not None and keep_published < 0:
            raise ConfigurationError(f"keep_published must be >= 0 seconds or None, got {keep_published}")
        check_retry_backoff(retry_backoff, retry_backoff_max)
        self.store = store
        self.transport = transport
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.keep_published = keep_published
        self.purge_interval = purge_interval
        self.published = 0  #: messages published since creation
        self.failed = 0  #: failed publish attempts since creation
        self.dead = 0  #: messages that became DEAD since creation
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_purge = 0.0
        self._publishing = OutageLog(logger, "outbox relay publishing")
        self._passes = OutageLog(logger, "outbox relay pass", level=logging.ERROR)

    # -- one pass ------------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Lease one batch, publish it, record the outcome; return how many messages were leased."""
        batch = await self.store.fetch_pending(self.batch_size, self.lease)
        if not batch:
            return 0
        probe = _observe.probe
        publish = self.transport.publish_raw if probe is None else self._publish_observed
        outcomes = await asyncio.gather(
            *[publish(m.destination, m.body, m.headers) for m in batch], return_exceptions=True
        )
        done: list[str] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):  # cancellation and the like: not a publish error
                    raise outcome
                await self._failed(message, outcome)
            else:
                done.append(message.id)
        if done:
            if self._publishing.failing:
                self._publishing.recovered()
            await self.store.mark_published(done)
            self.published += len(done)
            if probe is not None:
                probe.outbox("published", len(done))
        return len(batch)

    async def _publish_observed(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """``publish_raw`` in the probe's ``send`` span, a child of the context the export stored."""
        probe = _observe.probe
        if probe is None:  # uninstrumented since the pass began
            await self.transport.publish_raw(destination, body, headers)
            return
        system = _observe.system_of(self.transport)
        with probe.produce("send", system, destination, dict(headers), inject=False):
            await self.transport.publish_raw(destination, body, headers)

    async def _failed(self, message: OutboxMessage, exc: Exception) -> None:
        self.failed += 1
        probe = _observe.probe
        attempts = message.attempts + 1
        error = f"outbox publish failed: {type(exc).__name__}: {exc}"
        # Too large for the transport: no retry will ever fit it, so it is dead at once.
        if attempts < self.max_attempts and not isinstance(exc, PayloadTooLargeError):
            retry_at = time.time() + retry_delay(self.retry_backoff, self.retry_backoff_max, attempts)
            # A transport that is down fails every message: one line per outage, not one per attempt.
            self._publishing.failure(
                exc,
                f"message {message.id} to {message.destination}, attempt {attempts} of {self.max_attempts}",
            )
            await self.store.mark_failed(message.id, error, retry_at)
            if probe is not None:
                probe.outbox("failed", 1)
            return
        logger.error(
            "outbox message %s to %s is dead after %d attempt(s): %s",
            message.id,
            message.destination,
            attempts,
            error,
        )
        if self.dead_letters is not None:
            await self.dead_letters.add(
                DeadLetter(
                    id=message.id,
                    source=message.destination,  # like a transport's letters: replay to the source
                    type_name=message.type_name,
                    body=message.body,
                    headers=dict(message.headers),
                    error=error,
                    attempts=attempts,
                    failed_at=time.time(),
                    kind=EVENT,  # the relay publishes (publish_raw): replay publishes it too
                    message_id=message.headers.get(H_ID, ""),
                )
            )
        await self.store.mark_failed(message.id, error, None)
        self.dead += 1
        if probe is not None:
            probe.outbox("dead", 1)
            if self.dead_letters is not None:
                probe.dead_lettered(_observe.system_of(self.transport), message.destination, "outbox")

    async def purge(self) -> int:
        """Delete PUBLISHED messages older than ``keep_published``; return how many (0 when disabled)."""
        if self.keep_published is None:
            return 0
        return await self.store.purge_published(time.time() - self.keep_published)

    # -- the loop ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the background loop runs."""
        return self._task is not None and not self._task.done()

    def notify(self) -> None:
        """Wake the relay now (call after adding messages) instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start the background loop (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="catga-outbox-relay")

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                leased = await self.run_once()
                now = time.monotonic()
                if now - self._last_purge >= self.purge_interval:
                    self._last_purge = now
                    await self.purge()
            except Exception as exc:  # the store is unreachable, say: log (once per outage), wait, retry
                self._passes.failure(exc, f"retrying every {self.poll_interval:g} s")
                leased = 0
            else:
                if self._passes.failing:
                    self._passes.recovered()
            if leased >= self.batch_size:
                continue  # more is probably waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def aclose(self) -> None:
        """Stop the loop after its batch in flight, then make one last pass (a flush)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        await task
        try:
            await self.run_once()
        except Exception:
            logger.exception("final outbox relay pass failed; the messages stay in the outbox")

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"OutboxRelay({state}, published={self.published}, failed={self.failed}, dead={self.dead})"
