"""``catga bench``: run benchmark suites, print a table with ratios, write JSON / Markdown / PNG."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from catga.bench.discovery import SUITES_PACKAGE, SuiteUnavailableError, available_suites, check_suite_names
from catga.bench.harness import BenchCase, BenchConfig, BenchEnv, BenchError
from catga.bench.report import BenchReport, render_markdown, render_tables
from catga.bench.runner import ProgressSink, run_suites
from catga.cli._common import err_console, out_console, print_json, reported_errors, run_async

__all__ = ("bench", "parse_concurrency")


def parse_concurrency(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,4"`` into ``(1, 2, 4)``.

    Raises:
        BenchError: A part is not a positive integer.
    """
    levels: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise BenchError(f"--concurrency expects positive integers like 1,2,4,8, got {text!r}")
        levels.append(value)
    if not levels:
        raise BenchError(f"--concurrency expects positive integers like 1,2,4,8, got {text!r}")
    return tuple(levels)


def _check_concurrency(value: str | None) -> str | None:
    """Option callback: a bad ``--concurrency`` is a usage error (exit 2), like any bad option value."""
    if value:
        try:
            parse_concurrency(value)
        except BenchError as exc:
            raise typer.BadParameter(str(exc).removeprefix("--concurrency ")) from None
    return value


