"""``catga dlq``: inspect, replay and delete dead letters on NATS or Redis.

The URL is the one the application gives ``catga.App(transport=URL)`` (``prefix=`` included): the dead
letters live where that transport puts them (``NAME_dead_letters`` bucket on NATS, ``NAME:dlq`` keys on
Redis). ``replay`` runs :func:`catga.dead_letters.replay_dead_letters`: each letter's stored body and
headers go back to its destination as what it was (an event is published, a command sent), keeping the
message id but under a fresh broker de-duplication id; the letter is deleted only once the broker acked
the message. A letter that was not republished is kept, and the command exits 1 saying which and why.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from catga.backends import Backends, parse_url, redact_url
from catga.cli._common import out_console, print_json, reported_errors, run_async
from catga.dead_letters import ReplayOutcome, ReplayStatus, replay_dead_letters
from catga.errors import ConfigurationError, NotFoundError
from catga.protocols import DeadLetter, DeadLetterQueue, Transport

__all__ = ("dlq_app", "letter_dict")

T = TypeVar("T")

dlq_app = typer.Typer(
    name="dlq",
    help="Inspect, replay and delete dead letters (NATS or Redis).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="CATGA_TRANSPORT_URL",
        help="The app's transport URL (nats://... or redis://..., with ?prefix= if the app uses one).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def letter_dict(letter: DeadLetter, *, body: bool = False) -> dict[str, Any]:
    """A dead letter as JSON-ready data; the body as UTF-8 text when it is, else base64."""
    out: dict[str, Any] = {
        "id": letter.id,
        "source": letter.source,
        "kind": letter.kind or "event",
        "message_id": letter.message_id,
        "type": letter.type_name,
        "attempts": letter.attempts,
        "failed_at": _iso(letter.failed_at),
        "error": letter.error,
    }
    if body:
        out["headers"] = dict(letter.headers)
        try:
            out["body"] = letter.body.decode("utf-8")
            out["body_encoding"] = "utf-8"
        except UnicodeDecodeError:
            out["body"] = base64.b64encode(letter.body).decode()
            out["body_encoding"] = "base64"
    return out


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


async def _with_dlq(url: str, work: Callable[[Transport, DeadLetterQueue], Awaitable[T]]) -> T:
    """Open the transport ``url`` names and its dead-letter queue, run ``work``, close everything."""
    spec = parse_url(url, "--url")
    if spec.backend == "memory":
        raise ConfigurationError(
            "an in-memory dead-letter queue lives in its process: give a nats:// or redis:// URL"
        )
    backends = Backends(name="catga-cli-dlq")
    try:
        transport = await backends.opened("transport", spec)
        dlq = getattr(transport, "dead_letters", None)
        if dlq is None:  # pragma: no cover - URL-built transports always have one
            raise ConfigurationError(f"the transport for {spec} has no dead-letter queue")
        return await work(transport, dlq)
    finally:
        for _, close in backends.closers():
            await close()


@dlq_app.command("list")
def list_letters(
    url: UrlOption,
    limit: Annotated[int, typer.Option(min=1, help="At most this many letters, oldest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List dead letters, oldest first."""

    async def work(transport: Transport, dlq: DeadLetterQueue) -> tuple[list[DeadLetter], int]:
        return await dlq.list(limit), await dlq.count()

    with reported_errors():
        letters, total = run_async(lambda: _with_dlq(url, work))
        prefix = parse_url(url, "--url").prefix
        if as_json:
            print_json({"count": total, "prefix": prefix, "letters": [letter_dict(x) for x in letters]})
            return
        if total == 0:
            # The usual cause of an empty list is a URL without the app's ?prefix=: say so.
            out_console().print(
                f"no dead letters under prefix {prefix!r} ({redact_url(url)}); check --url's prefix: "
                "it must be the app's transport URL, ?prefix=NAME included, if the app sets one",
                markup=False,
            )
            return
        table = Table(title=f"dead letters: {len(letters)} of {total}", show_header=True)
        for column in ("id", "source", "kind", "type", "attempts", "failed at (UTC)", "error"):
            table.add_column(column, overflow="fold")
        for x in letters:
            d = letter_dict(x)
            table.add_row(
                *(escape(str(d[k])) for k in ("id", "source", "kind", "type", "attempts", "failed_at")),
                escape(x.error[:200]),
            )
        out_console().print(table)


