"""The benchmark harness: what a suite provides, and the runner that measures it.

A suite is a module in :mod:`catga.bench.suites` that defines ``SUITE`` (its command-line name) and
``cases(env)``, returning :class:`BenchCase` values. Each case names an implementation (``impl``:
``"catga"``, a Python peer, or the raw client) and a ``factory``: an async context manager that sets
the implementation up, yields one *operation* and tears it down afterwards::

    SUITE = "mediator"

    def cases(env: BenchEnv) -> list[BenchCase]:
        @asynccontextmanager
        async def catga_send(env: BenchEnv) -> AsyncIterator[Op]:
            app = catga.App()
            ...
            async def op(worker: int) -> None:
                await app.send(cmd)
            yield op

        return [BenchCase("send", "catga", catga_send)]

For every case and concurrency level the runner does a warm-up, then a fixed-duration closed loop:
``concurrency`` asyncio tasks (or OS threads for ``mode="threads"``) each call the operation with their
worker index, one call after another, timing each call with two :func:`time.perf_counter_ns` reads and
an ``array.append``. Throughput is total operations divided by wall time; latency percentiles are
computed over every timed call.

A case may also report latency *phases* (parts of its operation timed apart, such as the steps of a
workflow): its factory yields :class:`~catga.bench.phases.Phased` ``(op, phases)`` and records into
the :class:`~catga.bench.phases.Phases`; the runner clears them after the warm-up and stores one
:class:`~catga.bench.phases.PhaseResult` per phase in :attr:`BenchResult.phases`. See
:mod:`catga.bench.phases`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from catga.bench._measure import Measurement, measure_async, measure_threads, timer_overhead_ns
from catga.bench.phases import Phased, PhaseResult, Phases
from catga.errors import CatgaError

__all__ = (
    "AnyOp",
    "BenchCase",
    "BenchConfig",
    "BenchEnv",
    "BenchError",
    "BenchFailure",
    "BenchResult",
    "Mode",
    "Op",
    "ProgressCallback",
    "SyncOp",
    "machine_description",
    "measure_level",
    "now_iso",
    "python_description",
    "run_case",
    "timer_overhead_ns",
)

Op = Callable[[int], Awaitable[object]]
"""An async operation, awaited with the worker index (``0 .. concurrency-1``)."""

SyncOp = Callable[[int], None]
"""A blocking operation for ``mode="threads"``, called with the worker index from an OS thread."""

AnyOp = Op | SyncOp | Phased
"""What a case's factory yields: an :data:`Op`, a :data:`SyncOp`, or either with phases (:class:`Phased`)."""
Mode = Literal["async", "threads"]

DEFAULT_CONCURRENCY: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
QUICK_CONCURRENCY: tuple[int, ...] = (1, 4, 16)  # three points: a chart shows a curve, not a segment


class BenchError(CatgaError):
    """Raised when a benchmark cannot run: unknown suite, missing optional dependency, bad options."""


@dataclass(frozen=True)
class BenchCase:
    """One implementation of one benchmark case.

    Attributes:
        case: Short case name, shared by every implementation of it (``"send"``); ratios compare rows
            with the same suite, case and concurrency.
        impl: Implementation name: ``"catga"`` for ours, else the peer or raw client (``"python-cqrs"``).
        factory: ``factory(env)`` returns an async context manager that sets up, yields the operation
            (an :data:`Op`, or a :data:`SyncOp` when ``mode="threads"``; either wrapped in
            :class:`~catga.bench.phases.Phased` to report latency phases too) and tears down.
        mode: ``"async"`` (asyncio tasks) or ``"threads"`` (OS threads).
        note: Free text shown in reports (what exactly is measured).
    """

    case: str
    impl: str
    factory: Callable[[BenchEnv], AbstractAsyncContextManager[AnyOp]]
    mode: Mode = "async"
    note: str = ""


@dataclass(frozen=True)
class BenchResult:
    """The measurement of one case, implementation and concurrency level.

    Attributes:
        suite: Suite name.
        case: Case name.
        impl: Implementation name.
        concurrency: Number of concurrent workers.
        ops_per_s: Operations per second (total operations / wall time).
        p50_us: Median latency of one operation, in microseconds.
        p95_us: 95th percentile latency, in microseconds.
        p99_us: 99th percentile latency, in microseconds.
        ops: Number of timed operations.
        wall_s: Wall time of the measured run, in seconds.
        mode: ``"async"`` or ``"threads"``.
        note: The case's note.
        phases: Latency phases of the operation over the measured run, in the case's order (empty
            unless the case yields :class:`~catga.bench.phases.Phased`).
    """

    suite: str
    case: str
    impl: str
    concurrency: int
    ops_per_s: float
    p50_us: float
    p95_us: float
    p99_us: float
    ops: int = 0
    wall_s: float = 0.0
    mode: Mode = "async"
    note: str = ""
    phases: tuple[PhaseResult, ...] = ()


