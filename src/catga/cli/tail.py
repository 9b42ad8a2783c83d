"""``catga tail``: print the events of a stream, or of the global log, without the app's types.

The URL is the one the application gives ``catga.App(store=URL)`` (``?prefix=`` included). Events are
read raw (:mod:`catga.raw`): each line shows the global position, the stream and version, the type
name, the body as JSON and the metadata; ``--json`` prints one JSON object per line instead. With
``--follow`` it keeps printing new events until interrupted (or until ``--limit`` events were shown).
"""

from __future__ import annotations

import base64
import datetime
import sys
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import msgspec
import typer

from catga.cli._common import reported_errors, run_async
from catga.errors import ConfigurationError, SerializationError
from catga.protocols import EventStore, StoredEvent
from catga.raw import RawEvent, last_position, open_raw_store
from catga.serialization import Format

__all__ = ("event_dict", "tail")

_BATCH = 500


def event_dict(stored: StoredEvent) -> dict[str, Any]:
    """A raw-read event as JSON-ready data: the body decoded as JSON/msgpack, else base64."""
    out: dict[str, Any] = {
        "position": stored.position,
        "stream": stored.stream_id,
        "version": stored.version,
        "type": stored.type_name,
        "timestamp": _iso(stored.timestamp),
        "metadata": dict(stored.metadata),
    }
    raw = stored.data
    if isinstance(raw, RawEvent):
        out["format"] = raw.format or "binary"
        try:
            out["body"] = raw.decoded()
        except SerializationError:
            out["body"] = base64.b64encode(raw.body).decode()
    else:  # pragma: no cover - a raw store always gives RawEvent
        out["body"] = repr(raw)
    return out


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


_encode = msgspec.json.Encoder().encode


def _line(stored: StoredEvent, as_json: bool) -> str:
    data = event_dict(stored)
    if as_json:
        return _encode(data).decode()
    body = data["body"]
    text = body if data.get("format") == "binary" else _encode(body).decode()
    meta = f"  {_encode(data['metadata']).decode()}" if data["metadata"] else ""
    return (
        f"{data['position']:>6}  {data['timestamp']}  {data['stream']}@{data['version']}  "
        f"{data['type']}  {text}{meta}"
    )


async def _events(
    store: EventStore, stream: str | None, start: int, follow: bool
) -> AsyncGenerator[StoredEvent, None]:
    if stream is None:
        if follow:
            async for stored in store.subscribe_all(start):
                yield stored
            return
        while True:
            batch = await store.read_all(start, _BATCH)
            for stored in batch:
                yield stored
            if len(batch) < _BATCH:
                return
            start = batch[-1].position + 1
    after = 1
    version = start
    while True:
        batch = await store.read(stream, version, _BATCH)
        for stored in batch:
            yield stored
        if batch:
            version = batch[-1].version + 1
            after = batch[-1].position + 1
        if len(batch) < _BATCH:
            break
    if not follow:
        return
    if after == 1:  # nothing stored yet: follow from the store's head when it tells it
        after = (await last_position(store) or 0) + 1
    async for stored in store.subscribe_all(after):
        if stored.stream_id == stream and stored.version >= version:
            yield stored


def _format(fmt: str) -> Format:
    if fmt == "msgpack":
        return "msgpack"
    if fmt == "json":
        return "json"
    raise ConfigurationError(f"--format is json or msgpack, got {fmt!r}")


def tail(
    stream: Annotated[
        str | None, typer.Argument(help="A stream id; without it, the global log of every stream.")
    ] = None,
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="CATGA_STORE_URL",
            help="The app's event store URL (nats://..., redis://..., with ?prefix= if the app uses one).",
            show_default=False,
        ),
    ] = "",
    start: Annotated[
        int | None,
        typer.Option(
            "--from",
            envvar="CATGA_TAIL_FROM",
            help="First global position (default 1), or first version with a STREAM (default 0).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", envvar="CATGA_TAIL_FOLLOW", help="Keep printing new events.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, envvar="CATGA_TAIL_LIMIT", help="Stop after this many events."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", envvar="CATGA_FORMAT", help="The app's serialization format: json or msgpack."
        ),
    ] = "json",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event and line.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds for connecting and each call.")] = 5.0,
) -> None:
    """Print a stream's events, or every stream's (the global log), without the app's types."""
    with reported_errors():
        if not url:
            raise ConfigurationError("give the app's event store URL: --url URL (or CATGA_STORE_URL)")
        _format(fmt)
        if start is not None and start < 0:
            raise ConfigurationError(f"--from must be >= 0, got {start}")
        first = start if start is not None else (0 if stream is not None else 1)

        async def work() -> int:
            shown = 0
            async with open_raw_store(url, format=_format(fmt), timeout=timeout) as store:
                events = _events(store, stream, first, follow)
                try:
                    async for stored in events:
                        sys.stdout.write(_line(stored, as_json) + "\n")
                        sys.stdout.flush()
                        shown += 1
                        if limit is not None and shown >= limit:
                            break
                finally:
                    await events.aclose()
            return shown

        shown = run_async(work)
        if not shown and not as_json:
            where = f"stream {stream!r}" if stream is not None else "the store"
            sys.stderr.write(f"no events in {where} from {first} (is --url's ?prefix= the app's?)\n")
