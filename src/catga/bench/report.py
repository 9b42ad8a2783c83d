"""Benchmark reports: the JSON document, ratios to catga, a rich table and a Markdown table.

JSON (``version`` 1)::

    {"version": 1, "python": "CPython 3.11.7", "machine": "Linux-..., 2 CPUs",
     "results": [{"suite": "mediator", "case": "send", "impl": "catga", "concurrency": 16,
                  "ops_per_s": 101234.5, "p50_us": 8.1, "p95_us": 9.9, "p99_us": 14.2,
                  "ops": 202469, "wall_s": 2.0, "mode": "async", "note": ""}],
     "catga": "0.1.0", "loop": "asyncio", "quick": false, "duration_s": 2.0,
     "started_at": "...", "timer_overhead_ns": 95.0, "failures": []}

A result of a case that reports latency phases (:mod:`catga.bench.phases`) has one more key, in
the case's order (results without phases have no ``phases`` key)::

    "phases": {"start": {"count": 2003, "p50_us": 61.2, "p95_us": 80.4, "p99_us": 140.9,
                         "mean_us": 66.0}, "step 1": {...}}

The first four keys and the first eight keys of each result are the stable schema; the others are
informational. A ratio is ``catga ops/s ÷ other ops/s`` for the same suite, case and concurrency, so
``2.0`` means catga did twice the work per second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catga.bench.harness import BenchFailure, BenchResult
from catga.bench.phases import PhaseResult

if TYPE_CHECKING:
    from rich.table import Table

__all__ = (
    "REFERENCE_IMPL",
    "SCHEMA_VERSION",
    "BenchReport",
    "RatioKey",
    "ratios",
    "render_markdown",
    "render_phase_table",
    "render_table",
    "render_tables",
    "sorted_results",
)

SCHEMA_VERSION = 1
REFERENCE_IMPL = "catga"
RESULT_KEYS = ("suite", "case", "impl", "concurrency", "ops_per_s", "p50_us", "p95_us", "p99_us")

RatioKey = tuple[str, str, int, str]
"""``(suite, case, concurrency, impl)``."""


def _catga_version() -> str:
    from catga import __version__

    return __version__


@dataclass
class BenchReport:
    """Everything one ``catga bench`` run measured.

    Attributes:
        python: Python implementation and version.
        machine: Platform, CPU model and count.
        results: Measurements in run order.
        failures: Suites or cases that could not be measured.
        loop: Event loop implementation.
        quick: Whether this was a ``--quick`` smoke run.
        duration_s: Seconds per measured run.
        started_at: UTC start time (ISO 8601).
        timer_overhead_ns: Median cost of the per-call timing around an empty await.
        catga: The catga version.
    """

    python: str
    machine: str
    results: list[BenchResult] = field(default_factory=list)
    failures: list[BenchFailure] = field(default_factory=list)
    loop: str = "asyncio"
    quick: bool = False
    duration_s: float = 0.0
    started_at: str = ""
    timer_overhead_ns: float = 0.0
    catga: str = field(default_factory=_catga_version)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (schema in the module docstring)."""
        return {
            "version": SCHEMA_VERSION,
            "python": self.python,
            "machine": self.machine,
            "results": [_result_json(r) for r in self.results],
            "catga": self.catga,
            "loop": self.loop,
            "quick": self.quick,
            "duration_s": self.duration_s,
            "started_at": self.started_at,
            "timer_overhead_ns": self.timer_overhead_ns,
            "failures": [asdict(f) for f in self.failures],
        }

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON document (parent directories are created); return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BenchReport:
        """Rebuild a report from :meth:`to_json` output (unknown keys are ignored).

        Raises:
            ValueError: The document is not a version 1 report.
        """
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(
                f"not a catga bench report version {SCHEMA_VERSION}: version={data.get('version')!r}"
            )
        result_fields = BenchResult.__dataclass_fields__
        phase_fields = PhaseResult.__dataclass_fields__
        results = [
            BenchResult(
                **{k: v for k, v in r.items() if k in result_fields and k != "phases"},
                phases=tuple(
                    PhaseResult(
                        name=name, **{k: v for k, v in stats.items() if k in phase_fields and k != "name"}
                    )
                    for name, stats in r.get("phases", {}).items()
                ),
            )
            for r in data["results"]
        ]
        failures = [BenchFailure(**f) for f in data.get("failures", [])]
        return cls(
            python=str(data["python"]),
            machine=str(data["machine"]),
            results=results,
            failures=failures,
            loop=str(data.get("loop", "asyncio")),
            quick=bool(data.get("quick", False)),
            duration_s=float(data.get("duration_s", 0.0)),
            started_at=str(data.get("started_at", "")),
            timer_overhead_ns=float(data.get("timer_overhead_ns", 0.0)),
            catga=str(data.get("catga", "")),
        )


