"""Running whole suites: load them, collect their cases, measure each, record failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Protocol

from catga.bench.discovery import SUITES_PACKAGE, Suite, load_suite, suite_modules
from catga.bench.harness import (
    AnyOp,
    BenchCase,
    BenchConfig,
    BenchEnv,
    BenchFailure,
    machine_description,
    measure_level,
    now_iso,
    python_description,
    timer_overhead_ns,
)
from catga.bench.report import BenchReport

__all__ = ("ProgressSink", "SilentProgress", "run_suites")


class ProgressSink(Protocol):
    """Receives progress events from :func:`run_suites` (the CLI draws a rich progress bar)."""

    def plan(self, total: int) -> None:
        """Called once with the number of (case, concurrency) runs to come."""

    def start(self, suite: str, case: BenchCase) -> None:
        """Called before a case is set up."""

    def advance(self, steps: int) -> None:
        """Called after each measured level (1), or with the levels skipped after a failure."""


@dataclass
class SilentProgress:
    """A :class:`ProgressSink` that only counts (for tests and ``--quiet``)."""

    total: int = 0
    done: int = 0
    started: list[tuple[str, str, str]] = field(default_factory=list)

    def plan(self, total: int) -> None:
        self.total = total

    def start(self, suite: str, case: BenchCase) -> None:
        self.started.append((suite, case.case, case.impl))

    def advance(self, steps: int) -> None:
        self.done += steps


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else '(no message)'}"


async def _run_group(
    suite: str,
    cases: list[BenchCase],
    env: BenchEnv,
    config: BenchConfig,
    report: BenchReport,
    sink: ProgressSink,
) -> None:
    """Set up every implementation of one case, then measure them level by level, side by side.

    Runs of the same case and concurrency level are adjacent in time (the order of implementations
    alternates from one level to the next), so a change in machine load between them is as small as
    it can be and hits both sides alike. A failing implementation is recorded and dropped; the
    others go on.
    """
    levels = len(config.concurrency)
    failed: set[int] = set()

    def fail(i: int, exc: BaseException, remaining: int) -> None:
        case = cases[i]
        report.failures.append(BenchFailure(suite, case.case, case.impl, _error_line(exc)))
        failed.add(i)
        sink.advance(remaining)

    try:
        async with AsyncExitStack() as stack:
            ops: dict[int, AnyOp] = {}
            for i, case in enumerate(cases):
                sink.start(suite, case)
                try:
                    ops[i] = await stack.enter_async_context(case.factory(env))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    fail(i, exc, levels)
            for n, level in enumerate(config.concurrency):
                order = list(ops) if n % 2 == 0 else list(reversed(ops))
                for i in order:
                    if i in failed:
                        continue
                    sink.start(suite, cases[i])
                    try:
                        result = await measure_level(suite, cases[i], ops[i], level, config)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        fail(i, exc, levels - n)
                        continue
                    report.results.append(result)
                    sink.advance(1)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a teardown failed (the results measured are kept)
        report.failures.append(BenchFailure(suite, cases[0].case, "teardown", _error_line(exc)))


async def run_suites(
    names: Sequence[str],
    config: BenchConfig,
    *,
    env: BenchEnv | None = None,
    progress: ProgressSink | None = None,
    package: str = SUITES_PACKAGE,
    cases_filter: Sequence[str] = (),
    impls_filter: Sequence[str] = (),
) -> BenchReport:
    """Run the named suites (every suite when ``names`` is empty) and collect a report.

    A suite that fails to import, or whose ``cases()`` raises, and a case whose set-up or operation
    raises, become :class:`~catga.bench.harness.BenchFailure` entries; the others still run.
    Cancellation is never swallowed.

    Args:
        names: Suite names; empty for all.
        config: Durations and concurrency levels.
        env: The environment (servers); by default one is created and closed here.
        progress: Receives progress events.
        package: Package holding the suites (tests point it at their own).
        cases_filter: Only run these case names (empty: all).
        impls_filter: Only run these implementations (empty: all).

    Returns:
        The report with results in run order and failures.
    """
    sink = progress if progress is not None else SilentProgress()
    own_env = env is None
    bench_env = (
        env if env is not None else BenchEnv(quick=config.quick, max_concurrency=max(config.concurrency))
    )
    report = BenchReport(
        python=python_description(),
        machine=machine_description(),
        loop=config.loop,
        quick=config.quick,
        duration_s=config.duration,
        started_at=now_iso(),
        timer_overhead_ns=timer_overhead_ns(),
    )
    try:
        plan: list[tuple[Suite, list[BenchCase]]] = []
        for name in names or list(suite_modules(package)):
            try:
                suite = load_suite(name, package)
                cases = [
                    c
                    for c in suite.cases(bench_env)
                    if (not cases_filter or c.case in cases_filter)
                    and (not impls_filter or c.impl in impls_filter)
                ]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report.failures.append(BenchFailure(name, "*", "*", _error_line(exc)))
                continue
            plan.append((suite, cases))
        levels = len(config.concurrency)
        sink.plan(sum(len(cases) for _, cases in plan) * levels)
        for suite, cases in plan:
            groups: dict[str, list[BenchCase]] = {}
            for case in cases:
                groups.setdefault(case.case, []).append(case)
            for group in groups.values():
                await _run_group(suite.name, group, bench_env, config, report, sink)
    finally:
        if own_env:
            await bench_env.aclose()
    return report