class _RichProgress:
    """A :class:`ProgressSink` drawing a rich progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("starting", total=None)

    def plan(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def start(self, suite: str, case: BenchCase) -> None:
        self._progress.update(self._task, description=f"{suite} · {case.case} · {case.impl}")

    def advance(self, steps: int) -> None:
        self._progress.advance(self._task, steps)


def _list_suites(as_json: bool, package: str) -> None:
    rows: list[dict[str, str]] = []
    for item in available_suites(package):
        if isinstance(item, SuiteUnavailableError):
            rows.append({"suite": item.suite, "status": "unavailable", "detail": str(item)})
        else:
            rows.append({"suite": item.name, "status": "ok", "detail": item.doc})
    if as_json:
        print_json({"suites": rows})
        return
    console = out_console()
    for row in rows:
        mark = "[green]ok[/]" if row["status"] == "ok" else "[red]unavailable[/]"
        console.print(f"{row['suite']:<24} {mark}  {escape(row['detail'])}", markup=True, highlight=False)


def bench(
    suites: Annotated[
        list[str] | None,
        typer.Argument(
            help="Suites to run (e.g. mediator eventstore-nats); all when omitted.", show_default=False
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", envvar="CATGA_BENCH_QUICK", help="Smoke run: 0.2 s per run, concurrency 1,4,16."
        ),
    ] = False,
    concurrency: Annotated[
        str | None,
        typer.Option(
            envvar="CATGA_BENCH_CONCURRENCY",
            callback=_check_concurrency,
            help="Comma-separated levels [default: 1,2,4,8,16,32; quick: 1,4,16].",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            envvar="CATGA_BENCH_DURATION", help="Seconds per measured run [default: 2; quick: 0.2]."
        ),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(
            envvar="CATGA_BENCH_WARMUP", help="Seconds of warm-up per run [default: 0.3; quick: 0.05]."
        ),
    ] = None,
    json_file: Annotated[
        str | None,
        typer.Option(
            "--json", envvar="CATGA_BENCH_JSON", help="Write the JSON report here ('-' for stdout)."
        ),
    ] = None,
    png_dir: Annotated[
        Path | None,
        typer.Option("--png", envvar="CATGA_BENCH_PNG", help="Write PNG charts into this directory."),
    ] = None,
    markdown_file: Annotated[
        Path | None,
        typer.Option("--markdown", envvar="CATGA_BENCH_MARKDOWN", help="Write a Markdown table here."),
    ] = None,
    loop: Annotated[
        str, typer.Option(envvar="CATGA_BENCH_LOOP", help="Event loop: asyncio or uvloop.")
    ] = "asyncio",
    case: Annotated[
        list[str] | None,
        typer.Option("--case", envvar="CATGA_BENCH_CASE", help="Only this case (repeatable)."),
    ] = None,
    impl: Annotated[
        list[str] | None,
        typer.Option("--impl", envvar="CATGA_BENCH_IMPL", help="Only this impl (repeatable)."),
    ] = None,
    server_cpu: Annotated[
        int | None,
        typer.Option(
            envvar="CATGA_BENCH_SERVER_CPU",
            help="Pin started servers to this CPU (GOMAXPROCS=1) and this process to the others.",
        ),
    ] = None,
    package: Annotated[
        str,
        typer.Option(envvar="CATGA_BENCH_PACKAGE", help="Package to discover suites in (your own suites)."),
    ] = SUITES_PACKAGE,
    list_suites: Annotated[
        bool, typer.Option("--list", envvar="CATGA_BENCH_LIST", help="List the suites and exit.")
    ] = False,
) -> None:
    """Run benchmark suites side by side with the Python peers; print ops/s, P50/P95/P99 and ratios.

    Exits 1 when a suite or case could not be measured (the others are still reported).
    """
    with reported_errors():
        if list_suites:
            _list_suites(json_file == "-", package)
            return
        levels = parse_concurrency(concurrency) if concurrency else None
        config = BenchConfig.create(
            quick=quick, concurrency=levels, duration=duration, warmup=warmup, loop=loop
        )
        stdout_json = json_file == "-"
        check_suite_names(list(suites or ()), package)
        report = run_async(
            lambda: _run(list(suites or ()), config, server_cpu, list(case or ()), list(impl or ()), package),
            loop,
        )
        _emit(report, json_file, png_dir, markdown_file, stdout_json)
        if report.failures:
            raise typer.Exit(1)


async def _run(
    suites: list[str],
    config: BenchConfig,
    server_cpu: int | None,
    cases: list[str],
    impls: list[str],
    package: str,
) -> BenchReport:
    console = err_console()
    env = BenchEnv(quick=config.quick, max_concurrency=max(config.concurrency), server_cpu=server_cpu)
    async with env:
        if not console.is_terminal:
            return await run_suites(
                suites, config, env=env, package=package, cases_filter=cases, impls_filter=impls
            )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            sink: ProgressSink = _RichProgress(progress)
            return await run_suites(
                suites,
                config,
                env=env,
                progress=sink,
                package=package,
                cases_filter=cases,
                impls_filter=impls,
            )


def _emit(
    report: BenchReport,
    json_file: str | None,
    png_dir: Path | None,
    markdown_file: Path | None,
    stdout_json: bool,
) -> None:
    # With --json - the table goes to stderr so stdout stays machine-readable.
    console = err_console() if stdout_json else out_console()
    if report.results:
        for table in render_tables(report):
            console.print(table)
        console.print(escape(f"{report.machine}; timer overhead {report.timer_overhead_ns:.0f} ns per call"))
    else:
        console.print("no results")
    for failure in report.failures:
        where = failure.suite if failure.case == "*" else f"{failure.suite} · {failure.case} · {failure.impl}"
        err_console().print(
            f"[bold red]failed[/] {escape(where)}: {escape(failure.error)}", markup=True, highlight=False
        )
    if stdout_json:
        print_json(report.to_json())
    elif json_file:
        path = report.write_json(json_file)
        console.print(f"JSON report: {path}", markup=False)
    if markdown_file is not None:
        markdown_file.parent.mkdir(parents=True, exist_ok=True)
        markdown_file.write_text(render_markdown(report), encoding="utf-8")
        console.print(f"Markdown table: {markdown_file}", markup=False)
    if png_dir is not None and report.results:
        from catga.bench.charts import write_charts

        written = write_charts(report, png_dir)
        console.print(f"PNG charts: {len(written)} in {png_dir}", markup=False)
    sys.stdout.flush()
