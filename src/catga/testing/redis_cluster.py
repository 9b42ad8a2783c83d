"""A Redis Cluster of real ``redis-server`` processes on loopback, for tests and benchmarks.

:class:`RedisCluster` starts ``primaries * (1 + replicas)`` nodes with ``--cluster-enabled yes``, each
on its own free client port and cluster-bus port (``--cluster-port``) and in its own directory (its
``nodes.conf``), then joins them with ``redis-cli --cluster create`` and waits until every node
reports ``cluster_state:ok``. A node can be killed (SIGKILL, a crash) and restarted on the same ports
with its cluster configuration, so a test can take a primary away under load and watch a replica
being promoted (``--cluster-node-timeout`` is short, default 1 s, so failovers are quick).

Nothing here imports pytest or a Redis client library: state is read with ``redis-cli``. The methods
block (a few ms each); from async code call them through :func:`asyncio.to_thread`.

Example:
    >>> with RedisCluster() as cluster:  # doctest: +SKIP
    ...     client = RedisClusterClient.from_url(cluster.url)
    ...     port = cluster.primary_for(key)
    ...     cluster.kill(port)
    ...     cluster.wait_for_failover(port)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from catga.errors import ConfigurationError
from catga.testing.servers import HOST, RedisServer, ServerStartError, free_port

__all__ = ("RedisCluster", "find_redis_cli")

_CLI_TIMEOUT = 10.0
_POLL = 0.05


def find_redis_cli() -> str:
    """Locate ``redis-cli`` on ``PATH`` (Debian's ``redis-tools``, a dependency of ``redis-server``).

    Raises:
        ServerStartError: not found.
    """
    found = shutil.which("redis-cli")
    if found is None:
        raise ServerStartError("redis-cli not found on PATH; install it with: apt-get install redis-tools")
    return found


class _Node(RedisServer):
    """One cluster node: a :class:`RedisServer` with a bus port and a directory kept across restarts."""

    kind = "redis-cluster-node"

    def __init__(
        self, node_dir: Path, node_timeout_ms: int, extra_args: Sequence[str], cpu: int | None
    ) -> None:
        super().__init__(extra_args=extra_args, cpu=cpu)
        self.node_dir = node_dir
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = 0
        self._fixed_bus: int | None = None

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        if self._fixed_bus is not None:
            self.bus_port = self._fixed_bus
        else:
            self.bus_port = free_port()
            while self.bus_port == self.port:  # pragma: no cover - the kernel rarely repeats
                self.bus_port = free_port()

    def keep_ports(self) -> None:
        """Restart on the same ports from now on (its ``nodes.conf`` names them)."""
        self._fixed_port = self.port
        self._fixed_bus = self.bus_port

    def _args(self, directory: Path) -> list[str]:
        return [
            *super()._args(directory), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-port", str(self.bus_port),
            "--dir", str(self.node_dir),
        ]  # fmt: skip


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on loopback.

    Args:
        primaries: number of primaries (3 is the smallest cluster ``redis-cli`` creates).
        replicas: replicas per primary (1: a primary can fail over).
        node_timeout_ms: ``--cluster-node-timeout``: how long a silent node takes to be failed over.
        extra_args: more ``redis-server`` arguments for every node.
        cpu: pin every node to this CPU with ``taskset -c`` (benchmarks).
        start_timeout: seconds :meth:`start` (and :meth:`heal`) wait for the cluster to be ready.

    Raises:
        ConfigurationError: fewer than 3 primaries or a negative replica count.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
        cpu: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if primaries < 3 or replicas < 0:
            raise ConfigurationError(
                f"a Redis Cluster needs >= 3 primaries and >= 0 replicas, got {primaries} and {replicas}"
            )
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.start_timeout = start_timeout
        self.directory: Path | None = None
        self.nodes: list[_Node] = []

    # -- addresses -------------------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        """The client port of every node (primaries and replicas, in creation order)."""
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports) + "/"

    def node(self, port: int) -> _Node:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise ConfigurationError(f"no node of this cluster listens on port {port}")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every node, create the cluster and wait until every node says ``cluster_state:ok``.

        Raises:
            ServerStartError: a node did not start, ``redis-cli --cluster create`` failed, or the
                cluster was not ready within ``start_timeout``.
        """
        cli = find_redis_cli()
        self.directory = Path(tempfile.mkdtemp(prefix="catga-redis-cluster-"))
        try:
            for i in range(self.primaries * (1 + self.replicas)):
                node_dir = self.directory / f"node{i}"
                node_dir.mkdir()
                node = _Node(node_dir, self.node_timeout_ms, self.extra_args, self.cpu)
                self.nodes.append(node)
                node.start()
                node.keep_ports()
            command = [
                cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, timeout=60, check=False)
            if done.returncode != 0:
                raise ServerStartError(
                    "redis-cli --cluster create failed",
                    command=command,
                    log_tail=(done.stdout + done.stderr).decode(errors="replace")[-4000:],
                )
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove the cluster's directory. Idempotent."""
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def kill(self, port: int) -> None:
        """Kill the node on ``port`` with SIGKILL (a crash); its directory is kept for :meth:`restart`."""
        self.node(port).kill()

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again, on the same ports with its cluster configuration."""
        node = self.node(port)
        if not node.running:
            node.stop()  # clears the dead process; the node's own directory stays
            node.start()

    def heal(self) -> None:
        """Restart every stopped node and wait until the cluster is whole and ``ok`` again."""
        for node in self.nodes:
            if not node.running:
                self.restart(node.port)
        self.wait_ready()

    # -- state -----------------------------------------------------------------------------------
    def cli(self, port: int, *args: str) -> str:
        """Run ``redis-cli -p port args...`` and return its output ("" when the node does not answer)."""
        try:
            done = subprocess.run(
                [find_redis_cli(), "-h", HOST, "-p", str(port), *args],
                capture_output=True,
                timeout=_CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode(errors="replace") if done.returncode == 0 else ""

    def _live_ports(self) -> list[int]:
        return [node.port for node in self.nodes if node.running]

    def cluster_nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by the first live node: ``port``, ``flags``, ``slots`` per node."""
        for port in self._live_ports():
            text = self.cli(port, "cluster", "nodes")
            if text:
                out = []
                for line in text.splitlines():
                    fields = line.split()
                    if len(fields) < 8:
                        continue
                    address = fields[1].split("@", 1)[0]
                    out.append(
                        {
                            "id": fields[0],
                            "port": address.rpartition(":")[2],
                            "flags": fields[2],
                            "primary": fields[3],
                            "slots": " ".join(fields[8:]),
                        }
                    )
                return out
        return []

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries serving slots now (as the first live node sees it)."""
        return sorted(
            int(n["port"])
            for n in self.cluster_nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        )

    def primary_for(self, key: str) -> int:
        """Port of the primary serving ``key``'s slot now."""
        for port in self._live_ports():
            slot = self.cli(port, "cluster", "keyslot", key).strip()
            if slot:
                break
        else:
            raise ConfigurationError("no node of the cluster answers")
        want = int(slot)
        for n in self.cluster_nodes():
            if "master" not in n["flags"] or "fail" in n["flags"]:
                continue
            for part in n["slots"].split():
                if part.startswith("["):
                    continue
                lo, _, hi = part.partition("-")
                if int(lo) <= want <= int(hi or lo):
                    return int(n["port"])
        raise ConfigurationError(f"no primary serves slot {want} now")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every live node says ``cluster_state:ok`` and sees every node connected, every
        replica is in sync with its primary and every primary has a replica.

        Raises:
            ServerStartError: not so within ``timeout`` (default ``start_timeout``) seconds.
        """
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            if self._ready():
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    "the Redis Cluster did not become ready (cluster_state:ok on every node)",
                    log_tail="\n".join(self.cli(p, "cluster", "nodes") for p in self._live_ports()[:1]),
                )
            time.sleep(_POLL)

    def _ready(self) -> bool:
        total = len(self.nodes)
        for port in self._live_ports():
            if "cluster_state:ok" not in self.cli(port, "cluster", "info"):
                return False
            lines = [line for line in self.cli(port, "cluster", "nodes").splitlines() if line.strip()]
            if len(lines) != total or any(
                "fail" in line.split()[2] or "handshake" in line.split()[2] or "disconnected" in line
                for line in lines
            ):
                return False
            replication = self.cli(port, "info", "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False  # a replica still syncing: WAIT would not count it yet
            if "role:master" in replication and self.replicas and "connected_slaves:0" in replication:
                return False
        return True

    def wait_for_failover(self, port: int, timeout: float = 30.0) -> float:
        """Wait until the slots of the (killed) primary on ``port`` are served by another primary;
        return how long it took, in seconds.

        Raises:
            ServerStartError: no replica was promoted within ``timeout`` seconds.
        """
        start = time.monotonic()
        deadline = start + timeout
        while True:
            # done when the node no longer owns a slot (a replica took them over; a FAIL flag alone is
            # not enough: restarting an empty primary before that would wipe its replica too)
            entry = [n for n in self.cluster_nodes() if n["port"] == str(port)]
            states = [self.cli(p, "cluster", "info") for p in self._live_ports()]
            if entry and not entry[0]["slots"] and all("cluster_state:ok" in s for s in states):
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                logs = [f"--- node {n.port} ---\n{n.log_tail()[-1500:]}" for n in self.nodes if n.running]
                raise ServerStartError(
                    f"no replica of the primary on port {port} was promoted within {timeout} s",
                    log_tail="\n".join([self.cli(self._live_ports()[0], "cluster", "nodes"), *logs]),
                )
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
        return f"<RedisCluster {self.primaries}x(1+{self.replicas}) ports={self.ports}>"
