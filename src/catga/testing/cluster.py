"""A JetStream cluster of real ``nats-server`` processes on loopback, for fault tests.

:class:`NatsCluster` starts three (or more) :class:`~catga.testing.servers.NatsServer` nodes named
``n0``, ``n1``, ... with JetStream, each on its own free client, cluster-route and monitoring ports
and with its own store directory, routed to each other as one cluster. A node can be stopped, killed
(SIGKILL, a crash) and restarted on the same ports with its data, so tests can take the leader of a
replicated stream away mid-load. Leaders are read from each node's monitoring endpoint (``/jsz``), so
finding them needs no NATS client and works while a node is down.

Nothing here imports pytest; the ``nats_cluster`` fixture of :mod:`catga.testing.pytest_plugin` is
built on this class. The methods block (HTTP to loopback, a few ms each); from async code call the
``wait_*`` methods through :func:`asyncio.to_thread`.

Example:
    >>> with NatsCluster() as cluster:  # doctest: +SKIP
    ...     cluster.wait_for_meta_leader()
    ...     store = await NatsEventStore.connect(cluster.urls, replicas=3)
    ...     await store.append("order-1", [OrderPlaced("order-1", 42)], NO_STREAM)
    ...     leader = cluster.stream_leader(store.stream)
    ...     cluster.kill_node(leader)
    ...     cluster.wait_for_stream_leader(store.stream, exclude=leader)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from catga.errors import ConfigurationError
from catga.testing.servers import HOST, NatsServer, ServerStartError, free_port

__all__ = ("NatsCluster",)

_HTTP_TIMEOUT = 0.5
_POLL = 0.02
_PORT_ATTEMPTS = 3


class NatsCluster:
    """A JetStream cluster of ``size`` ``nats-server`` nodes on loopback.

    Node ``i`` has ``server_name`` ``n<i>``, the cluster is named ``name``. Ports (client, cluster
    route, monitoring) are free ones chosen at :meth:`start` and kept for the cluster's life, so a
    restarted node comes back at the same address with its JetStream data. Everything lives under
    one temporary directory, removed by :meth:`stop`.

    Args:
        size: Number of nodes (3 gives a cluster that survives the loss of one).
        name: The cluster name.
        binary: Path of ``nats-server``; default :func:`~catga.testing.servers.find_nats_server`.
        extra_args: More command-line arguments for every node.
        start_timeout: Seconds each node may take to answer when started.

    Raises:
        ConfigurationError: ``size`` is below 1.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "catga",
        binary: str | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ConfigurationError(f"a cluster needs at least one node, got size={size}")
        self.size = size
        self.name = name
        self._binary = binary
        self._extra_args = list(extra_args)
        self._start_timeout = start_timeout
        self.directory: Path | None = None
        self.nodes: list[NatsServer] = []
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every node (on fresh free ports) and return once each answers.

        It does not wait for a JetStream meta leader: call :meth:`wait_for_meta_leader`.

        Raises:
            ServerStartError: A node did not start (the message has its command and log tail).
            RuntimeError: The cluster is already started.
        """
        if self.nodes:
            raise RuntimeError(f"{self!r} was already started; call stop() first")
        attempt = 0
        while True:
            attempt += 1
            self.directory = Path(tempfile.mkdtemp(prefix="catga-nats-cluster-"))
            self.nodes = self._make_nodes(self.directory)
            try:
                for node in self.nodes:
                    node.start()
                return self
            except ServerStartError as exc:
                self.stop()
                if attempt >= _PORT_ATTEMPTS or "address already in use" not in str(exc).lower():
                    raise
                # lost a race for a port: try again with fresh ones

    def _make_nodes(self, directory: Path) -> list[NatsServer]:
        ports: set[int] = set()
        while len(ports) < 3 * self.size:
            ports.add(free_port())
        chosen = sorted(ports)
        clients, routes, monitors = (chosen[i::3] for i in range(3))
        route_urls = ",".join(f"nats://{HOST}:{port}" for port in routes)
        nodes = []
        for i in range(self.size):
            args = [
                "-n", f"n{i}", "--cluster_name", self.name,
                "--cluster", f"nats://{HOST}:{routes[i]}", "--routes", route_urls,
                *self._extra_args,
            ]  # fmt: skip
            store = directory / f"n{i}"
            store.mkdir()
            nodes.append(
                NatsServer(
                    binary=self._binary,
                    port=clients[i],
                    monitor_port=monitors[i],
                    store_dir=store,
                    extra_args=args,
                    start_timeout=self._start_timeout,
                )
            )
        return nodes

    def stop(self) -> None:
        """Stop every node and remove the cluster's directory (store dirs included). Idempotent."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

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
        state = ",".join("up" if node.running else "down" for node in self.nodes) or "stopped"
        return f"<NatsCluster {self.name!r} size={self.size} {state}>"

    # -- nodes -----------------------------------------------------------------------------
    @property
    def urls(self) -> str:
        """Client URLs of every node (running or not), comma-joined, for ``connect()``."""
        return ",".join(node.url for node in self.nodes)

    def node(self, index: int) -> NatsServer:
        """The node ``n<index>``."""
        return self.nodes[index]

    def index_of(self, server_name: str) -> int | None:
        """The index of the node whose ``server_name`` is ``server_name`` (``"n1"`` -> 1), or None."""
        if server_name.startswith("n") and server_name[1:].isdigit():
            index = int(server_name[1:])
            if 0 <= index < len(self.nodes):
                return index
        return None

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` gracefully (SIGTERM), keeping its data for :meth:`restart_node`."""
        self.nodes[index].terminate()

    def kill_node(self, index: int) -> None:
        """Kill node ``index`` with SIGKILL (a crash), keeping its data for :meth:`restart_node`."""
        self.nodes[index].kill()

    def restart_node(self, index: int) -> None:
        """(Re)start node ``index`` on its ports with its data, stopping it first if it runs.

        Raises:
            ServerStartError: The node did not come back.
        """
        node = self.nodes[index]
        node.terminate()
        node.stop()  # forget the process; the store dir is the cluster's and is kept
        node.start()

    def heal(self, *, timeout: float = 30.0) -> None:
        """Start every node that is down, then wait until a stream can be placed on every node.

        Raises:
            ServerStartError: A node did not come back.
            TimeoutError: Not so within ``timeout`` seconds.
        """
        for index, node in enumerate(self.nodes):
            if not node.running:
                self.restart_node(index)
        _wait(self._can_place, timeout, f"{self!r} cannot place a stream on all {self.size} nodes")

    def _can_place(self) -> int | None:
        """The meta leader once it placed (and removed) a stream replicated on every node, else None.

        The leader's view of its peers lags behind a restart (a node that shut down stays "offline"
        for placement until the leader hears from it again), so the only sure test is to try.
        """
        leader = self.meta_leader()
        if leader is None:
            return None
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(self._place_probe())))
        thread.start()
        thread.join()
        return leader if result and result[0] else None

    async def _place_probe(self) -> bool:
        import nats
        import nats.errors
        import nats.js.api

        name = f"CATGA_CLUSTER_PROBE_{uuid.uuid4().hex[:8]}"
        try:
            client = await nats.connect(
                [node.url for node in self.nodes if node.running],
                connect_timeout=1,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
        except Exception:
            return False
        try:
            js = client.jetstream(timeout=2.0)
            config = nats.js.api.StreamConfig(
                name=name,
                subjects=[],
                num_replicas=self.size,
                storage=nats.js.api.StorageType.MEMORY,
            )
            try:
                await js.add_stream(config)
            except Exception:
                return False
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
            return True
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    # -- leaders ---------------------------------------------------------------------------
    def jsz(self, index: int, query: str = "") -> dict[str, Any] | None:
        """Node ``index``'s ``/jsz`` monitoring document (``query`` e.g. ``"streams=true"``), or None.

        None when the node is down or does not answer within 0.5 s.
        """
        node = self.nodes[index]
        if not node.running:
            return None
        url = f"{node.monitor_url}/jsz" + (f"?{query}" if query else "")
        try:
            with self._opener.open(url, timeout=_HTTP_TIMEOUT) as response:
                document: dict[str, Any] = json.loads(response.read())
                return document
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def meta_leader(self) -> int | None:
        """The node that leads the JetStream meta group (it says so itself) and reports every other
        running node as a current peer, or None.

        A leader elected a moment ago may not know every peer yet: placing a replicated stream then
        fails with "no suitable peers for placement", so such a leader does not count yet.
        """
        for index in range(len(self.nodes)):
            document = self.jsz(index)
            if document is None:
                continue
            meta = document.get("meta_cluster") or {}
            if meta.get("leader") != f"n{index}":
                continue
            current = {r.get("name") for r in meta.get("replicas") or () if r.get("current")}
            others = {f"n{i}" for i, node in enumerate(self.nodes) if i != index and node.running}
            if others <= current:
                return index
        return None

    def stream_leader(self, stream: str, *, account: str | None = None) -> int | None:
        """The node leading ``stream``'s RAFT group, as that node itself reports it, or None.

        Followers may still name a dead leader for a while after a crash; only a node that reports
        itself as the leader counts, so None means "no leader right now".

        Args:
            stream: The stream name.
            account: Only look in this account (default: any account).
        """
        for index in range(len(self.nodes)):
            document = self.jsz(index, "accounts=true&streams=true")
            if document is None:
                continue
            for details in document.get("account_details") or ():
                if account is not None and details.get("name") != account:
                    continue
                for stream_detail in details.get("stream_detail") or ():
                    if stream_detail.get("name") != stream:
                        continue
                    cluster = stream_detail.get("cluster") or {}
                    if cluster.get("leader") == f"n{index}":
                        return index
        return None

    def wait_for_meta_leader(self, *, timeout: float = 30.0) -> int:
        """Wait until the JetStream meta group has a leader; return its index.

        Raises:
            TimeoutError: None within ``timeout`` seconds.
        """
        return _wait(self.meta_leader, timeout, f"no JetStream meta leader in {self!r}")

    def wait_for_stream_leader(
        self, stream: str, *, exclude: int | None = None, timeout: float = 30.0
    ) -> int:
        """Wait until ``stream`` has a leader other than node ``exclude``; return its index.

        Raises:
            TimeoutError: None within ``timeout`` seconds.
        """

        def probe() -> int | None:
            leader = self.stream_leader(stream)
            return None if leader == exclude else leader

        return _wait(probe, timeout, f"no leader for stream {stream!r} in {self!r}")


def _wait(probe: Callable[[], int | None], timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} after {timeout:g} s")
        time.sleep(_POLL)
