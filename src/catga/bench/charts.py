"""PNG charts of a benchmark report (matplotlib, Agg backend; needs ``catga[bench]``).

One image per suite and case, ``<suite>__<case>.png``: on the left, throughput against concurrency
with a line per implementation; on the right, P50 (solid), P95 (dashed) and P99 (dotted) latency
against concurrency, on a log scale. The legends sit below the plots, never over a line: one entry per
implementation (its colour) and one per percentile (its line style). Numbers on the axes have
thousands separators (``12,500`` ops/s).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from catga.bench.harness import BenchError, BenchResult
from catga.bench.report import REFERENCE_IMPL, BenchReport, sorted_results

__all__ = ("chart_filename", "write_charts")


def chart_filename(suite: str, case: str) -> str:
    """The file name of the chart for ``suite`` / ``case`` (unsafe characters become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{suite}__{case}")
    return f"{safe}.png"


def _thousands(value: float, _pos: object = None) -> str:
    """An axis label with thousands separators: ``12,500``; ``0.5`` and ``2.5`` keep their decimals."""
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.3g}"


def write_charts(report: BenchReport, directory: str | Path, reference: str = REFERENCE_IMPL) -> list[Path]:
    """Draw one PNG per suite and case of ``report`` into ``directory`` (created if needed).

    Returns:
        The written files, in report order.

    Raises:
        BenchError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("PNG charts need matplotlib; install it with: pip install 'catga[bench]'") from exc

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], dict[str, list[BenchResult]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted_results(report.results, reference):
        groups[(r.suite, r.case)][r.impl].append(r)

    written: list[Path] = []
    for (suite, case), impls in groups.items():
        fig = _draw_chart(report, suite, case, impls, reference)
        path = out_dir / chart_filename(suite, case)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _draw_chart(
    report: BenchReport, suite: str, case: str, impls: dict[str, list[BenchResult]], reference: str
) -> Any:
    """The matplotlib figure of one suite and case (``impls``: results by implementation)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, (ax_ops, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = sorted({r.concurrency for rows in impls.values() for r in rows})
    for idx, (impl, rows) in enumerate(impls.items()):
        rows = sorted(rows, key=lambda r: r.concurrency)
        xs = [r.concurrency for r in rows]
        color = f"C{idx % 10}"
        width = 2.4 if impl == reference else 1.4
        ax_ops.plot(xs, [r.ops_per_s for r in rows], marker="o", color=color, lw=width, label=impl)
        for attr, style, pct in (("p50_us", "-", "P50"), ("p95_us", "--", "P95"), ("p99_us", ":", "P99")):
            ax_lat.plot(
                xs,
                [getattr(r, attr) for r in rows],
                linestyle=style,
                marker=".",
                color=color,
                lw=width,
                label=f"{impl} {pct}",
            )
    for ax in (ax_ops, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([f"{c:,}" for c in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrency")
        ax.grid(True, alpha=0.3)
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax_ops.set_ylabel("ops/s")
    ax_ops.set_ylim(bottom=0)
    ax_ops.set_title("throughput")
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    ax_lat.set_ylabel("latency µs")
    ax_lat.set_title("latency P50 / P95 / P99")
    # Below the plots, not over the lines: colours name the implementations, styles the percentiles.
    impl_handles = [Line2D([], [], color=f"C{i % 10}", lw=2, marker="o") for i in range(len(impls))]
    pct_handles = [Line2D([], [], color="0.3", linestyle=st) for st in ("-", "--", ":")]
    fig.legend(
        [*impl_handles, *pct_handles],
        [*impls, "P50", "P95", "P99"],
        loc="lower center",
        ncol=min(len(impls) + 3, 7),
        fontsize="small",
        frameon=False,
    )
    fig.suptitle(f"{suite} · {case}  ({report.python}, {report.loop})")
    rows_of_legend = -(-(len(impls) + 3) // 7)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend + 0.02, 1, 1))
    return fig
