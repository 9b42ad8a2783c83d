"""The ``eventstore-postgres`` bench suite runs every case for catga and eventsourcing's recorder."""

from __future__ import annotations

import pytest

from catga.bench.harness import BenchConfig
from catga.bench.report import ratios
from catga.bench.runner import run_suites

pytestmark = pytest.mark.postgres


async def test_the_eventstore_postgres_suite_runs_every_case(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATGA_POSTGRES_URL", postgres_url)  # the session's server, not a new one
    config = BenchConfig.create(quick=True, concurrency=(1, 4), duration=0.05, warmup=0.0)
    report = await run_suites(["eventstore-postgres"], config)
    assert report.failures == []
    got = {(r.case, r.impl, r.concurrency) for r in report.results}
    assert got == {
        (case, impl, conc)
        for case in ("append_1", "append_10", "read_10")
        for impl in ("catga", "eventsourcing")
        for conc in (1, 4)
    }
    assert len(ratios(report.results)) == 6
