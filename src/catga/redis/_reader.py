"""Stream readers of :class:`~catga.redis.RedisTransport` subscriptions.

A :class:`StreamReader` reads one stream with one consumer group for a subscription. It blocks in
``XREADGROUP`` on its own connection, asking only for free slots (entries read and not yet settled never
exceed ``max_in_flight``), and hands each entry to a task of the subscription. After the handler:
``XACK`` (plus ``XDEL`` on command streams, which are work queues; the acks of one loop tick share one
command), a retry timer that takes the entry back with ``XCLAIM`` (only while it is still pending for
this consumer), or the dead-letter queue. A second loop refreshes held entries (``XCLAIM JUSTID``),
takes over entries of dead consumers (``XAUTOCLAIM``) and sweeps idle consumers and abandoned private
groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from catga._delivery import Outcome, Verdict
from catga.errors import BackendError
from catga.redis._wire import quietly
from catga.redis.connection import RedisClient, Script

__all__ = ("ConsumerSettings", "Delivery", "Owner", "StreamReader")

logger = logging.getLogger("catga.redis.transport")

# Claim entries still pending for *this* consumer (a retry, or a heartbeat with JUSTID): never steals
# an entry another consumer took over. ARGV: group, consumer, justid flag, ids...
_CLAIM_OWN = Script(
    """
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then
    if ARGV[3] == '1' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
      if #e > 0 then out[#out + 1] = e[1] end
    end
  end
end
return out
""",
    "transport-claim-own",
)


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


def _id_key(mid: bytes) -> tuple[int, int]:
    ms, _, seq = mid.partition(b"-")
    return int(ms), int(seq or 0)


def _before(mid: bytes) -> str:
    """The stream id just before ``mid`` (``XGROUP CREATE`` at it delivers ``mid`` first)."""
    ms, seq = _id_key(mid)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSettings:
    """What the subscriptions of one :class:`~catga.redis.RedisTransport` read of it (set once).

    Attributes: see :class:`~catga.redis.RedisTransport`; ``consumer_base`` names this process's
    consumers (``<host>-<pid>``), ``claim_interval`` is the period of the maintenance loop.
    """

    client: RedisClient
    prefix: str
    consumer_base: str
    block: float
    timeout: float
    drain_timeout: float
    consumer_ttl: float
    claim_interval: float
    claim_min_idle_ms: int


class Owner(Protocol):
    """What a reader needs of its subscription (:class:`~catga.redis._consumer.RedisSubscription`)."""

    max_in_flight: int
    max_deliver: int

    @property
    def closed(self) -> bool: ...

    def recovered(self, what: str) -> None: ...

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` in a task of the subscription (drained when it closes)."""

    def run(self, d: Delivery) -> Awaitable[None]:
        """Handle ``d`` and settle it (a coroutine for :meth:`spawn`)."""


class Delivery:
    """One message in hand: a stream entry (``reader`` set) or a pub/sub frame."""

    __slots__ = ("attempts", "fields", "id", "reader")

    def __init__(self, reader: StreamReader | None, id: bytes, fields: Any, attempts: int) -> None:
        self.reader = reader
        self.id = id
        self.fields = fields
        self.attempts = attempts


