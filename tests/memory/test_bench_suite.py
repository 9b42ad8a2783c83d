"""Smoke test of the eventstore-memory benchmark suite: every case sets up, runs and tears down."""

from __future__ import annotations

import pytest

from catga.bench.harness import BenchCase, BenchConfig, BenchEnv, run_case
from catga.bench.suites import eventstore_memory

CASES = eventstore_memory.cases(BenchEnv(quick=True, max_concurrency=4))


def test_suite_shape() -> None:
    assert eventstore_memory.SUITE == "eventstore-memory"
    assert {(c.case, c.impl) for c in CASES} == {
        (case, impl)
        for case in ("append", "read_10")
        for impl in ("catga", "catga-threads", "eventsourcing", "eventsourcing-app")
    }
    assert all(c.mode == ("async" if c.impl == "catga" else "threads") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.case}-{c.impl}")
async def test_every_case_runs(case: BenchCase) -> None:
    config = BenchConfig(concurrency=(1, 4), duration=0.02, warmup=0.0, quick=True)
    async with BenchEnv(quick=True, max_concurrency=4) as env:
        results = await run_case(eventstore_memory.SUITE, case, env, config)
    assert [r.concurrency for r in results] == [1, 4]
    assert all(r.ops > 0 for r in results)
