"""Request/reply on Redis for :class:`~catga.redis.RedisTransport` (``request`` and ``serve``).

::

    request   XADD P:t:rpc:<destination> MAXLEN ~ <rpc_max_len> * body <bytes> <headers...>
                   Catga-Reply-To P:t:reply:<client id>  Catga-Reply-Id <n>  Catga-Deadline <unix s>
    serve     XREADGROUP GROUP <group> ... NOACK on that stream (servers of one group share the
              requests; group=None: a private group, every server answers). A request read more
              than DEADLINE_GRACE (1 s, for clock skew) after its deadline is skipped. The reply is
              RPUSH-ed to the caller's list (+ PEXPIRE reply_ttl) as one string:
              {"header": "value", ..., "Catga-Reply-Id": "<n>"} + "\n" + body
    replies   one task per requesting transport pops its own list (BLMPOP, or BLPOP + LPOP before
              Redis 7) on its own connection and resolves the waiting request by Catga-Reply-Id:
              replies go to the caller only.

Requests are at-most-once: a request nobody reads, or whose server dies, ends in
:class:`~catga.errors.OperationTimeoutError`. A server only ever pushes to ``P:t:reply:*`` keys.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Protocol

from catga._transport import answer
from catga.errors import BackendError, BackendUnavailableError, ConfigurationError, OperationTimeoutError
from catga.ids import new_id
from catga.messages import H_ID
from catga.protocols import RawHandler, validate_identifier
from catga.redis._wire import entry_args, frame, parse_entry, quietly, unframe
from catga.redis.connection import RedisClient

__all__ = ("H_DEADLINE", "H_REPLY_ID", "H_REPLY_TO", "RedisRpcEndpoint", "RpcHost")

logger = logging.getLogger("catga.redis.rpc")

H_REPLY_TO = "Catga-Reply-To"
H_REPLY_ID = "Catga-Reply-Id"
H_DEADLINE = "Catga-Deadline"
#: Seconds past its deadline (the caller's clock) before a server skips a request (clock skew).
DEADLINE_GRACE = 1.0


class RpcHost(Protocol):
    """What request/reply uses of its transport (implemented by :class:`~catga.redis.RedisTransport`;
    this module never imports the transport)."""

    @property
    def client(self) -> RedisClient:
        """The pipelined client; blocking reads use clones of it."""

    @property
    def prefix(self) -> str:
        """The transport's key prefix."""

    @property
    def consumer_base(self) -> str:
        """``<host>-<pid>``: the start of this process's consumer names."""

    @property
    def block(self) -> float:
        """Seconds one blocking read waits."""

    @property
    def timeout(self) -> float:
        """Seconds a command may take (on top of ``block`` for blocking reads)."""

    @property
    def drain_timeout(self) -> float:
        """Seconds requests in flight get to be answered on close."""

    @property
    def rpc_max_len(self) -> int:
        """Approximate cap of a request stream."""

    @property
    def reply_ttl(self) -> float:
        """Seconds a reply list lives after the last reply pushed to it."""

    def _forget_server(self, server: RedisRpcEndpoint) -> None:
        """Stop tracking a server that closed."""


