"""A small auto-pipelining RESP2 connection: the engine under :class:`~catga.redis.RedisClient`.

Why not redis-py's asyncio client on the hot path: it runs one command per pooled connection at a time
(a round trip each, plus pool checkout) and parses replies in Python. Here every caller's command is
written to **one** socket as soon as it is issued and its reply is matched FIFO to a future, so N
concurrent tasks share one connection and the server sees them pipelined. Replies are parsed by
``hiredis.Reader`` (C) and commands packed by ``hiredis.pack_command`` (C).

Writes are coalesced per event-loop tick: commands issued while the loop runs other callbacks are
joined and written with one ``send()`` when the tick ends (``call_soon``). Measured against
write-through (one ``transport.write`` per command) and a hybrid (write at once when nothing is in
flight): coalescing wins at concurrency 16 and ties at 1; the hybrid fragmented the batches, so it was
dropped (figures in ``docs/benchmarks.md``, *Design figures*).

Timeouts: one watchdog timer per connection (not one per command) fires at the earliest deadline. An
overdue command fails with :class:`~catga.errors.BackendTimeoutError` and its reply slot stays in the
queue so the late reply is discarded. If the *oldest* command is overdue the server answered nothing
for that long: the connection is closed, so the next call reconnects.

Connection loss fails every pending command with :class:`~catga.errors.BackendUnavailableError`.
A cancelled caller leaves its slot in the queue (the reply is read and dropped), so FIFO matching holds.

Subscriber mode (pub/sub, :mod:`catga.redis._pubsub`): once ``on_push`` is set, a reply that arrives
when no command waits is handed to it instead of closing the connection as a protocol error. After
``SUBSCRIBE`` every reply is such a push (RESP2 arrays ``[b"message", channel, data]``,
``[b"subscribe", channel, count]``, ...), so a subscriber writes its commands with :meth:`write` (no
reply slot) once the handshake is over; mixing :meth:`send` in would mis-match the pushes. The hot
path is unchanged: the push branch is the one that used to abort.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis

from catga._lifecycle import close_transport
from catga.errors import BackendError, BackendTimeoutError, BackendUnavailableError

__all__ = ("ReplyError", "RespConnection", "abandon")

_pack = hiredis.pack_command
_INF = math.inf


class ReplyError(Exception):
    """An error reply from the server (``-ERR ...``), returned (not raised) by the reader."""


class RespConnection(asyncio.Protocol):
    """One RESP2 connection with FIFO reply matching. Build with :meth:`open`.

    Thread-safety: none; use it from the event loop that opened it.

    Attributes:
        address: ``host:port`` (or the socket path), for error messages.
        closed: True once the connection is lost or closed; it is never reopened.
        server_version: the version the server reported in the handshake (None: not known).
        on_push: subscriber mode: called with each reply no command waits for (see the module
            docstring); None (the default) treats such a reply as a protocol error.
        on_lost: called once with the reason when the socket is closed (lost, aborted or closed).
    """

    def __init__(self, address: str, *, coalesce: bool = True) -> None:
        self.address = address
        self.closed = False
        self.lost = False
        self.server_version: str | None = None
        self._coalesce = coalesce
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._pending: deque[tuple[asyncio.Future[Any], float, str, float | None]] = deque()
        self._transport: asyncio.Transport | None = None
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = _INF
        self._closed_reason = "connection closed"
        self.on_push: Callable[[Any], None] | None = None
        self.on_lost: Callable[[str], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._abort(BackendError(f"Redis at {self.address} sent a malformed reply: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                on_push = self.on_push
                if on_push is not None:  # subscriber mode
                    on_push(reply)
                    continue
                self._abort(BackendError(f"Redis at {self.address} sent a reply nobody asked for"))
                return
            fut = pending.popleft()[0]
            if not fut.done():  # done = cancelled or timed out: drop the reply
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the socket is closed now (``closed`` only says no more commands go out)
        reason = self._closed_reason if exc is None else f"connection lost: {exc}"
        self._fail_all(reason)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(reason)

    # -- sending -----------------------------------------------------------------------------------
    def send(self, args: tuple[Any, ...], timeout: float | None) -> asyncio.Future[Any]:
        """Queue one command; the future resolves to its raw reply (a :class:`ReplyError` for ``-ERR``).

        Raises:
            BackendUnavailableError: the connection is closed.
        """
        if self.closed:
            raise BackendUnavailableError(
                f"connection to Redis at {self.address} is closed ({self._closed_reason})", backend="redis"
            )
        loop = self._loop
        fut = loop.create_future()
        deadline = _INF if timeout is None else loop.time() + timeout
        self._pending.append((fut, deadline, args[0], timeout))
        if deadline < self._watchdog_at:
            self._arm(deadline)
        data = _pack(args)
        if self._coalesce:
            self._wbuf.append(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            self._transport.write(data)  # type: ignore[union-attr]
        return fut

    def write(self, args: tuple[Any, ...]) -> None:
        """Write one command at once, with no reply slot: its replies come to ``on_push``.

        For subscriber mode only (``SUBSCRIBE``, ``UNSUBSCRIBE``, ``PING``).

        Raises:
            BackendUnavailableError: the connection is closed.
        """
        if self.closed or self._transport is None:
            raise BackendUnavailableError(
                f"connection to Redis at {self.address} is closed ({self._closed_reason})", backend="redis"
            )
        self._transport.write(_pack(args))

    def send_many(self, commands: list[tuple[Any, ...]], timeout: float | None) -> list[asyncio.Future[Any]]:
        """Queue several commands at once (written together); futures in order."""
        return [self.send(args, timeout) for args in commands]

    def _flush(self) -> None:
        self._flush_scheduled = False
        buf = self._wbuf
        if buf and self._transport is not None and not self.closed:
            self._wbuf = []
            self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    async def call(self, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Send one command and return its raw reply (see :meth:`send`)."""
        return await self.send(args, timeout)

    # -- timeouts ----------------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog_at = when
        self._watchdog = self._loop.call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._watchdog = None
        self._watchdog_at = _INF
        now = self._loop.time()
        pending = self._pending
        if pending and pending[0][1] <= now and not self.closed:
            name, seconds = pending[0][2], pending[0][3]
            self._closed_reason = f"Redis {name} got no reply within {seconds} s; connection dropped"
            for fut, dl, n, t in pending:
                if not fut.done() and dl <= now:
                    fut.set_exception(_timeout_error(n, t, self.address))
            if self._transport is not None:
                self._transport.abort()  # not close(): a stuck peer would never drain the buffer
            self._fail_all(self._closed_reason)
            return
        nxt = _INF
        for fut, deadline, name, seconds in pending:
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(_timeout_error(name, seconds, self.address))
            elif deadline < nxt:
                nxt = deadline
        if nxt < _INF:
            self._arm(nxt)

    # -- closing -----------------------------------------------------------------------------------
    def _fail_all(self, reason: str) -> None:
        self.closed = True
        self._closed_reason = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._watchdog_at = _INF
        self._wbuf = []
        pending, self._pending = self._pending, deque()
        for fut, _deadline, name, _seconds in pending:
            if not fut.done():
                fut.set_exception(
                    BackendUnavailableError(
                        f"Redis {name} failed: {reason} (server {self.address}); it may or may not "
                        "have run; retry when the server is reachable",
                        backend="redis",
                    )
                )

    def _abort(self, error: BackendError) -> None:
        self._closed_reason = str(error)
        if self._transport is not None:
            self._transport.abort()
        self._fail_all(str(error))

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a peer that stopped answering); pending commands fail with
        BackendUnavailableError naming ``reason``."""
        if not self.closed:
            self._closed_reason = reason
        if self._transport is not None:
            self._transport.abort()
        self._fail_all(self._closed_reason)

    def close(self) -> None:
        """Close the socket now; pending commands fail with BackendUnavailableError.

        The socket closes once what was written has been flushed (see :meth:`aclose` to wait for it).
        """
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._fail_all(self._closed_reason)

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the socket is closed (aborted after a short grace)."""
        self.close()
        await close_transport(self._transport, lambda: self.lost or self._transport is None)


def abandon(futures: list[asyncio.Future[Any]]) -> None:
    """Give up on replies nobody will await (the caller failed or was cancelled part-way through).

    A failed future whose exception is never read makes asyncio log "Future exception was never
    retrieved" when it is collected: read the exceptions of those already failed, cancel the others
    (their reply slots stay queued, so the FIFO matching holds).
    """
    for fut in futures:
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            fut.exception()


def _timeout_error(name: str, seconds: float | None, address: str) -> BackendTimeoutError:
    return BackendTimeoutError(
        f"Redis {name} timed out after {seconds} s (no reply from {address}); "
        "the command may or may not have run; retry or raise the timeout",
        backend="redis",
        operation=name,
        seconds=seconds,
    )