def _result_json(result: BenchResult) -> dict[str, Any]:
    """One result as JSON: phases keyed by name, and no ``phases`` key when there are none."""
    row = asdict(result)
    del row["phases"]
    if result.phases:
        row["phases"] = {
            p.name: {
                "count": p.count,
                "p50_us": p.p50_us,
                "p95_us": p.p95_us,
                "p99_us": p.p99_us,
                "mean_us": p.mean_us,
            }
            for p in result.phases
        }
    return row


def ratios(results: Iterable[BenchResult], reference: str = REFERENCE_IMPL) -> dict[RatioKey, float]:
    """``reference`` ops/s divided by each other implementation's ops/s, per suite/case/concurrency.

    Rows without a ``reference`` row in their group, or with zero throughput, get no ratio.

    Returns:
        ``{(suite, case, concurrency, impl): ratio}`` for every non-reference row that has one.
    """
    rows = list(results)
    ref = {(r.suite, r.case, r.concurrency): r.ops_per_s for r in rows if r.impl == reference}
    out: dict[RatioKey, float] = {}
    for r in rows:
        if r.impl == reference:
            continue
        base = ref.get((r.suite, r.case, r.concurrency))
        if base is not None and r.ops_per_s > 0:
            out[(r.suite, r.case, r.concurrency, r.impl)] = base / r.ops_per_s
    return out


def sorted_results(results: Iterable[BenchResult], reference: str = REFERENCE_IMPL) -> list[BenchResult]:
    """Results grouped by suite and case (first-seen order), then concurrency, reference impl first."""
    rows = list(results)
    group_order: dict[tuple[str, str], int] = {}
    impl_order: dict[str, int] = {}
    for r in rows:
        group_order.setdefault((r.suite, r.case), len(group_order))
        impl_order.setdefault(r.impl, len(impl_order))
    return sorted(
        rows,
        key=lambda r: (
            group_order[(r.suite, r.case)],
            r.concurrency,
            r.impl != reference,
            impl_order[r.impl],
        ),
    )


def _fmt_ops(v: float) -> str:
    return f"{v:,.0f}"


def _fmt_us(v: float) -> str:
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def _fmt_ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}×"


def render_tables(report: BenchReport, reference: str = REFERENCE_IMPL) -> list[Table]:
    """One rich table per suite (see :func:`render_table`), in report order, each followed by its
    phase table when its cases report phases (see :func:`render_phase_table`)."""
    suites = list(dict.fromkeys(r.suite for r in report.results))
    tables: list[Table] = []
    for s in suites:
        tables.append(render_table(report, reference, suite=s))
        phases = render_phase_table(report, reference, suite=s)
        if phases is not None:
            tables.append(phases)
    return tables


def _phase_rows(
    report: BenchReport, reference: str, suite: str | None
) -> tuple[list[BenchResult], list[str]]:
    """The results with phases (of ``suite``, or all) in table order, and the phase names in the order
    first seen."""
    rows = [r for r in report.results if r.phases and (suite is None or r.suite == suite)]
    names = list(dict.fromkeys(p.name for r in rows for p in r.phases))
    return sorted_results(rows, reference), names


def _phase_cells(result: BenchResult, names: list[str], sep: str = " / ") -> list[str]:
    by_name = {p.name: p for p in result.phases}
    return [
        f"{_fmt_us(by_name[n].p50_us)}{sep}{_fmt_us(by_name[n].p99_us)}" if n in by_name else ""
        for n in names
    ]


