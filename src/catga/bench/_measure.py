"""Closed-loop measurement: timed calls by N asyncio tasks or N threads, and percentiles.

The per-call cost of measuring is two ``perf_counter_ns()`` reads, a subtraction and an
``array('q').append`` (no allocation per call); the end timestamp of one call doubles as the deadline
check for the next. :func:`timer_overhead_ns` measures that cost on this machine.
"""

from __future__ import annotations

import asyncio
import threading
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

__all__ = ("Measurement", "measure_async", "measure_threads", "percentiles", "summarize", "timer_overhead_ns")


#: With concurrency > 1, each asyncio worker yields to the loop after this many calls (see measure_async).
YIELD_EVERY = 32


@dataclass(frozen=True)
class Measurement:
    """Raw outcome of one measured run."""

    ops: int
    wall_s: float
    ops_per_s: float
    p50_us: float
    p95_us: float
    p99_us: float


async def measure_async(
    op: Callable[[int], Awaitable[object]], concurrency: int, duration: float
) -> Measurement:
    """Run ``concurrency`` tasks, each awaiting ``op(worker)`` back to back for ``duration`` seconds.

    Every task makes at least one call (so every worker index is exercised even when the operation
    never yields), then starts new calls only while the deadline has not passed; wall time runs from
    the start until the last task is done. With more than one task, each task also yields to the event
    loop (untimed) every :data:`YIELD_EVERY` calls: an operation that never suspends (an in-memory
    store, a mediator with trivial handlers) would otherwise let worker 0 run alone for the whole run,
    and "concurrency 16" would measure concurrency 1.
    """
    samples = [array("q") for _ in range(concurrency)]
    start = perf_counter_ns()
    deadline = start + int(duration * 1e9)

    async def worker(w: int) -> None:
        append = samples[w].append
        pc = perf_counter_ns
        n = 0
        yield_every = YIELD_EVERY if concurrency > 1 else 0
        sleep = asyncio.sleep
        while True:  # at least one call per worker, then until the deadline
            t0 = pc()
            await op(w)
            t1 = pc()
            append(t1 - t0)
            if t1 >= deadline:
                break
            if yield_every:
                n += 1
                if n >= yield_every:
                    n = 0
                    await sleep(0)

    if concurrency == 1:
        await worker(0)
    else:
        tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    wall = perf_counter_ns() - start
    return summarize(samples, wall)


def measure_threads(op: Callable[[int], None], concurrency: int, duration: float) -> Measurement:
    """Run ``concurrency`` OS threads, each calling ``op(worker)`` back to back for ``duration`` seconds.

    The threads start together (a barrier) and each makes at least one call; the first exception
    raised by ``op`` stops the others and is re-raised here once every thread has stopped.
    """
    samples = [array("q") for _ in range(concurrency)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    deadline = [0]

    def worker(w: int) -> None:
        append = samples[w].append
        pc = perf_counter_ns
        barrier.wait()
        end = deadline[0]
        try:
            while not stop.is_set():  # at least one call per worker, then until the deadline
                t0 = pc()
                op(w)
                t1 = pc()
                append(t1 - t0)
                if t1 >= end:
                    break
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    start = perf_counter_ns()
    deadline[0] = start + int(duration * 1e9)
    barrier.wait()
    for t in threads:
        t.join()
    wall = perf_counter_ns() - start
    if errors:
        raise errors[0]
    return summarize(samples, wall)


def summarize(samples: Sequence[array[int]], wall_ns: int) -> Measurement:
    """Turn per-worker latency arrays (ns) and the wall time into a :class:`Measurement`."""
    ops = sum(len(s) for s in samples)
    wall_s = max(wall_ns, 1) / 1e9
    p50, p95, p99 = percentiles(samples, (50.0, 95.0, 99.0))
    return Measurement(
        ops=ops, wall_s=wall_s, ops_per_s=ops / wall_s, p50_us=p50 / 1e3, p95_us=p95 / 1e3, p99_us=p99 / 1e3
    )


def percentiles(samples: Sequence[array[int]], qs: Sequence[float]) -> tuple[float, ...]:
    """Percentiles (linear interpolation, like ``numpy.percentile``) over all samples, in ns.

    Uses numpy when it is installed (no per-sample Python objects), else a sorted list.
    Returns zeros when there are no samples.
    """
    total = sum(len(s) for s in samples)
    if total == 0:
        return tuple(0.0 for _ in qs)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with matplotlib in catga[bench]
        data = sorted(v for s in samples for v in s)
        return tuple(_interpolate(data, q) for q in qs)
    joined = np.concatenate([np.frombuffer(s, dtype=np.int64) for s in samples if len(s)])
    return tuple(float(v) for v in np.percentile(joined, list(qs)))


def _interpolate(data: Sequence[int], q: float) -> float:
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def timer_overhead_ns(samples: int = 20_000) -> float:
    """Median cost in ns of the harness's per-call bookkeeping around an empty async call."""

    async def noop(w: int) -> None:
        return None

    async def run() -> float:
        buf: array[int] = array("q")
        append = buf.append
        pc = perf_counter_ns
        for _ in range(samples):
            t0 = pc()
            await noop(0)
            t1 = pc()
            append(t1 - t0)
        return percentiles([buf], (50.0,))[0]

    coro = run()
    try:
        coro.send(None)
    except StopIteration as done:
        return float(done.value)
    coro.close()  # pragma: no cover - noop never suspends
    raise RuntimeError("timer calibration suspended unexpectedly")  # pragma: no cover
