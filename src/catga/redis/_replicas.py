"""Opt-in ``WAIT`` after writes (``wait_replicas``), shared by the cluster and Sentinel clients.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so a
failover can lose it. ``WAIT N <ms>`` sent on a connection returns how many replicas acknowledged
everything that connection wrote so far; the clients pipeline one behind the writes and report fewer
than N as an error (the write is on the primary, not confirmed beyond).

One ``WAIT`` per event-loop tick and connection: the writes issued in one tick are written first and
share the ``WAIT`` queued after them (it covers every earlier write of the connection), so concurrent
writers do not each hold the pipelined connection for a replica round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from catga.errors import BackendError, BackendUnavailableError, ConfigurationError
from catga.redis._resp import RespConnection

__all__ = ("WaitSettings", "is_write")

#: Commands that change data: followed by ``WAIT`` when ``wait_replicas`` is set.
_WRITES = frozenset(
    {
        b"SET", b"DEL", b"UNLINK", b"INCR", b"INCRBY", b"XADD", b"XACK", b"XDEL", b"XGROUP", b"XCLAIM",
        b"XAUTOCLAIM", b"XTRIM", b"RPUSH", b"LPUSH", b"PEXPIRE", b"EXPIRE", b"HSET", b"HDEL", b"ZADD",
        b"ZREM", b"EVALSHA", b"EVAL", b"FCALL",
    }
)  # fmt: skip


def is_write(args: Sequence[Any]) -> bool:
    """Whether the command ``args`` changes data (scripts count as writes)."""
    name = args[0]
    return (name.encode() if isinstance(name, str) else bytes(name)).upper() in _WRITES


class WaitSettings:
    """``wait_replicas`` / ``wait_timeout`` of a client, checked once.

    Args:
        replicas: replicas that must acknowledge each write (0: do not wait).
        timeout: seconds one ``WAIT`` may take.

    Raises:
        ConfigurationError: a negative or non-integer count, or a timeout not > 0.
    """

    __slots__ = ("_pending", "ms", "replicas", "timeout")

    def __init__(self, replicas: int = 0, timeout: float = 1.0) -> None:
        if type(replicas) is not int or replicas < 0:
            raise ConfigurationError(f"wait_replicas must be an int >= 0, got {replicas!r}")
        if not timeout > 0:
            raise ConfigurationError(f"wait_timeout must be > 0 seconds, got {timeout!r}")
        self.replicas = replicas
        self.timeout = timeout
        self.ms = max(1, round(timeout * 1000))
        self._pending: dict[RespConnection, asyncio.Future[Any]] = {}

    @classmethod
    def from_query(cls, query: dict[str, str]) -> WaitSettings:
        """From a URL's ``wait_replicas`` / ``wait_timeout`` options (defaults 0 and 1.0).

        Raises:
            ConfigurationError: a value is not a number.
        """
        try:
            replicas = int(query.get("wait_replicas", "0"))
            timeout = float(query.get("wait_timeout", "1.0"))
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid wait_replicas / wait_timeout in the Redis URL: {exc}"
            ) from None
        return cls(replicas, timeout)

    @classmethod
    def from_url(cls, url: str) -> WaitSettings:
        """From the query of a ``redis+cluster://`` / ``redis+sentinel://`` URL (see :meth:`from_query`).

        Raises:
            ConfigurationError: a value is not a number.
        """
        return cls.from_query({k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()})

    def command(self) -> tuple[Any, ...]:
        """The ``WAIT`` command to pipeline behind a write."""
        return ("WAIT", self.replicas, self.ms)

    def send(
        self, conn: RespConnection, commands: list[tuple[Any, ...]], timeout: float | None
    ) -> list[asyncio.Future[Any]]:
        """Queue ``commands`` on ``conn`` followed by this tick's shared ``WAIT``.

        Returns:
            The commands' reply futures, then one for the ``WAIT`` reply (the number of replicas).
        """
        futures = conn.send_many(commands, timeout)
        shared = self._pending.get(conn)
        if shared is None:
            loop = asyncio.get_running_loop()
            shared = self._pending[conn] = loop.create_future()
            shared.add_done_callback(_retrieve)
            loop.call_soon(self._send_wait, conn, shared, None if timeout is None else timeout + self.timeout)
        futures.append(asyncio.shield(shared))
        return futures

    def _send_wait(self, conn: RespConnection, shared: asyncio.Future[Any], timeout: float | None) -> None:
        """Send the tick's ``WAIT`` (after the writes, which were queued first) and relay its reply."""
        self._pending.pop(conn, None)
        try:
            reply = conn.send(self.command(), timeout)
        except BackendUnavailableError as exc:
            if not shared.done():
                shared.set_exception(exc)
            return

        def relay(done: asyncio.Future[Any]) -> None:
            if shared.done():
                return
            if done.cancelled():
                shared.cancel()
            elif done.exception() is not None:
                shared.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                shared.set_result(done.result())

        reply.add_done_callback(relay)

    def check(self, command: Any, acked: Any, address: str) -> None:
        """Raise unless ``acked`` (the ``WAIT`` reply) reaches :attr:`replicas`.

        Raises:
            BackendError: fewer replicas acknowledged the write in time.
        """
        if type(acked) is int and acked >= self.replicas:
            return
        raise BackendError(
            f"Redis {command} was applied on the primary {address} but only {acked} of {self.replicas} "
            f"replicas acknowledged it within {self.timeout} s (wait_replicas); it is lost if that primary "
            "fails before replicating it. Check the replicas, or retry if the write is idempotent",
            backend="redis",
        )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Read a shared WAIT's exception, so that it is never "never retrieved" when no caller awaits it."""
    if not fut.cancelled():
        fut.exception()