def render_phase_table(
    report: BenchReport, reference: str = REFERENCE_IMPL, *, suite: str | None = None
) -> Table | None:
    """A rich table of the latency phases (each cell: P50 over P99, µs), one row per case,
    implementation and concurrency that reports phases (of one ``suite``, or all); None when none
    does."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows, names = _phase_rows(report, reference, suite)
    if not rows:
        return None
    table = Table(
        title=escape(f"{suite if suite is not None else 'catga bench'} — phases, µs: P50 over P99"),
        caption="each phase is a part of one operation, timed apart (the suite's docs say which)",
        box=box.SIMPLE_HEAD,
    )
    if suite is None:
        table.add_column("suite", overflow="fold")
    table.add_column("case", overflow="fold")
    table.add_column("impl", overflow="fold")
    table.add_column("conc", justify="right", no_wrap=True)
    for name in names:
        table.add_column(escape(name), justify="right")
    previous: tuple[str, str] | None = None
    for r in rows:
        group = (r.suite, r.case)
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        cells = [] if suite is not None else [escape(r.suite)]
        # P50 over P99 in each cell: six phases fit 80 columns, two numbers side by side would not.
        cells += [escape(r.case), escape(r.impl), str(r.concurrency), *_phase_cells(r, names, "\n")]
        table.add_row(*cells, style="bold" if r.impl == reference else "")
    return table


def render_table(report: BenchReport, reference: str = REFERENCE_IMPL, *, suite: str | None = None) -> Table:
    """A rich table of the results (of one ``suite``, or all), with a ``catga/x`` ratio column.

    With ``suite`` the suite column is left out (the title names it), so the table fits 80 columns.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = [r for r in report.results if suite is None or r.suite == suite]
    name = suite if suite is not None else "catga bench"
    table = Table(
        title=escape(f"{name} — {report.python}, {report.loop} loop"),
        caption=escape(f"{reference}/x = {reference} ops/s ÷ that row's ops/s"),
        box=box.SIMPLE_HEAD,
    )
    if suite is None:
        table.add_column("suite", overflow="fold")
    table.add_column("case", overflow="fold")
    table.add_column("impl", overflow="fold")
    for header in ("conc", "ops/s", "p50 µs", "p95 µs", "p99 µs", f"{reference}/x"):
        table.add_column(header, justify="right", no_wrap=True)
    rs = ratios(rows, reference)
    previous: tuple[str, str] | None = None
    for r in sorted_results(rows, reference):
        group = (r.suite, r.case)
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        ratio = rs.get((r.suite, r.case, r.concurrency, r.impl))
        cells = [] if suite is not None else [escape(r.suite)]
        cells += [
            escape(r.case),
            escape(r.impl),
            str(r.concurrency),
            _fmt_ops(r.ops_per_s),
            _fmt_us(r.p50_us),
            _fmt_us(r.p95_us),
            _fmt_us(r.p99_us),
            _fmt_ratio(ratio),
        ]
        table.add_row(*cells, style="bold" if r.impl == reference else "")
    return table


def render_markdown(report: BenchReport, reference: str = REFERENCE_IMPL) -> str:
    """The results as a GitHub Markdown table (what ``docs/benchmarks.md`` shows), followed, per suite
    whose cases report latency phases, by a table of their P50 / P99 per phase."""
    rs = ratios(report.results, reference)
    lines = [
        f"| suite | case | impl | conc | ops/s | p50 µs | p95 µs | p99 µs | {reference}/x |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted_results(report.results, reference):
        ratio = rs.get((r.suite, r.case, r.concurrency, r.impl))
        impl = f"**{r.impl}**" if r.impl == reference else r.impl
        lines.append(
            f"| {r.suite} | {r.case} | {impl} | {r.concurrency} | {_fmt_ops(r.ops_per_s)} | "
            f"{_fmt_us(r.p50_us)} | {_fmt_us(r.p95_us)} | {_fmt_us(r.p99_us)} | {_fmt_ratio(ratio)} |"
        )
    for f in report.failures:
        lines.append(f"| {f.suite} | {f.case} | {f.impl} | | failed: {f.error} | | | | |")
    for suite in dict.fromkeys(r.suite for r in report.results if r.phases):
        rows, names = _phase_rows(report, reference, suite)
        lines += [
            "",
            f"{suite} phases, P50 / P99 µs:",
            "",
            "| case | impl | conc | " + " | ".join(names) + " |",
            "|---|---|---:|" + "---:|" * len(names),
        ]
        for r in rows:
            impl = f"**{r.impl}**" if r.impl == reference else r.impl
            lines.append(
                f"| {r.case} | {impl} | {r.concurrency} | " + " | ".join(_phase_cells(r, names)) + " |"
            )
    return "\n".join(lines) + "\n"