class _ReplyRouter:
    """The requesting side of one transport: a private reply list and the requests waiting on it."""

    def __init__(self, transport: RpcHost) -> None:
        self.transport = transport
        self.key = f"{transport.prefix}:t:reply:{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[tuple[bytes, dict[str, str]]]] = {}
        self._ids = itertools.count(1)
        self._conn = transport.client.clone()
        self._task: asyncio.Task[None] | None = None

    async def request(
        self, destination: str, body: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> tuple[bytes, dict[str, str]]:
        t = self.transport
        dest = validate_identifier(destination, "destination")
        rid = str(next(self._ids))
        fut: asyncio.Future[tuple[bytes, dict[str, str]]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if self._task is None:
            self._task = asyncio.ensure_future(self._read_replies())
        h = dict(headers) if headers else {}
        h.setdefault(H_ID, str(new_id()))
        h[H_REPLY_TO] = self.key
        h[H_REPLY_ID] = rid
        h[H_DEADLINE] = repr(time.time() + timeout)
        key = f"{t.prefix}:t:rpc:{dest}"
        try:
            async with asyncio.timeout(timeout):
                await t.client.execute(*entry_args(key, bytes(body), h, t.rpc_max_len))
                return await fut
        except TimeoutError as exc:
            raise OperationTimeoutError(f"request to {dest!r}", timeout) from exc
        finally:
            self._pending.pop(rid, None)

    async def _read_replies(self) -> None:
        pause = 0.05
        blmpop = True  # Redis >= 7: one round trip for up to 256 replies
        while True:
            try:
                items = await (self._pop_many() if blmpop else self._pop_then_drain())
            except Exception as exc:
                if blmpop and isinstance(exc, BackendError) and "unknown command" in str(exc).lower():
                    blmpop = False
                    continue
                logger.warning(
                    "reading replies from %s failed (%r); retrying in %.2f s", self.key, exc, pause
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            for item in items:
                body, headers, error = unframe(item)
                fut = self._pending.get(headers.pop(H_REPLY_ID, ""))
                if error is not None:
                    logger.warning("malformed reply on %s dropped: %s", self.key, error)
                elif fut is not None and not fut.done():
                    fut.set_result((body, headers))

    async def _pop_many(self) -> list[bytes]:
        t = self.transport
        got = await self._conn.execute(
            "BLMPOP", t.block, 1, self.key, "LEFT", "COUNT", 256, timeout=t.block + t.timeout
        )
        return list(got[1]) if got else []

    async def _pop_then_drain(self) -> list[bytes]:
        t = self.transport
        got = await self._conn.execute("BLPOP", self.key, t.block, timeout=t.block + t.timeout)
        if got is None:
            return []
        more = await self._conn.execute("LPOP", self.key, 256)
        return [got[1], *(more or ())]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self._conn.aclose()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BackendUnavailableError("the Redis transport was closed", backend="redis"))
        await quietly(self.transport.client.execute("DEL", self.key), f"DEL {self.key}")


class RedisRpcEndpoint:
    """A live :meth:`RedisTransport.serve <catga.redis.RedisTransport.serve>`; ``aclose()`` stops it
    after the requests in flight were answered.

    Attributes:
        destination: the destination served.
        key: the request stream.
        group: the consumer group (a private ``~...`` name when served with ``group=None``).
    """

    def __init__(
        self,
        transport: RpcHost,
        destination: str,
        handler: RawHandler,
        group: str | None,
        max_in_flight: int,
    ) -> None:
        validate_identifier(destination, "destination")
        if group is not None:
            validate_identifier(group, "consumer group")
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.transport = transport
        self.destination = destination
        self.key = f"{transport.prefix}:t:rpc:{destination}"
        self.group = group if group is not None else f"~{uuid.uuid4().hex}"
        self._private = group is None
        self._handler = handler
        self._max = max_in_flight
        self._active = 0
        self._room = asyncio.Event()
        self._consumer = f"{transport.consumer_base}-{uuid.uuid4().hex[:8]}"
        self._reply_prefix = f"{transport.prefix}:t:reply:"
        self._conn = transport.client.clone()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._last_id: bytes | None = None  # the newest request this server read

    async def start(self) -> None:
        """Create the consumer group (starting at new requests) and start reading."""
        await self._create_group()
        self._task = asyncio.ensure_future(self._read_requests())

    async def _create_group(self) -> None:
        try:
            await self.transport.client.execute("XGROUP", "CREATE", self.key, self.group, "$", "MKSTREAM")
        except BackendError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recreate_group(self) -> None:
        """The group vanished (an empty restart, a failover, ``XGROUP DESTROY``): create it again where
        nothing sent since is skipped — after the last request read if the stream still holds it, else
        at the start (after an empty restart every request in the stream is new; expired ones are
        dropped unanswered by their deadline). Creating it at ``$`` lost the requests sent meanwhile."""
        client = self.transport.client
        start = "0"
        last = self._last_id
        if last is not None and await client.execute("XRANGE", self.key, last, last, "COUNT", 1):
            start = last.decode()
        try:
            await client.execute("XGROUP", "CREATE", self.key, self.group, start, "MKSTREAM")
        except BackendError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return
        logger.warning(
            "RPC consumer group %s on %s vanished and was re-created from %s",
            self.group,
            self.key,
            "the start of the stream" if start == "0" else f"after request {start}",
        )

    async def _read_requests(self) -> None:
        t = self.transport
        block_ms = max(1, round(t.block * 1000))
        pause = 0.05
        while True:
            room = self._max - self._active
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                reply = await self._conn.execute(
                    "XREADGROUP", "GROUP", self.group, self._consumer, "COUNT", room, "BLOCK", block_ms,
                    "NOACK", "STREAMS", self.key, ">", timeout=t.block + t.timeout,
                )  # fmt: skip
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    await quietly(self._recreate_group(), f"re-creating group {self.group} on {self.key}")
                else:
                    logger.warning("reading %s failed (%s); retrying in %.2f s", self.key, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            for mid, fields in reply[0][1] if reply else ():
                self._last_id = mid
                self._active += 1
                task = asyncio.ensure_future(self._answer(fields))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, fields: list[bytes] | None) -> None:
        try:
            body, headers, error = parse_entry(fields)
            reply_to = headers.pop(H_REPLY_TO, "")
            rid = headers.pop(H_REPLY_ID, "")
            deadline = headers.pop(H_DEADLINE, "")
            if error is not None or not rid or not reply_to.startswith(self._reply_prefix):
                logger.warning("malformed request on %s dropped: %s", self.key, error or "no reply key")
                return
            try:
                if deadline and float(deadline) + DEADLINE_GRACE < time.time():
                    logger.debug("request %s on %s expired before it was read", rid, self.key)
                    return
            except ValueError:
                pass
            out_body, out = await answer(self._handler, body, headers, self.destination, logger)
            out[H_REPLY_ID] = rid
            ttl_ms = max(1, round(self.transport.reply_ttl * 1000))
            await quietly(
                self.transport.client.execute_many(
                    [("RPUSH", reply_to, frame(bytes(out_body), out)), ("PEXPIRE", reply_to, ttl_ms)]
                ),
                f"reply to {reply_to}",
            )
        finally:
            self._active -= 1
            self._room.set()

    async def aclose(self) -> None:
        """Stop reading requests, answer those in flight (up to ``drain_timeout``). Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.transport._forget_server(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self._conn.aclose()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.transport.drain_timeout)
            for task in pending:
                task.cancel()
        if self._private:
            await quietly(
                self.transport.client.execute("XGROUP", "DESTROY", self.key, self.group),
                f"destroying group {self.group} on {self.key}",
            )
