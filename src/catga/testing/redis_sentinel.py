"""A Sentinel-managed Redis (a primary, its replicas, three sentinels) on loopback, for tests.

:class:`RedisSentinel` starts a primary and ``replicas`` replicas (``--replicaof``) as
:class:`~catga.testing.servers.RedisServer` processes, then ``sentinels`` ``redis-server --sentinel``
processes monitoring the primary as ``service`` (quorum 2, ``down-after-milliseconds`` 1000 by
default, so a failover takes a few seconds). Every process has its own free port and directory. A data
node can be killed (SIGKILL) and restarted on the same port; the sentinels make a restarted old
primary a replica of the new one.

State is read with ``redis-cli``; the methods block, so call them through :func:`asyncio.to_thread`
from async code.

Example:
    >>> with RedisSentinel() as sentinel:  # doctest: +SKIP
    ...     client = RedisClient.from_url(sentinel.url)
    ...     old = sentinel.primary_port()
    ...     sentinel.kill(old)
    ...     sentinel.wait_for_failover(old)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from catga.errors import ConfigurationError
from catga.testing.redis_cluster import find_redis_cli
from catga.testing.servers import HOST, RedisServer, ServerStartError

__all__ = ("RedisSentinel",)

_POLL = 0.05


class _Sentinel(RedisServer):
    """``redis-server <conf> --sentinel`` with a configuration file written into its directory."""

    kind = "redis-sentinel"

    def __init__(self, service: str, primary_port: int, down_after_ms: int) -> None:
        super().__init__()
        self.service = service
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms

    def _args(self, directory: Path) -> list[str]:
        conf = directory / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {directory}\n"
            f"sentinel monitor {self.service} {HOST} {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {max(5000, 5 * self.down_after_ms)}\n"
        )
        return [str(conf), "--sentinel"]


class RedisSentinel:
    """A primary with ``replicas`` replicas watched by ``sentinels`` sentinels, on loopback.

    Args:
        replicas: replicas of the primary (1: a failover is possible).
        sentinels: sentinel processes (3: a quorum of 2 survives one).
        service: the monitored name, the path of :attr:`url`.
        down_after_ms: ``sentinel down-after-milliseconds``: how long a silent primary takes to be
            declared down.
        extra_args: more ``redis-server`` arguments for the data nodes.
        start_timeout: seconds :meth:`start` and :meth:`heal` wait for readiness.

    Raises:
        ConfigurationError: fewer than 1 replica or 1 sentinel.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        service: str = "mymaster",
        down_after_ms: int = 1000,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        if replicas < 1 or sentinels < 1:
            raise ConfigurationError(f"need >= 1 replica and >= 1 sentinel, got {replicas} and {sentinels}")
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.service = service
        self.down_after_ms = down_after_ms
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.data: list[RedisServer] = []
        self.sentinels: list[_Sentinel] = []

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,.../<service>``."""
        return "redis+sentinel://" + ",".join(f"{HOST}:{s.port}" for s in self.sentinels) + f"/{self.service}"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the data nodes, then the sentinels; wait until the sentinels see every replica.

        Raises:
            ServerStartError: a process did not start, or the set was not ready in time.
        """
        try:
            primary = RedisServer(extra_args=self.extra_args).start()
            primary._fixed_port = primary.port  # restarts keep the address the sentinels know
            self.data.append(primary)
            for _ in range(self.replica_count):
                args = [*self.extra_args, "--replicaof", HOST, str(primary.port)]
                replica = RedisServer(extra_args=args).start()
                replica._fixed_port = replica.port
                self.data.append(replica)
            for _ in range(self.sentinel_count):
                self.sentinels.append(_Sentinel(self.service, primary.port, self.down_after_ms).start())
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process. Idempotent."""
        for server in [*self.sentinels, *self.data]:
            server.stop()
        self.sentinels, self.data = [], []

    def node(self, port: int) -> RedisServer:
        """The data node on ``port``."""
        for server in self.data:
            if server.port == port:
                return server
        raise ConfigurationError(f"no data node of this set listens on port {port}")

    def kill(self, port: int) -> None:
        """Kill the data node on ``port`` with SIGKILL (a crash)."""
        self.node(port).kill()

    def restart(self, port: int) -> None:
        """Start the data node on ``port`` again (empty: no persistence); the sentinels make it a replica
        of the current primary."""
        server = self.node(port)
        if not server.running:
            server.stop()
            server.start()  # the same port: the address the sentinels know

    def heal(self) -> None:
        """Restart every stopped data node and wait until the set is ready again."""
        for server in self.data:
            if not server.running:
                self.restart(server.port)
        self.wait_ready()

    # -- state -----------------------------------------------------------------------------------
    def cli(self, port: int, *args: str) -> str:
        """``redis-cli -p port args...`` output ("" when the process does not answer)."""
        try:
            done = subprocess.run(
                [find_redis_cli(), "-h", HOST, "-p", str(port), *args],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode(errors="replace") if done.returncode == 0 else ""

    def primary_port(self) -> int | None:
        """The primary's port as the first answering sentinel names it (None: none answers)."""
        for sentinel in self.sentinels:
            lines = self.cli(sentinel.port, "sentinel", "get-master-addr-by-name", self.service).split()
            if len(lines) == 2:
                return int(lines[1])
        return None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every sentinel names a running primary, every other running data node is its
        replica in sync, and every sentinel sees them all.

        Raises:
            ServerStartError: not so within ``timeout`` (default ``start_timeout``) seconds.
        """
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while not self._ready():
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    "the Sentinel set did not become ready",
                    log_tail="\n".join(
                        f"--- {s.port} ---\n{s.log_tail()[-1500:]}" for s in self.sentinels[:1]
                    ),
                )
            time.sleep(_POLL)

    def _ready(self) -> bool:
        ports = {
            tuple(self.cli(s.port, "sentinel", "get-master-addr-by-name", self.service).split())
            for s in self.sentinels
        }
        if len(ports) != 1:
            return False
        (addr,) = ports
        if len(addr) != 2:
            return False
        primary = int(addr[1])
        if primary not in [s.port for s in self.data if s.running]:
            return False
        if "role:master" not in self.cli(primary, "info", "replication"):
            return False
        running_replicas = [s.port for s in self.data if s.running and s.port != primary]
        for port in running_replicas:
            info = self.cli(port, "info", "replication")
            if f"master_port:{primary}" not in info or "master_link_status:up" not in info:
                return False
        for sentinel in self.sentinels:
            seen = self.cli(sentinel.port, "sentinel", "replicas", self.service)
            if any(f"\n{port}\n" not in f"\n{seen}" for port in running_replicas):
                return False
            if "s_down" in seen or "disconnected" in seen:
                return False
        return True

    def wait_for_failover(self, port: int, timeout: float = 30.0) -> float:
        """Wait until the sentinels name another primary than ``port`` and it says ``role:master``;
        return the seconds it took.

        Raises:
            ServerStartError: no failover within ``timeout`` seconds.
        """
        start = time.monotonic()
        while True:
            now = self.primary_port()
            if now is not None and now != port and "role:master" in self.cli(now, "info", "replication"):
                return time.monotonic() - start
            if time.monotonic() - start >= timeout:
                raise ServerStartError(f"the sentinels did not fail over from port {port} within {timeout} s")
            time.sleep(_POLL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisSentinel {self.service} data={[s.port for s in self.data]}>"