@dataclass(frozen=True)
class BenchFailure:
    """A case (or a whole suite, with ``case == "*"``) that could not be measured.

    Attributes:
        suite: Suite name.
        case: Case name, or ``"*"`` when the suite itself failed (import, servers, ``cases()``).
        impl: Implementation name, or ``"*"``.
        error: ``"ErrorName: message"`` (first line).
    """

    suite: str
    case: str
    impl: str
    error: str


@dataclass(frozen=True)
class BenchConfig:
    """How long and how wide to run.

    Attributes:
        concurrency: Concurrency levels, in order.
        duration: Seconds of each measured run.
        warmup: Seconds of the discarded warm-up run before each measured run.
        quick: Smoke-test mode (suites may shrink their data sets).
        loop: Event loop implementation name, recorded in reports (``"asyncio"`` or ``"uvloop"``).
    """

    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    duration: float = 2.0
    warmup: float = 0.3
    quick: bool = False
    loop: str = "asyncio"

    @classmethod
    def create(
        cls,
        *,
        quick: bool = False,
        concurrency: Sequence[int] | None = None,
        duration: float | None = None,
        warmup: float | None = None,
        loop: str = "asyncio",
    ) -> BenchConfig:
        """Build a config, filling unset values from the normal or ``quick`` defaults.

        Quick defaults: 0.2 s runs, 0.05 s warm-up, concurrency 1, 4 and 16.

        Raises:
            BenchError: A concurrency level is below 1, or a duration is not positive.
        """
        levels = tuple(concurrency) if concurrency else (QUICK_CONCURRENCY if quick else DEFAULT_CONCURRENCY)
        if not levels or any(c < 1 for c in levels):
            raise BenchError(f"concurrency levels must be >= 1, got {list(levels)}")
        run = duration if duration is not None else (0.2 if quick else 2.0)
        warm = warmup if warmup is not None else (0.05 if quick else 0.3)
        if run <= 0 or warm < 0:
            raise BenchError(f"duration must be > 0 and warm-up >= 0, got {run} and {warm}")
        return cls(concurrency=levels, duration=run, warmup=warm, quick=quick, loop=loop)


def _pin_client_away_from(server_cpu: int) -> None:
    """Keep this process off the server's CPU, as if the server ran on its own machine.

    On a 2-core machine an unpinned Go server and the Python client fight for both cores; pinning the
    server to one core (``GOMAXPROCS=1``) and the client to the others simulates the usual deployment
    (see ``docs/benchmarks.md``). Every implementation in the run is pinned the same way.
    """
    if hasattr(os, "sched_setaffinity"):
        others = os.sched_getaffinity(0) - {server_cpu}
        if others:
            os.sched_setaffinity(0, others)


@dataclass
class BenchEnv:
    """What suites get from the harness: the mode and lazily started servers.

    ``nats_url()`` / ``redis_url()`` return ``$CATGA_NATS_URL`` / ``$CATGA_REDIS_URL`` when set (loopback
    only), else start a ``nats-server`` (JetStream) / ``redis-server`` on a free loopback port on first
    call; :meth:`aclose` stops what was started. Use it as ``async with BenchEnv(...) as env``.

    Attributes:
        quick: Smoke-test mode: suites should keep set-up data small.
        max_concurrency: The highest concurrency level of this run (for per-worker state).
        server_cpu: Pin started servers to this CPU (``taskset``), or None.
    """

    quick: bool = False
    max_concurrency: int = 32
    server_cpu: int | None = None
    _servers: dict[str, object] = field(default_factory=dict, repr=False)
    _urls: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def nats_url(self) -> str:
        """URL of a NATS server with JetStream (started on first call unless ``$CATGA_NATS_URL`` is set)."""
        return await self._url("nats", "CATGA_NATS_URL")

    async def redis_url(self) -> str:
        """URL of a Redis server (started on first call unless ``$CATGA_REDIS_URL`` is set)."""
        return await self._url("redis", "CATGA_REDIS_URL")

    async def postgres_url(self) -> str:
        """URL of a PostgreSQL server (started on first call unless ``$CATGA_POSTGRES_URL`` is set)."""
        return await self._url("postgres", "CATGA_POSTGRES_URL")

    async def redis_cluster_url(self) -> str:
        """URL of a Redis Cluster, 3 primaries + 3 replicas (started on first call unless
        ``$CATGA_REDIS_CLUSTER_URL`` is set)."""
        return await self._url("redis-cluster", "CATGA_REDIS_CLUSTER_URL")

    @property
    def started_servers(self) -> tuple[str, ...]:
        """Kinds of servers this env started itself (``"nats"``, ``"redis"``, ``"redis-cluster"``,
        ``"postgres"``)."""
        return tuple(self._servers)

    async def _url(self, kind: str, env_var: str) -> str:
        url = self._urls.get(kind)
        if url is not None:
            return url
        async with self._lock:
            url = self._urls.get(kind)
            if url is not None:
                return url
            from catga.testing.redis_cluster import RedisCluster
            from catga.testing.servers import NatsServer, RedisServer, url_from_env

            url = url_from_env(env_var)
            if url is None:
                server: Any
                if kind == "postgres":
                    from catga.testing.postgres import PostgresServer

                    server = PostgresServer()
                elif kind == "nats":
                    server = NatsServer(cpu=self.server_cpu)
                elif kind == "redis":
                    server = RedisServer(cpu=self.server_cpu)
                else:
                    server = RedisCluster(cpu=self.server_cpu)
                await asyncio.to_thread(server.start)
                self._servers[kind] = server
                url = server.url
                if self.server_cpu is not None:
                    _pin_client_away_from(self.server_cpu)
            self._urls[kind] = url
            return url

    async def aclose(self) -> None:
        """Stop the servers this env started (shielded from cancellation)."""
        servers = list(self._servers.values())
        self._servers.clear()
        self._urls.clear()
        for server in servers:
            stop = getattr(server, "stop", None)
            if stop is not None:
                await asyncio.shield(asyncio.to_thread(stop))

    async def __aenter__(self) -> BenchEnv:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