class StreamReader:
    """Reads one stream with one consumer group for a subscription, and keeps its entries alive."""

    def __init__(
        self,
        sub: Owner,
        settings: ConsumerSettings,
        kind: str,
        key: str,
        group: str,
        *,
        private: bool,
        noack: bool,
    ) -> None:
        t = self.settings = settings
        self.sub = sub
        self.kind = kind
        self.key = key
        self.group = group
        self.private = private
        self.noack = noack
        self.consumer = f"{t.consumer_base}-{uuid.uuid4().hex[:8]}"
        self.scope = f"{kind}.{_digest(key, group)}"
        self.active = 0  # entries read/claimed and not settled (queued or running)
        self.waiting = 0  # entries waiting for a retry
        self.held: dict[bytes, int] = {}
        self._timers: dict[bytes, asyncio.TimerHandle] = {}
        self._room = asyncio.Event()
        self._conn = t.client.clone()
        self._tasks: list[asyncio.Task[None]] = []
        self._cursor: bytes = b"0-0"
        self._last_read: bytes | None = None  # id of the newest entry XREADGROUP handed us
        self._ticks = 0
        self._acks: list[bytes] = []
        self._ack_flush: asyncio.Future[None] | None = None

    async def create_group(self, start: str) -> None:
        client = self.settings.client
        if self.private:  # mark it alive first, so no sweep ever sees it unmarked
            await self._mark_alive()
        try:
            await client.execute("XGROUP", "CREATE", self.key, self.group, start, "MKSTREAM")
        except BackendError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _live_key(self, group: str) -> str:
        return f"{self.settings.prefix}:t:live:{group}"

    async def _mark_alive(self) -> None:
        t = self.settings
        ttl_ms = round(max(t.consumer_ttl, 3 * t.claim_interval) * 1000)
        await t.client.execute("SET", self._live_key(self.group), b"1", "PX", ttl_ms)

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._read_loop()))
        if not self.noack:
            self._tasks.append(asyncio.ensure_future(self._maintain_loop()))

    # -- reading --------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        t = self.settings
        limit = self.sub.max_in_flight
        cap = max(1000, 4 * limit)
        block_ms = max(1, round(t.block * 1000))
        noack = ("NOACK",) if self.noack else ()
        pause = 0.05
        while True:
            room = min(limit - self.active, cap - self.active - self.waiting)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                reply = await self._conn.execute(
                    "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", room, "BLOCK", block_ms,
                    *noack, "STREAMS", self.key, ">", timeout=t.block + t.timeout,
                )  # fmt: skip
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    with contextlib.suppress(BackendError):
                        await self._recreate_group()
                else:
                    logger.warning("reading %s failed (%s); retrying in %.2f s", self.key, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            if not reply:
                continue
            entries = reply[0][1]
            if entries:
                self._last_read = entries[-1][0]
            if self.noack and self.kind == "cmd" and entries:
                # a work queue: nothing will ever ack these, so remove them now
                await quietly(
                    t.client.execute("XDEL", self.key, *(e[0] for e in entries)), f"XDEL on {self.key}"
                )
            for mid, fields in entries:
                self.accept(mid, fields, 1)

    async def _recreate_group(self) -> None:
        """The group is gone: the server lost its data (restarted empty, failed over to a replica that
        had not received it) or someone deleted it. Create it again so that nothing published since
        is skipped, log it and record it on the subscription (see :meth:`catga.App.health`).

        A command stream restarts from its beginning (settled commands are deleted). An event stream
        restarts after the last entry this reader read (at the oldest one it still holds, if any) when
        that entry is still in the stream, so the history it handled is not replayed; else from its
        beginning: after an empty restart everything in the stream was published after the loss.
        Entries pending at the loss are redelivered if the stream still has them (at-least-once:
        duplicates, never gaps); what the server itself lost is gone.
        """
        start = "0"
        last = self._last_read
        if self.kind == "evt" and last is not None:
            kept = await self.settings.client.execute("XRANGE", self.key, last, last)
            if kept:
                start = _before(min(self.held, key=_id_key)) if self.held else last.decode()
        logger.warning(
            "consumer group %s on %s vanished (the Redis server lost its data, or the group was "
            "deleted); re-creating it from %s so that nothing published since is skipped. Messages "
            "pending at the loss are redelivered only if the stream still has them.",
            self.group,
            self.key,
            "the start of the stream" if start == "0" else f"entry {start}",
        )
        await self.create_group(start)
        self.sub.recovered(f"consumer group {self.group} on {self.key} vanished and was re-created")

    def accept(self, mid: bytes, fields: Any, attempts: int) -> None:
        self.active += 1
        if not self.noack:
            self.held[mid] = attempts
        self.sub.spawn(self.sub.run(Delivery(self, mid, fields, attempts)))

    def release(self, d: Delivery) -> None:
        """The delivery ended unsettled (closing): forget it; it stays pending for another consumer."""
        self.active -= 1
        self.held.pop(d.id, None)
        self._room.set()

    async def settle(self, d: Delivery, outcome: Outcome) -> None:
        """Execute the delivery policy's verdict: ack (``ACK``, ``DEAD``), leave pending (``KEEP``), or
        take it again with ``XCLAIM`` after the delay (``RETRY`` counts a delivery, ``WAIT`` not)."""
        self.active -= 1
        self._room.set()
        if self.noack:
            return
        verdict = outcome.verdict
        if verdict is Verdict.ACK or verdict is Verdict.DEAD:
            self.held.pop(d.id, None)
            await self._ack(d.id)
        elif verdict is Verdict.KEEP or self.sub.closed:
            self.held.pop(d.id, None)  # stays pending: XAUTOCLAIM hands it to a consumer later
        else:
            attempts = d.attempts + 1 if verdict is Verdict.RETRY else d.attempts
            self.waiting += 1
            loop = asyncio.get_running_loop()
            self._timers[d.id] = loop.call_later(outcome.delay, self._retry_due, d.id, attempts)

    async def _ack(self, mid: bytes) -> None:
        """Ack (and on a command stream delete) ``mid``; the acks of one loop tick share one command."""
        self._acks.append(mid)
        flush = self._ack_flush
        if flush is None:
            flush = self._ack_flush = asyncio.ensure_future(self._flush_acks())
        await asyncio.shield(flush)

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # let the deliveries settling in this tick join
        ids, self._acks, self._ack_flush = self._acks, [], None
        commands: list[tuple[Any, ...]] = [("XACK", self.key, self.group, *ids)]
        if self.kind == "cmd":
            commands.append(("XDEL", self.key, *ids))
        await quietly(self.settings.client.execute_many(commands), f"ack of {len(ids)} on {self.key}")

    def _retry_due(self, mid: bytes, attempts: int) -> None:
        self._timers.pop(mid, None)
        self.sub.spawn(self._retry(mid, attempts))

    async def _retry(self, mid: bytes, attempts: int) -> None:
        t = self.settings
        try:
            if self.sub.closed:
                self.held.pop(mid, None)
                return
            try:
                claimed = await t.client.run_script(
                    _CLAIM_OWN, (self.key,), (self.group, self.consumer, "0", mid)
                )
            except Exception as exc:
                logger.warning("redelivery of %r on %s failed (%s); it stays pending", mid, self.key, exc)
                self.held.pop(mid, None)
                return
            if not claimed:  # acked, trimmed or taken over meanwhile
                self.held.pop(mid, None)
                return
            for cmid, fields in claimed:
                self.accept(cmid, fields, attempts)
        finally:
            self.waiting -= 1
            self._room.set()

    # -- keeping entries alive, taking over stuck ones ------------------------------------------
    async def _maintain_loop(self) -> None:
        t = self.settings
        every = max(1, round(min(60.0, t.consumer_ttl / 2) / t.claim_interval))
        while True:
            await asyncio.sleep(t.claim_interval)
            self._ticks += 1
            try:
                if self.private:
                    await self._mark_alive()
                await self._heartbeat()
                await self._autoclaim()
                if self._ticks % every == 0:
                    await self._sweep()
            except Exception as exc:
                logger.warning("maintenance of %s (group %s) failed: %s", self.key, self.group, exc)

    async def _heartbeat(self) -> None:
        ids = list(self.held)
        client = self.settings.client
        for i in range(0, len(ids), 256):
            await client.run_script(
                _CLAIM_OWN, (self.key,), (self.group, self.consumer, "1", *ids[i : i + 256])
            )

    async def _autoclaim(self) -> None:
        sub, t = self.sub, self.settings
        room = sub.max_in_flight - self.active
        if room <= 0 or sub.closed:
            return
        reply = await t.client.execute(
            "XAUTOCLAIM",
            self.key,
            self.group,
            self.consumer,
            t.claim_min_idle_ms,
            self._cursor,
            "COUNT",
            room,
        )
        self._cursor = reply[0]
        gone = [mid for mid, fields in reply[1] if fields is None]  # Redis 6.2: trimmed entries
        if gone:
            await t.client.execute("XACK", self.key, self.group, *gone)
        entries = [(mid, fields) for mid, fields in reply[1] if fields is not None and mid not in self.held]
        if not entries:
            return
        pending = await t.client.execute_many(
            [("XPENDING", self.key, self.group, mid, mid, 1) for mid, _ in entries]
        )
        for (mid, fields), info in zip(entries, pending, strict=True):
            attempts = int(info[0][3]) if info else 1
            logger.info("took over message %r on %s (delivery %d)", mid, self.key, attempts)
            self.accept(mid, fields, attempts)  # past max_deliver: the policy dead-letters it

    async def _sweep(self) -> None:
        """Delete consumers idle for ``consumer_ttl`` with nothing pending, and private groups whose
        subscription stopped refreshing its ``P:t:live:<group>`` key (its process died)."""
        client, ttl_ms = self.settings.client, self.settings.consumer_ttl * 1000
        for info in await client.execute("XINFO", "CONSUMERS", self.key, self.group):
            c = dict(zip(info[::2], info[1::2], strict=False))
            if c[b"name"].decode() != self.consumer and c[b"pending"] == 0 and c[b"idle"] > ttl_ms:
                await client.execute("XGROUP", "DELCONSUMER", self.key, self.group, c[b"name"])
        if self.kind != "evt":
            return
        groups = [dict(zip(g[::2], g[1::2], strict=False))[b"name"].decode() for g in await client.execute(
            "XINFO", "GROUPS", self.key
        )]  # fmt: skip
        private = [g for g in groups if g.startswith("~") and g != self.group]
        if not private:
            return
        alive = await client.execute_many([("EXISTS", self._live_key(g)) for g in private])
        for group, live in zip(private, alive, strict=True):
            if not live:
                logger.info("destroying abandoned private group %s on %s", group, self.key)
                await client.execute("XGROUP", "DESTROY", self.key, group)

    # -- closing --------------------------------------------------------------------------------
    async def stop_reading(self) -> None:
        for task in self._tasks:
            task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self.waiting -= len(self._timers)
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._conn.aclose()

    async def finish(self) -> None:
        """After the handlers: drop a private group, or this consumer if it holds nothing."""
        client = self.settings.client
        if self.private:
            await quietly(
                client.execute_many(
                    [("XGROUP", "DESTROY", self.key, self.group), ("DEL", self._live_key(self.group))]
                ),
                f"destroying group {self.group} on {self.key}",
            )
            return
        try:
            mine = (
                []
                if self.noack
                else await client.execute("XPENDING", self.key, self.group, "-", "+", 1, self.consumer)
            )
            if not mine:
                await client.execute("XGROUP", "DELCONSUMER", self.key, self.group, self.consumer)
        except Exception as exc:
            logger.debug("could not remove consumer %s from %s: %s", self.consumer, self.key, exc)
