"""The ``catga`` Typer application: global options and the sub-commands."""

from __future__ import annotations

import platform
import sys
from typing import Annotated

import typer

from catga.cli._common import state
from catga.cli.bench import bench
from catga.cli.demo import demo
from catga.cli.dlq import dlq_app
from catga.cli.doctor import doctor
from catga.cli.tail import tail
from catga.cli.workflows import workflows_app

__all__ = ("app", "main", "version_line")

app = typer.Typer(
    name="catga",
    help="catga: asyncio CQRS, event sourcing and reliable messaging on memory, NATS JetStream and Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def version_line() -> str:
    """``catga X.Y.Z · CPython 3.11.7 · Linux-...`` (what ``catga --version`` prints)."""
    from catga import __version__

    return (
        f"catga {__version__} · {platform.python_implementation()} {platform.python_version()} · "
        f"{platform.platform()}"
    )


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_line() + "\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print catga, Python and platform versions.",
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="CATGA_DEBUG", help="Show full tracebacks on errors.")
    ] = False,
) -> None:
    """catga: asyncio CQRS, event sourcing and reliable messaging on memory, NATS JetStream and Redis."""
    state.debug = debug


app.command()(demo)
app.command()(bench)
app.command()(doctor)
app.add_typer(dlq_app, name="dlq")
app.add_typer(workflows_app, name="workflows")
app.command()(tail)


def main() -> None:
    """Console-script entry point (``catga``)."""
    app()