ProgressCallback = Callable[[BenchResult], None]
"""Called with each result as soon as it is measured (the runner keeps it and advances its progress bar)."""


async def run_case(
    suite: str,
    case: BenchCase,
    env: BenchEnv,
    config: BenchConfig,
    *,
    on_result: ProgressCallback | None = None,
) -> list[BenchResult]:
    """Set a case up once, then warm up and measure it at every concurrency level.

    Args:
        suite: The suite name recorded in results.
        case: The case to run.
        env: The benchmark environment passed to the factory.
        config: Durations and concurrency levels.
        on_result: Called with each result as soon as it is measured, so that a later failure of the
            same case keeps the levels already measured.

    Returns:
        One result per concurrency level.

    Raises:
        Exception: Whatever the factory or the operation raised (the caller records a failure).
    """
    results: list[BenchResult] = []
    async with case.factory(env) as op:
        for level in config.concurrency:
            result = await measure_level(suite, case, op, level, config)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


async def measure_level(
    suite: str, case: BenchCase, op: AnyOp, level: int, config: BenchConfig
) -> BenchResult:
    """Warm up, then measure ``op`` (already set up by ``case.factory``) at one concurrency level.

    A :class:`~catga.bench.phases.Phased` operation is unwrapped (timed like a bare one); its phases
    are cleared after the warm-up and summarised after the measured run.

    Raises:
        Exception: Whatever the operation raised.
    """
    phases: Phases | None = None
    if isinstance(op, Phased):
        phases = op.phases
        op = op.op  # type: ignore[assignment]
    if config.warmup > 0:
        await _measure(case, op, level, config.warmup)
    if phases is not None:
        phases.reset()
    m = await _measure(case, op, level, config.duration)
    return BenchResult(
        suite=suite,
        case=case.case,
        impl=case.impl,
        concurrency=level,
        ops_per_s=m.ops_per_s,
        p50_us=m.p50_us,
        p95_us=m.p95_us,
        p99_us=m.p99_us,
        ops=m.ops,
        wall_s=m.wall_s,
        mode=case.mode,
        note=case.note,
        phases=() if phases is None else phases.results(),
    )


async def _measure(case: BenchCase, op: AnyOp, level: int, duration: float) -> Measurement:
    if case.mode == "threads":
        sync_op: SyncOp = op  # type: ignore[assignment]
        return await asyncio.to_thread(measure_threads, sync_op, level, duration)
    if case.mode != "async":
        raise BenchError(f"case {case.case!r} of {case.impl!r} has unknown mode {case.mode!r}")
    async_op: Op = op  # type: ignore[assignment]
    return await measure_async(async_op, level, duration)


def machine_description() -> str:
    """One line describing the machine: platform, CPU model and count."""
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [platform.platform(), platform.machine()]
    if model:
        parts.append(model)
    parts.append(f"{cpus} CPUs")
    return ", ".join(parts)


def python_description() -> str:
    """The Python implementation and version, e.g. ``"CPython 3.11.7"``."""
    import platform

    return f"{platform.python_implementation()} {platform.python_version()}"


def now_iso() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
