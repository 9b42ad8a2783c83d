"""The benchmark harness: measurement loops, discovery, runner, report schema, ratios, charts, CLI."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import uuid
from array import array
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from catga.bench import (
    BenchCase,
    BenchConfig,
    BenchEnv,
    BenchError,
    BenchReport,
    BenchResult,
    SilentProgress,
    SuiteUnavailableError,
    available_suites,
    load_suite,
    ratios,
    run_suites,
)
from catga.bench._measure import _interpolate, measure_async, measure_threads, percentiles
from catga.bench.charts import chart_filename, write_charts
from catga.bench.phases import PhaseResult, Phases
from catga.bench.report import render_markdown, sorted_results
from catga.cli import app
from catga.cli.bench import parse_concurrency

RESULT_KEYS = {"suite", "case", "impl", "concurrency", "ops_per_s", "p50_us", "p95_us", "p99_us"}

TINY_SUITE = '''
"""A tiny fake suite for the harness tests."""
import asyncio
import time
from contextlib import asynccontextmanager

from catga.bench.harness import BenchCase
from catga.bench.phases import Phased, Phases

SUITE = "tiny"
EVENTS = []


@asynccontextmanager
async def fast(env):
    EVENTS.append("setup-fast")
    async def op(worker):
        await asyncio.sleep(0)
    yield op
    EVENTS.append("teardown-fast")


@asynccontextmanager
async def slow(env):
    async def op(worker):
        for _ in range(40):
            await asyncio.sleep(0)
    yield op


@asynccontextmanager
async def threaded(env):
    def op(worker):
        time.sleep(0)
    yield op


@asynccontextmanager
async def broken_setup(env):
    raise RuntimeError("cannot set up\\nsecond line")
    yield


@asynccontextmanager
async def fails_at_two(env):
    async def op(worker):
        if worker == 1:
            raise ValueError("worker 1 exploded")
        await asyncio.sleep(0)
    try:
        yield op
    finally:
        EVENTS.append("teardown-fails")


@asynccontextmanager
async def phased(env):
    phases = Phases(("fixed", "never"))
    fixed = phases.series("fixed")
    fixed(10**9)  # the set-up's self-check: must not reach the report
    async def op(worker):
        fixed(1_000)
        await asyncio.sleep(0)
        phases.record("per worker", 2_000 * (worker + 1))
    yield Phased(op, phases)


@asynccontextmanager
async def phased_threads(env):
    phases = Phases()
    def op(worker):
        phases.record("work", 3_000)
    yield Phased(op, phases)


def cases(env):
    return [
        BenchCase("echo", "catga", fast, note="fast one"),
        BenchCase("phased", "catga", phased),
        BenchCase("phased", "peer", phased_threads, mode="threads"),
        BenchCase("echo", "peer", slow),
        BenchCase("sleep0", "catga", threaded, mode="threads"),
        BenchCase("setup", "catga", broken_setup),
        BenchCase("partial", "catga", fails_at_two),
    ]
'''


@pytest.fixture
def suites_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throw-away suites package: ``tiny`` (works), ``needs_dep`` (missing import), ``_helper``."""
    name = f"fake_suites_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(textwrap.dedent(TINY_SUITE))
    (pkg / "needs_dep.py").write_text("import catga_no_such_module_xyz\nSUITE = 'needs-dep'\n")
    (pkg / "_helper.py").write_text("SUITE = 'helper'\ndef cases(env):\n    return []\n")
    (pkg / "not_a_suite.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


QUICK = BenchConfig.create(quick=True, concurrency=(1, 2), duration=0.03, warmup=0.01)


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults_and_quick() -> None:
    full = BenchConfig.create()
    assert full.concurrency == (1, 2, 4, 8, 16, 32)
    assert full.duration == 2.0
    quick = BenchConfig.create(quick=True)
    assert quick.concurrency == (1, 4, 16)
    assert quick.duration == pytest.approx(0.2)
    assert quick.quick is True
    assert BenchConfig.create(quick=True, concurrency=[3], duration=1.5).concurrency == (3,)


@pytest.mark.parametrize("bad", [{"concurrency": [0]}, {"duration": 0.0}, {"warmup": -1.0}])
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(BenchError):
        BenchConfig.create(**bad)  # type: ignore[arg-type]


def test_parse_concurrency() -> None:
    assert parse_concurrency("1, 2,4,,8") == (1, 2, 4, 8)
    for bad in ("", "1,x", "0", "-2"):
        with pytest.raises(BenchError, match="--concurrency"):
            parse_concurrency(bad)


# -- measurement -----------------------------------------------------------------------------


async def test_measure_async_counts_every_call_and_uses_every_worker() -> None:
    calls = 0
    workers: set[int] = set()

    async def op(worker: int) -> None:
        nonlocal calls
        calls += 1
        workers.add(worker)
        await asyncio.sleep(0)

    m = await measure_async(op, 4, 0.05)
    assert m.ops == calls > 0
    assert workers == {0, 1, 2, 3}
    assert m.ops_per_s == pytest.approx(m.ops / m.wall_s)
    assert 0 < m.p50_us <= m.p95_us <= m.p99_us


async def test_measure_async_propagates_errors_and_cancels_the_other_workers() -> None:
    async def op(worker: int) -> None:
        await asyncio.sleep(0)
        if worker == 2:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await measure_async(op, 3, 5.0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def test_measure_threads_runs_real_threads() -> None:
    idents: set[int] = set()
    workers: set[int] = set()
    lock = threading.Lock()
    calls = 0

    def op(worker: int) -> None:
        nonlocal calls
        with lock:
            calls += 1
            workers.add(worker)
            idents.add(threading.get_ident())

    m = measure_threads(op, 3, 0.05)
    assert m.ops == calls > 0
    assert workers == {0, 1, 2}
    assert len(idents) == 3 and threading.get_ident() not in idents


def test_measure_threads_reraises_the_first_error() -> None:
    def op(worker: int) -> None:
        raise OSError(f"worker {worker} failed")

    with pytest.raises(OSError, match="failed"):
        measure_threads(op, 2, 5.0)


def test_percentiles_interpolate_like_numpy() -> None:
    data = list(range(1, 101))
    samples = [array("q", data[:30]), array("q", data[30:]), array("q")]
    assert percentiles(samples, (50.0, 95.0, 99.0)) == pytest.approx((50.5, 95.05, 99.01))
    assert [_interpolate(data, q) for q in (50.0, 95.0, 99.0)] == pytest.approx([50.5, 95.05, 99.01])
    assert percentiles([array("q")], (50.0,)) == (0.0,)


# -- ratios and report ------------------------------------------------------------------------


def _r(impl: str, conc: int, ops: float, case: str = "send", suite: str = "s") -> BenchResult:
    return BenchResult(suite, case, impl, conc, ops, 1.0, 2.0, 3.0)


def test_ratios_divide_catga_by_each_other_impl_per_group() -> None:
    rows = [
        _r("peer", 1, 50.0),
        _r("catga", 1, 200.0),
        _r("raw", 1, 400.0),
        _r("catga", 16, 300.0),
        _r("peer", 16, 100.0),
        _r("peer", 1, 10.0, case="lonely"),  # no catga row in its group: no ratio
        _r("zero", 16, 0.0),  # zero throughput: no ratio
    ]
    got = ratios(rows)
    assert got == {
        ("s", "send", 1, "peer"): pytest.approx(4.0),
        ("s", "send", 1, "raw"): pytest.approx(0.5),
        ("s", "send", 16, "peer"): pytest.approx(3.0),
    }
    order = [(r.case, r.concurrency, r.impl) for r in sorted_results(rows)]
    assert order[:3] == [("send", 1, "catga"), ("send", 1, "peer"), ("send", 1, "raw")]
    assert order[-1] == ("lonely", 1, "peer")
    md = render_markdown(BenchReport(python="py", machine="m", results=rows))
    assert "| s | send | peer | 1 | 50 | 1.0 | 2.0 | 3.0 | 4.00× |" in md


def test_report_json_round_trip() -> None:
    report = BenchReport(python="CPython 3.11", machine="box", results=[_r("catga", 1, 12.5)], loop="uvloop")
    data = json.loads(json.dumps(report.to_json()))
    assert list(data)[:4] == ["version", "python", "machine", "results"]
    assert data["version"] == 1 and data["loop"] == "uvloop"
    again = BenchReport.from_json(data)
    assert again.results == report.results
    with pytest.raises(ValueError, match="version"):
        BenchReport.from_json({**data, "version": 2})


def test_charts_are_png_files(tmp_path: Path) -> None:
    rows = [_r("catga", 1, 10.0), _r("catga", 4, 30.0), _r("peer", 1, 5.0), _r("peer", 4, 7.0)]
    written = write_charts(BenchReport(python="py", machine="m", results=rows), tmp_path / "png")
    assert written == [tmp_path / "png" / chart_filename("s", "send")]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart_filename("eventstore-nats", "append 16/x") == "eventstore-nats__append_16_x.png"


def test_chart_legends_sit_below_the_plots_and_numbers_have_thousands_separators() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catga.bench.charts import _draw_chart

    impls = {
        name: [
            BenchResult("s", "send", name, c, ops * c, 40.0 * c, 900.0 * c, 12_000.0 * c) for c in (1, 4, 16)
        ]
        for name, ops in (("catga", 25_000.0), ("python-cqrs", 8_000.0), ("raw", 30_000.0))
    }
    fig = _draw_chart(BenchReport(python="py", machine="m", results=[]), "s", "send", impls, "catga")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax_ops, ax_lat = fig.axes
        assert ax_ops.get_legend() is None and ax_lat.get_legend() is None  # nothing over the lines
        [legend] = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == [
            "catga",
            "python-cqrs",
            "raw",
            "P50",
            "P95",
            "P99",
        ]
        box = legend.get_window_extent(renderer)
        for ax in (ax_ops, ax_lat):
            assert box.y1 <= ax.get_window_extent(renderer).y0, "the legend overlaps a plot"
        ops_labels = [t.get_text() for t in ax_ops.get_yticklabels() if t.get_text()]
        assert any("," in t for t in ops_labels), ops_labels  # e.g. 400,000
        lat_labels = [t.get_text() for t in ax_lat.get_yticklabels() if t.get_text()]
        assert any(t.endswith(",000") for t in lat_labels), lat_labels
        assert [t.get_text() for t in ax_ops.get_xticklabels()] == ["1", "4", "16"]
    finally:
        plt.close(fig)


# -- discovery and runner --------------------------------------------------------------------


def test_discovery_finds_suites_and_reports_missing_dependencies(suites_pkg: str) -> None:
    found = available_suites(suites_pkg)
    names = {s.name if not isinstance(s, SuiteUnavailableError) else s.suite for s in found}
    assert names == {"tiny", "needs-dep"}  # not the _helper, not the module without SUITE
    [missing] = [s for s in found if isinstance(s, SuiteUnavailableError)]
    assert missing.missing == "catga_no_such_module_xyz"
    assert "pip install" in str(missing)
    assert load_suite("tiny", suites_pkg).doc == "A tiny fake suite for the harness tests."
    with pytest.raises(BenchError, match=r"unknown benchmark suite 'nope'.*tiny"):
        load_suite("nope", suites_pkg)


async def test_run_suites_measures_each_level_and_records_failures(suites_pkg: str) -> None:
    progress = SilentProgress()
    report = await run_suites(["tiny", "needs-dep"], QUICK, progress=progress, package=suites_pkg)
    got = {(r.case, r.impl, r.concurrency) for r in report.results}
    assert got == {
        ("echo", "catga", 1),
        ("echo", "catga", 2),
        ("echo", "peer", 1),
        ("echo", "peer", 2),
        ("sleep0", "catga", 1),
        ("sleep0", "catga", 2),
        ("partial", "catga", 1),  # measured before the failure at concurrency 2
        ("phased", "catga", 1),
        ("phased", "catga", 2),
        ("phased", "peer", 1),
        ("phased", "peer", 2),
    }
    assert all(r.ops > 0 and r.ops_per_s > 0 for r in report.results)
    # Implementations of one case run side by side, level by level, alternating their order.
    echo = [(r.impl, r.concurrency) for r in report.results if r.case == "echo"]
    assert echo == [("catga", 1), ("peer", 1), ("peer", 2), ("catga", 2)]
    assert {r.mode for r in report.results if r.case == "sleep0"} == {"threads"}
    failures = {(f.suite, f.case, f.impl): f.error for f in report.failures}
    assert failures[("tiny", "setup", "catga")] == "RuntimeError: cannot set up"
    assert failures[("tiny", "partial", "catga")] == "ValueError: worker 1 exploded"
    assert failures[("needs-dep", "*", "*")].startswith("SuiteUnavailableError: benchmark suite 'needs-dep'")
    assert progress.total == progress.done == 7 * 2
    events = sys.modules[f"{suites_pkg}.tiny"].EVENTS
    assert events.count("setup-fast") == 1 and "teardown-fast" in events and "teardown-fails" in events
    assert report.timer_overhead_ns > 0


async def test_run_suites_filters_cases_and_impls(suites_pkg: str) -> None:
    report = await run_suites(
        ["tiny"], QUICK, package=suites_pkg, cases_filter=["echo"], impls_filter=["peer"]
    )
    assert {(r.case, r.impl) for r in report.results} == {("echo", "peer")}
    assert report.failures == []


# -- latency phases ----------------------------------------------------------------------------


def test_phases_marks_and_series_survive_a_reset() -> None:
    phases = Phases(("a", "b", "never"))
    add_a = phases.series("a")
    record = phases.marks_recorder(("a", "b"))
    record([100, 1_100, 4_100])
    add_a(3_000)
    with pytest.raises(ValueError, match="2 phases need 3 timestamps, got 2"):
        record([1, 2])
    a, b = phases.results()  # "never" has no durations: not reported
    assert (a.name, a.count, a.p50_us, a.mean_us) == ("a", 2, 2.0, 2.0)
    assert (b.name, b.count, b.p99_us) == ("b", 1, 3.0)
    phases.reset()
    assert phases.results() == () and phases.names == ("a", "b", "never")
    add_a(500)  # what was fetched before the reset still feeds the recorder
    record([0, 0, 7_000])
    assert [(p.name, p.count, p.p50_us) for p in phases.results()] == [("a", 2, 0.25), ("b", 1, 7.0)]


@pytest.mark.parametrize("warmup", [0.0, 0.01])
async def test_phases_come_from_the_measured_run_of_each_level_only(suites_pkg: str, warmup: float) -> None:
    config = BenchConfig.create(quick=True, concurrency=(1, 2), duration=0.03, warmup=warmup)
    report = await run_suites(["tiny"], config, package=suites_pkg, cases_filter=["phased", "echo"])
    assert report.failures == []
    rows = {(r.case, r.impl, r.concurrency): r for r in report.results}
    assert len(rows) == 8
    for conc in (1, 2):
        fixed, per_worker = rows[("phased", "catga", conc)].phases  # "never" was never recorded
        ops = rows[("phased", "catga", conc)].ops
        # One duration per timed call: the set-up's, the warm-up's and the previous level's are gone.
        assert (fixed.name, fixed.count, per_worker.name, per_worker.count) == (
            "fixed",
            ops,
            "per worker",
            ops,
        )
        assert fixed.p50_us == fixed.p99_us == fixed.mean_us == 1.0
        if conc == 1:
            assert per_worker.p50_us == per_worker.p99_us == 2.0
        else:  # worker 0 records 2 µs, worker 1 4 µs
            assert 2.0 < per_worker.mean_us < 4.0 and per_worker.p99_us == 4.0
        [work] = rows[("phased", "peer", conc)].phases  # a SyncOp in threads, unwrapped the same way
        assert (work.name, work.count, work.p50_us) == ("work", rows[("phased", "peer", conc)].ops, 3.0)
        assert rows[("echo", "catga", conc)].phases == () == rows[("echo", "peer", conc)].phases


def test_cli_bench_reports_phases_in_json_text_and_markdown(suites_pkg: str, tmp_path: Path) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    result = CliRunner().invoke(
        app,
        [
            *("bench", "tiny", "--quick", "--duration", "0.02", "--concurrency", "1"),
            *("--case", "echo", "--case", "phased", "--json", str(out), "--markdown", str(md)),
        ],
        env={"CATGA_BENCH_PACKAGE": suites_pkg},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {(r["case"], r["impl"]): r for r in data["results"]}
    assert "phases" not in rows[("echo", "catga")] and "phases" not in rows[("echo", "peer")]
    catga_phases = rows[("phased", "catga")]["phases"]
    assert list(catga_phases) == ["fixed", "per worker"]
    assert list(rows[("phased", "peer")]["phases"]) == ["work"]
    fixed = catga_phases["fixed"]
    assert set(fixed) == {"count", "p50_us", "p95_us", "p99_us", "mean_us"}
    assert fixed["count"] == rows[("phased", "catga")]["ops"] and fixed["p99_us"] == 1.0
    again = BenchReport.from_json(data)
    assert {r.case: r.phases for r in again.results if r.impl == "catga"}["phased"][0] == PhaseResult(
        "fixed", fixed["count"], 1.0, 1.0, 1.0, 1.0
    )
    assert again.to_json()["results"] == data["results"]
    fixed["later_key"] = 1  # a newer report's extra keys are ignored, as for results
    assert BenchReport.from_json(data).results == again.results
    # Text: the main table as before, then one phase table, a row per phased case and level, each
    # cell P50 over P99.
    assert "tiny — phases, µs: P50 over P99" in result.stdout
    phase_text = result.stdout.split("tiny — phases", 1)[1].split("timer overhead", 1)[0]
    lines = [line.split() for line in phase_text.splitlines()]
    assert ["case", "impl", "conc", "fixed", "per", "worker", "work"] in lines
    assert ["phased", "catga", "1", "1.0", "2.0"] in lines and ["1.0", "2.0"] in lines  # P50, then P99
    assert ["phased", "peer", "1", "3.0"] in lines and ["3.0"] in lines
    assert "echo" not in phase_text
    text = md.read_text()
    assert "| tiny | phased | **catga** | 1 |" in text  # the main table is unchanged
    assert "tiny phases, P50 / P99 µs:" in text
    assert "| case | impl | conc | fixed | per worker | work |" in text
    assert "| phased | **catga** | 1 | 1.0 / 1.0 | 2.0 / 2.0 |  |" in text
    assert "| phased | peer | 1 |  |  | 3.0 / 3.0 |" in text


async def test_bench_env_prefers_the_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATGA_NATS_URL", "nats://127.0.0.1:1")
    async with BenchEnv() as env:
        assert await env.nats_url() == "nats://127.0.0.1:1"
        assert env.started_servers == ()


@pytest.mark.redis
async def test_bench_env_starts_and_stops_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATGA_REDIS_URL", raising=False)
    env = BenchEnv()
    url = await env.redis_url()
    assert url.startswith("redis://127.0.0.1:") and env.started_servers == ("redis",)
    assert await env.redis_url() == url  # started once
    server = env._servers["redis"]
    assert server.running  # type: ignore[attr-defined]
    await env.aclose()
    assert not server.running  # type: ignore[attr-defined]
    assert env.started_servers == ()


def test_bench_case_defaults() -> None:
    case = BenchCase("c", "i", lambda env: None)  # type: ignore[arg-type,return-value]
    assert (case.mode, case.note) == ("async", "")


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_bench_writes_the_exact_json_schema_and_pngs(suites_pkg: str, tmp_path: Path) -> None:
    out, png = tmp_path / "out" / "r.json", tmp_path / "png"
    result = CliRunner().invoke(
        app,
        [
            *("bench", "tiny", "--quick", "--duration", "0.02", "--warmup", "0", "--case", "echo"),
            *("--json", str(out), "--png", str(png), "--markdown", str(tmp_path / "r.md")),
        ],
        env={"CATGA_BENCH_PACKAGE": suites_pkg, "CATGA_BENCH_CONCURRENCY": "1,3"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"version", "python", "machine", "results"} <= set(data)
    assert data["version"] == 1 and isinstance(data["python"], str) and isinstance(data["machine"], str)
    assert data["loop"] == "asyncio"
    assert len(data["results"]) == 4
    for row in data["results"]:
        assert set(row) >= RESULT_KEYS
        assert isinstance(row["suite"], str) and isinstance(row["case"], str) and isinstance(row["impl"], str)
        assert row["concurrency"] in (1, 3)
        for key in ("ops_per_s", "p50_us", "p95_us", "p99_us"):
            assert isinstance(row[key], float) and row[key] > 0
    assert (png / "tiny__echo.png").read_bytes()[:4] == b"\x89PNG"
    assert "catga/x" in result.stdout and "peer" in result.stdout
    assert all("phases" not in row for row in data["results"])  # no phases: no key, no phase table
    assert "phases" not in result.stdout
    assert "| tiny | echo | peer | 1 |" in (tmp_path / "r.md").read_text()
    assert "phases" not in (tmp_path / "r.md").read_text()


def test_cli_bench_json_to_stdout_keeps_stdout_machine_readable(suites_pkg: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "tiny",
            "--quick",
            "--duration",
            "0.01",
            "--concurrency",
            "2",
            "--case",
            "echo",
            "--json",
            "-",
        ],
        env={"CATGA_BENCH_PACKAGE": suites_pkg},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {(r["impl"], r["concurrency"]) for r in data["results"]} == {("catga", 2), ("peer", 2)}
    assert "catga/x" in result.stderr


def test_cli_bench_exits_1_and_names_failures(suites_pkg: str) -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "tiny", "needs-dep", "--quick", "--duration", "0.01", "--concurrency", "1"],
        env={"CATGA_BENCH_PACKAGE": suites_pkg},
    )
    assert result.exit_code == 1
    assert "tiny · setup · catga: RuntimeError: cannot set up" in result.stderr
    assert "needs-dep: SuiteUnavailableError" in result.stderr
    assert "echo" in result.stdout  # the others were still measured and shown


def test_cli_bench_list(suites_pkg: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--list", "--package", suites_pkg, "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = {r["suite"]: r["status"] for r in json.loads(result.stdout)["suites"]}
    assert rows == {"tiny": "ok", "needs-dep": "unavailable"}


def test_cli_lists_the_builtin_mediator_suite() -> None:
    result = CliRunner().invoke(app, ["bench", "--list"])
    assert result.exit_code == 0, result.output
    assert "mediator" in result.stdout


async def test_mediator_suite_runs_every_case_for_catga_and_python_cqrs() -> None:
    config = BenchConfig.create(quick=True, concurrency=(1, 4), duration=0.02, warmup=0.0)
    report = await run_suites(["mediator"], config)
    assert report.failures == []
    got = {(r.case, r.impl, r.concurrency) for r in report.results}
    assert got == {
        (case, impl, conc)
        for case in ("send", "send_bare", "publish_2_handlers")
        for impl in ("catga", "python-cqrs", "python-cqrs-quiet")
        for conc in (1, 4)
    }
    assert len(ratios(report.results)) == 12


def test_the_ids_suite_runs_every_generator_and_checks_their_ids(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from catga.cli import app

    out = tmp_path / "ids.json"
    result = CliRunner().invoke(
        app, ["bench", "ids", "--quick", "--duration", "0.05", "--concurrency", "1,2", "--json", str(out)]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in rows} == {"catga", "snowflake-id", "uuid4", "uuid7"}
    assert all(r["ops_per_s"] > 0 for r in rows)


def test_the_ids_self_check_refuses_duplicates_and_disorder() -> None:
    from catga.bench.harness import BenchError
    from catga.bench.suites.ids import _checked

    with pytest.raises(BenchError, match="duplicate"):
        _checked("stuck", lambda: 7)
    counter = iter(range(10**6, 0, -1))
    with pytest.raises(BenchError, match="not strictly increasing"):
        _checked("backwards", lambda: next(counter), ordered=True)


def test_the_schedule_suite_measures_memory_schedules_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from catga.cli import app

    out = tmp_path / "schedule.json"
    args = ["bench", "schedule", "--quick", "--duration", "0.05", "--concurrency", "1,2", "--json", str(out)]
    args += ["--case", "due_now_memory", "--case", "due_in_50ms_memory"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["results"]
    assert {(r["case"], r["impl"]) for r in rows} == {
        ("due_now_memory", "catga"),
        ("due_now_memory", "direct-send"),
        ("due_in_50ms_memory", "catga"),
    }
    assert all(r["ops_per_s"] > 0 for r in rows)
    late = [r for r in rows if r["case"] == "due_in_50ms_memory"]
    assert all(r["p50_us"] >= 50_000 for r in late), "delivered before its due time"


def _bench_rows(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    from typer.testing import CliRunner

    from catga.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", *args, "--json", str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    rows: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    return rows


def test_the_workflow_suite_runs_three_step_workflows_in_memory(tmp_path: Path) -> None:
    args = (
        "workflow",
        "--quick",
        "--duration",
        "0.05",
        "--concurrency",
        "1,4",
        "--case",
        "three_steps_memory",
    )
    rows = _bench_rows(tmp_path, *args)
    assert [(r["case"], r["impl"], r["concurrency"]) for r in rows] == [
        ("three_steps_memory", "catga", 1),
        ("three_steps_memory", "catga", 4),
    ]
    assert all(r["ops_per_s"] > 0 and r["p99_us"] >= r["p50_us"] > 0 for r in rows)
    for r in rows:  # each phase once per workflow, in order, none negative or empty
        assert list(r["phases"]) == ["create", "start", "step 1", "step 2", "step 3", "finish"]
        assert all(p["count"] == r["ops"] and p["p99_us"] >= p["p50_us"] > 0 for p in r["phases"].values())


@pytest.mark.postgres
def test_the_workflow_suite_compares_catga_and_dbos_on_one_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATGA_POSTGRES_URL", postgres_url)  # the fixture's server, not a second one
    args = (
        "workflow",
        "--quick",
        "--duration",
        "0.05",
        "--concurrency",
        "1,2",
        "--case",
        "three_steps_postgres",
    )
    rows = _bench_rows(tmp_path, *args)
    assert {(r["impl"], r["concurrency"]) for r in rows} == {
        (impl, c) for impl in ("catga", "dbos", "dbos-direct", "dbos-threads") for c in (1, 2)
    }
    assert all(r["ops_per_s"] > 0 for r in rows)
    steps = ["start", "step 1", "step 2", "step 3", "finish"]
    for r in rows:  # the same phases for both, plus the start call's "create" where there is one
        assert list(r["phases"]) == (["create", *steps] if r["impl"] in ("catga", "dbos") else steps), r
        assert all(p["count"] == r["ops"] and p["p50_us"] > 0 for p in r["phases"].values()), r
