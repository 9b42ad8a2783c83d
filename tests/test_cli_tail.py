"""Raw reads (catga.raw) and ``catga tail`` against real NATS, Redis and PostgreSQL stores: no registered
types."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from catga.backends import Backends, parse_url
from catga.cli import app
from catga.errors import ConfigurationError
from catga.messages import Event, message_name
from catga.protocols import EventStore, StoredEvent
from catga.raw import RawEvent, RawRegistry, last_position, open_raw_store
from catga.serialization import TypeRegistry


@message_name("test_cli_tail.Shipped")
@dataclass(frozen=True)
class Shipped(Event):
    parcel: str
    weight: int


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def app_url(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[str]:
    """The app's store URL in a namespace of its own: a NATS or Redis prefix, a PostgreSQL database."""
    if request.param == "nats":
        yield f"{request.getfixturevalue('nats_url')}?prefix={unique_name}&storage=memory"
    elif request.param == "redis":
        yield f"{request.getfixturevalue('redis_url')}?prefix={unique_name}"
    else:
        import asyncpg

        server: str = request.getfixturevalue("postgres_url")
        admin = await asyncpg.connect(server, timeout=30)
        try:
            await admin.execute(f"CREATE DATABASE {unique_name}")
            base, _, query = server.partition("?")
            yield f"{base.rsplit('/', 1)[0]}/{unique_name}" + (f"?{query}" if query else "")
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {unique_name} WITH (FORCE)")
            await admin.close()


@pytest.fixture
async def typed_store(app_url: str, request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """The app's store on ``app_url``, with the app's types (the format is the test's ``fmt`` param)."""
    fmt = getattr(request, "param", "json")
    backends = Backends(name="test-cli-tail", registry=TypeRegistry(fmt, types=[Shipped]))
    try:
        yield await backends.opened("store", parse_url(app_url, "store"))
    finally:
        for _, close in backends.closers():
            await close()


async def fill(store: EventStore) -> None:
    await store.append("parcel-1", [Shipped("p1", 3)], metadata={"correlation_id": "c-1"})
    await store.append("parcel-2", [Shipped("p2", 5), Shipped("p2", 6)])
    await store.append("parcel-1", [Shipped("p1", 4)])


async def test_raw_reads_need_no_registered_type(app_url: str, typed_store: EventStore) -> None:
    await fill(typed_store)
    async with open_raw_store(app_url) as raw:
        everything = await raw.read_all()
        stream = await raw.read("parcel-2")
        with pytest.raises(ValueError, match="raw reader cannot store"):  # a backend may wrap it
            await raw.append("parcel-3", [Shipped("p3", 1)])
    assert [(e.stream_id, e.version) for e in everything] == [
        ("parcel-1", 0), ("parcel-2", 0), ("parcel-2", 1), ("parcel-1", 1)
    ]  # fmt: skip
    first = everything[0]
    assert isinstance(first.data, RawEvent)
    assert first.type_name == first.data.type_name == "test_cli_tail.Shipped"
    assert first.data.format == "json" and first.data.decoded() == {"parcel": "p1", "weight": 3}
    assert first.metadata == {"correlation_id": "c-1"}
    assert [e.data.decoded()["weight"] for e in stream] == [5, 6]


@pytest.mark.parametrize("typed_store", ["msgpack"], indirect=True)
async def test_raw_reads_of_a_msgpack_app(app_url: str, typed_store: EventStore) -> None:
    await fill(typed_store)
    async with open_raw_store(app_url, format="msgpack") as raw:
        events = await raw.read_all()
    assert [e.data.format for e in events] == ["msgpack"] * 4
    assert [e.data.decoded()["weight"] for e in events] == [3, 5, 6, 4]


def test_the_raw_registry_decodes_anything_and_encodes_nothing() -> None:
    registry = RawRegistry()
    assert registry.decode("x", b'{"a":1}') == RawEvent("x", b'{"a":1}', "json")
    assert registry.decode("x", b"\x81\xa1a\x01").decoded() == {"a": 1}
    binary = registry.decode("x", b"\xc1\xff")
    assert binary.format == ""
    with pytest.raises(ConfigurationError):
        registry.encode(Shipped("p", 1))


async def test_tail_prints_the_global_log_and_a_stream(app_url: str, typed_store: EventStore) -> None:
    await fill(typed_store)
    code, out, err = await asyncio.to_thread(invoke, "tail", "--url", app_url, "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["stream"], r["version"], r["body"]["weight"]) for r in rows] == [
        ("parcel-1", 0, 3), ("parcel-2", 0, 5), ("parcel-2", 1, 6), ("parcel-1", 1, 4)
    ]  # fmt: skip
    assert rows[0]["type"] == "test_cli_tail.Shipped" and rows[0]["metadata"] == {"correlation_id": "c-1"}
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)

    code, out, err = await asyncio.to_thread(invoke, "tail", "--url", app_url, "parcel-2", "--from", "1")
    assert code == 0, err
    [line] = out.splitlines()
    assert 'parcel-2@1  test_cli_tail.Shipped  {"parcel":"p2","weight":6}' in line

    code, out, err = await asyncio.to_thread(
        invoke, "tail", "--url", app_url, "--from", str(rows[2]["position"]), "--limit", "1"
    )
    assert code == 0 and "parcel-2@1" in out and len(out.splitlines()) == 1


async def test_tail_follow_prints_new_events_as_they_come(app_url: str, typed_store: EventStore) -> None:
    await fill(typed_store)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "catga.cli", "tail", "--url", app_url, "parcel-1", "--follow", "--limit", "4",
        "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while len(lines) < 2:  # the stored events first
                lines.append(json.loads(await proc.stdout.readline()))
            await typed_store.append("parcel-2", [Shipped("p2", 7)])  # another stream: not shown
            await typed_store.append("parcel-1", [Shipped("p1", 8), Shipped("p1", 9)])
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines += [json.loads(line) for line in out.decode().splitlines()]
    assert [(r["version"], r["body"]["weight"]) for r in lines] == [(0, 3), (1, 4), (2, 8), (3, 9)]


async def test_follow_of_an_empty_stream_starts_at_the_head_of_the_log(
    app_url: str, typed_store: EventStore
) -> None:
    from catga.cli.tail import _events

    await fill(typed_store)
    async with open_raw_store(app_url) as raw:
        head = await last_position(raw)
        assert head == (await raw.read_all())[-1].position  # every store tells its head now (NATS too)
        starts: list[int] = []
        began = asyncio.Event()
        subscribe_all = raw.subscribe_all

        def spy(from_position: int = 1) -> AsyncIterator[StoredEvent]:
            starts.append(from_position)
            began.set()
            return subscribe_all(from_position)

        raw.subscribe_all = spy  # type: ignore[method-assign]
        events = _events(raw, "parcel-9", 0, True)
        try:
            async with asyncio.timeout(60):
                following = asyncio.ensure_future(anext(events))
                await began.wait()  # the follow has begun: add the stream's first event
                await typed_store.append("parcel-9", [Shipped("p9", 1)])
                first = await following
        finally:
            await events.aclose()
    assert starts == [head + 1]  # not 1: the global log is not scanned from its start
    assert (first.stream_id, first.version, first.data.decoded()) == (
        "parcel-9",
        0,
        {"parcel": "p9", "weight": 1},
    )


def test_tail_refuses_a_memory_url_and_a_missing_url() -> None:
    code, _, err = invoke("tail", "--url", "memory://")
    assert code == 1 and "ConfigurationError: an in-memory event store lives in its process" in err
    code, _, err = invoke("tail")
    assert code == 1 and "--url" in err
