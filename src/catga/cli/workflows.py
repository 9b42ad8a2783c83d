"""``catga workflows``: list, show and cancel durable workflows on NATS, Redis or PostgreSQL.

The URL is the one the application gives ``catga.App(workflows=URL)`` (``prefix=`` included). Cancel
only marks the workflow: a running app's engine runs its compensations and ends it ``cancelled``.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from catga.backends import Backends, parse_url
from catga.cli._common import out_console, print_json, reported_errors, run_async
from catga.errors import ConfigurationError, NotFoundError
from catga.workflows import STATUSES, HistoryEntry, WorkflowInstance, WorkflowStore
from catga.workflows._app import engine_options

__all__ = ("instance_dict", "workflows_app")

T = TypeVar("T")

workflows_app = typer.Typer(
    name="workflows",
    help="List, show and cancel durable workflows (NATS, Redis or PostgreSQL).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="CATGA_WORKFLOWS_URL",
        help="The app's workflows URL (nats://, redis:// or postgresql://, with ?prefix= if it uses one).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _iso(ts: float) -> str | None:
    if not ts or ts >= 1e14:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def instance_dict(i: WorkflowInstance) -> dict[str, Any]:
    """A workflow's state as JSON-ready data (input and result as text)."""
    return {
        "id": i.id,
        "name": i.name,
        "version": i.version,
        "status": i.status,
        "created_at": _iso(i.created_at),
        "updated_at": _iso(i.updated_at),
        "wake_at": _iso(i.wake_at),
        "waiting_for": i.wait_for or None,
        "cancel_requested": i.cancel_requested,
        "owner": i.owner or None,
        "input": i.input.decode(errors="replace"),
        "result": i.result.decode(errors="replace") or None,
        "error": i.error or None,
    }


def _entry_dict(e: HistoryEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "name": e.name,
        "ok": e.ok,
        "at": _iso(e.at),
        "value": e.value.decode(errors="replace"),
        "error_type": e.error_type or None,
    }


async def _with_store(url: str, work: Callable[[WorkflowStore], Awaitable[T]]) -> T:
    spec = parse_url(engine_options(url)[0], "--url")  # the engine's ?lease=... is not the store's
    if spec.backend == "memory":
        raise ConfigurationError(
            "in-memory workflows live in their process: give a nats://, redis:// or postgresql:// URL"
        )
    backends = Backends(name="catga-cli-workflows")
    try:
        store: WorkflowStore = await backends.opened("workflows", spec)
        return await work(store)
    finally:
        for _, close in backends.closers():
            await close()


@workflows_app.command("list")
def list_workflows(
    url: UrlOption,
    status: Annotated[str | None, typer.Option(help=f"Only this status: {', '.join(STATUSES)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List workflows, oldest first."""
    with reported_errors():
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        found = run_async(lambda: _with_store(url, lambda s: s.list_instances(status, limit)))
        if as_json:
            print_json({"workflows": [instance_dict(i) for i in found]})
            return
        table = Table(title=f"workflows: {len(found)}", show_header=True)
        for column in ("id", "name", "version", "status", "created (UTC)", "error"):
            table.add_column(column, overflow="fold")
        for i in found:
            d = instance_dict(i)
            table.add_row(
                *(escape(str(d[k] or "")) for k in ("id", "name", "version", "status", "created_at", "error"))
            )
        out_console().print(table)


@workflows_app.command("show")
def show_workflow(
    url: UrlOption, workflow_id: Annotated[str, typer.Argument(help="The workflow id.")]
) -> None:
    """Print one workflow's state and history as JSON."""

    async def work(store: WorkflowStore) -> tuple[WorkflowInstance | None, list[HistoryEntry]]:
        return await store.get(workflow_id), await store.history(workflow_id)

    with reported_errors():
        instance, history = run_async(lambda: _with_store(url, work))
        if instance is None:
            raise NotFoundError(f"no workflow with id {workflow_id!r}")
        print_json({**instance_dict(instance), "history": [_entry_dict(e) for e in history]})


@workflows_app.command("cancel")
def cancel_workflow(
    url: UrlOption, workflow_id: Annotated[str, typer.Argument(help="The workflow id.")]
) -> None:
    """Ask a workflow to stop: a running app compensates it and ends it ``cancelled``; exit 1 if it
    is finished or unknown."""
    with reported_errors():
        requested = run_async(lambda: _with_store(url, lambda s: s.request_cancel(workflow_id)))
        if not requested:
            raise NotFoundError(f"no unfinished workflow with id {workflow_id!r}")
        out_console().print(f"cancel requested for {workflow_id}", markup=False)
