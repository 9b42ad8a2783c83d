"""``catga demo``: run the orders example and narrate it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from catga.cli._common import out_console, print_json, reported_errors, run_async
from catga.errors import ConfigurationError

if TYPE_CHECKING:
    from catga.examples.orders_demo import DemoStep

__all__ = ("demo",)

_STYLE = {
    "event": "cyan",
    "notify": "magenta",
    "inventory": "blue",
    "compensate": "yellow",
    "step": "blue",
    "wait": "cyan",
    "declined": "yellow",
    "problem": "bold red",
}


def demo(
    transport: Annotated[
        str,
        typer.Option(
            envvar="CATGA_TRANSPORT", help="Where events travel: memory://, nats://..., redis://..."
        ),
    ] = "memory://",
    store: Annotated[
        str, typer.Option(envvar="CATGA_STORE", help="Where order event streams live.")
    ] = "memory://",
    as_json: Annotated[
        bool, typer.Option("--json", envvar="CATGA_DEMO_JSON", help="Print the steps as JSON.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="CATGA_DEMO_TIMEOUT",
            min=0.1,
            help="Seconds to wait after each step for its events to arrive through a remote transport.",
        ),
    ] = 10.0,
    workflow: Annotated[
        bool,
        typer.Option(
            "--workflow",
            help="Run the workflow version instead: reserve stock → charge → wait for shipment, "
            "with compensation on a declined card and on a shipment timeout.",
        ),
    ] = False,
    workflows: Annotated[
        str,
        typer.Option(
            envvar="CATGA_WORKFLOWS",
            help="With --workflow: where the workflows are recorded: memory://, postgresql://..., "
            "redis://..., nats://...",
        ),
    ] = "memory://",
) -> None:
    """Run the orders example (create, pay, roll back, cancel, query) step by step.

    With a NATS or Redis transport the notifications run in a second app fed by the transport. On
    remote servers the demo works under a fresh prefix and deletes it at the end.
    With ``--workflow`` it runs the durable-workflow version (``catga.examples.orders_workflow``)
    on the ``--workflows`` store instead. Exits 1 when a step does not behave as expected.
    """
    from catga.backends import parse_url, redact_url
    from catga.examples.orders_demo import run_demo

    if workflow:
        _workflow_demo(workflows, as_json, timeout, transport, store)
        return
    with reported_errors():
        # Check both URLs before printing anything: the error names the option (or its variable).
        parse_url(transport, role="--transport (CATGA_TRANSPORT)")
        parse_url(store, role="--store (CATGA_STORE)")
        console = out_console()
        show = _shower(console, as_json)

        if not as_json:
            console.print(
                f"[bold]catga demo[/] · orders on transport {escape(redact_url(transport))}, "
                f"store {escape(redact_url(store))}\nstock at start: widget 10, gadget 1\n"
            )
        report = run_async(lambda: run_demo(transport, store, on_step=show, settle_timeout=timeout))
        if as_json:
            print_json(
                {
                    "ok": report.ok,
                    "transport": report.transport,
                    "store": report.store,
                    "namespace": report.namespace,
                    "steps": [asdict(s) for s in report.steps],
                    "stock": report.stock,
                    "streams": report.streams,
                }
            )
        else:
            stock = ", ".join(f"{k} {v}" for k, v in report.stock.items())
            streams = ", ".join(f"{k}: {v} event(s)" for k, v in report.streams.items())
            console.print(f"stock at end: {escape(stock)}")
            console.print(f"order streams: {escape(streams)}")
            if report.namespace is not None:
                console.print(f"worked under prefix {escape(report.namespace)} (deleted from the servers)")
            if report.ok:
                console.print(f"[bold green]✓ all {len(report.steps)} steps behaved as expected[/]")
            else:
                bad = [str(s.number) for s in report.steps if not s.ok]
                console.print(f"[bold red]✗ unexpected outcome in step(s) {', '.join(bad)}[/]")
        if not report.ok:
            raise typer.Exit(1)


def _shower(console: Any, as_json: bool) -> Callable[[DemoStep], None]:
    def show(step: DemoStep) -> None:
        if as_json:
            return
        console.print(f"[bold]{step.number}. {escape(step.title)}[/]")
        for kind, text in step.lines:
            style = _STYLE.get(kind, "")
            console.print(
                f"     [{style}]{kind:<10}[/] {escape(text)}" if style else f"     {kind:<10} {escape(text)}"
            )
        mark = "[green]✓[/]" if step.ok else "[bold red]✗ UNEXPECTED[/]"
        expected = "" if step.ok else f" (expected {escape(step.expected)})"
        console.print(f"   {mark} {escape(step.outcome)}: {escape(step.detail)}{expected}\n")

    return show


def _workflow_demo(workflows: str, as_json: bool, timeout: float, transport: str, store: str) -> None:
    from catga.backends import parse_url, redact_url
    from catga.examples.orders_workflow import run_workflow_demo

    with reported_errors():
        for value, option in ((transport, "--transport"), (store, "--store")):
            if value != "memory://":
                raise ConfigurationError(
                    f"{option} is for the orders demo; with --workflow give the workflow store as "
                    "--workflows URL (CATGA_WORKFLOWS)"
                )
        try:
            from catga.workflows._app import engine_options

            parse_url(engine_options(workflows)[0], role="workflows")
        except ConfigurationError as exc:
            raise ConfigurationError(f"--workflows (CATGA_WORKFLOWS): {exc}") from None
        console = out_console()
        if not as_json:
            console.print(
                f"[bold]catga demo --workflow[/] · place_order on workflows "
                f"{escape(redact_url(workflows))}\nstock at start: widget 10, gadget 1\n"
            )
        report = run_async(
            lambda: run_workflow_demo(workflows, on_step=_shower(console, as_json), timeout=max(timeout, 5.0))
        )
        if as_json:
            print_json(
                {
                    "ok": report.ok,
                    "workflows": report.store,
                    "namespace": report.namespace,
                    "steps": [asdict(s) for s in report.steps],
                    "stock": report.stock,
                }
            )
        else:
            stock = ", ".join(f"{k} {v}" for k, v in report.stock.items())
            console.print(f"stock at end: {escape(stock)}")
            if report.namespace is not None:
                console.print(f"worked under prefix {escape(report.namespace)} (deleted from the server)")
            if report.ok:
                console.print(f"[bold green]✓ all {len(report.steps)} steps behaved as expected[/]")
            else:
                bad = [str(s.number) for s in report.steps if not s.ok]
                console.print(f"[bold red]✗ unexpected outcome in step(s) {', '.join(bad)}[/]")
    if not report.ok:
        raise typer.Exit(1)
