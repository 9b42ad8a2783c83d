"""Opt-in ``WAIT`` after writes (``wait_replicas``), shared by the cluster and Sentinel clients.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so a
failover can lose it. ``WAIT N <ms>`` sent on the same connection right after the write returns how
many replicas acknowledged everything that connection wrote so far; the clients pipeline it behind
each write and report fewer than N as an error (the write is on the primary, not confirmed beyond).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from catga.errors import BackendError, ConfigurationError

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

    __slots__ = ("ms", "replicas", "timeout")

    def __init__(self, replicas: int = 0, timeout: float = 1.0) -> None:
        if type(replicas) is not int or replicas < 0:
            raise ConfigurationError(f"wait_replicas must be an int >= 0, got {replicas!r}")
        if not timeout > 0:
            raise ConfigurationError(f"wait_timeout must be > 0 seconds, got {timeout!r}")
        self.replicas = replicas
        self.timeout = timeout
        self.ms = max(1, round(timeout * 1000))

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

    def command(self) -> tuple[Any, ...]:
        """The ``WAIT`` command to pipeline behind a write."""
        return ("WAIT", self.replicas, self.ms)

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