@dlq_app.command("show")
def show_letter(url: UrlOption, letter_id: Annotated[str, typer.Argument(help="The letter's id.")]) -> None:
    """Print one dead letter in full (headers and body) as JSON."""

    async def work(transport: Transport, dlq: DeadLetterQueue) -> DeadLetter | None:
        return await dlq.get(letter_id)

    with reported_errors():
        letter = run_async(lambda: _with_dlq(url, work))
        if letter is None:
            raise NotFoundError(f"no dead letter with id {letter_id!r}")
        print_json(letter_dict(letter, body=True))


@dlq_app.command("replay")
def replay_letters(
    url: UrlOption,
    letter_ids: Annotated[list[str] | None, typer.Argument(help="Letters to replay (default: none).")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every letter (up to --limit).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="With --all: at most this many, oldest first.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Deliver letters again (events published, commands sent), then delete them; exit 1 if any failed.

    A letter is deleted only after the broker acknowledged its message; one that was not republished
    is kept and reported with the reason.
    """
    ids = list(letter_ids or ())
    if not ids and not replay_all:
        raise typer.BadParameter("give letter ids, or --all")

    async def work(transport: Transport, dlq: DeadLetterQueue) -> list[ReplayOutcome]:
        return await replay_dead_letters(transport, dlq, None if replay_all else ids, limit=limit)

    with reported_errors():
        outcomes = run_async(lambda: _with_dlq(url, work))
        replayed = sum(o.republished for o in outcomes)
        not_deleted = sum(o.status is ReplayStatus.NOT_DELETED for o in outcomes)
        failed = len(outcomes) - replayed
        if as_json:
            print_json(
                {
                    "replayed": replayed,
                    "failed": failed,
                    "not_deleted": not_deleted,
                    "letters": [_outcome_dict(o) for o in outcomes],
                }
            )
        else:
            console = out_console()
            for o in outcomes:
                console.print(_outcome_line(o))
            summary = f"{replayed} replayed, {failed} failed"
            console.print(summary + (f", {not_deleted} not deleted" if not_deleted else ""))
        if not all(o.ok for o in outcomes):
            raise typer.Exit(1)


def _outcome_dict(o: ReplayOutcome) -> dict[str, Any]:
    return {
        "id": o.id,
        "status": o.status.value,
        "replayed": o.republished,
        "kind": o.kind,
        "destination": o.destination,
        "error": o.error,
    }


def _outcome_line(o: ReplayOutcome) -> str:
    what = f"{escape(o.id)} ({o.kind}) to {escape(o.destination)}"
    if o.status is ReplayStatus.REPLAYED:
        return f"replayed {what}"
    if o.status is ReplayStatus.REPLAYED_FAILED_AGAIN:
        return f"replayed {what}; it failed again and is dead-lettered anew"
    if o.status is ReplayStatus.NOT_DELETED:
        return f"[bold red]replayed but not deleted[/] {what}: {escape(o.error)}"
    if o.status is ReplayStatus.NOT_FOUND:
        return f"[bold red]not replayed[/] {escape(o.id)}: not found"
    return f"[bold red]not replayed[/] {what}, letter kept: {escape(o.error)}"


@dlq_app.command("delete")
def delete_letters(
    url: UrlOption,
    letter_ids: Annotated[list[str], typer.Argument(help="Letters to delete.")],
) -> None:
    """Delete dead letters for good; exit 1 if one did not exist."""

    async def work(transport: Transport, dlq: DeadLetterQueue) -> list[bool]:
        return [await dlq.delete(i) for i in letter_ids]

    with reported_errors():
        existed = run_async(lambda: _with_dlq(url, work))
        console = out_console()
        for letter_id, ok in zip(letter_ids, existed, strict=True):
            console.print(
                f"deleted {escape(letter_id)}" if ok else f"[bold red]not found[/] {escape(letter_id)}"
            )
        if not all(existed):
            raise typer.Exit(1)
