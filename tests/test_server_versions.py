"""Version gates (issue 9, finding 5): a server older than a backend needs is refused when the
connection opens and by ``catga doctor``, naming the version found and the version needed.

The old servers are stand-ins that speak just enough protocol to report a version (a NATS ``INFO``,
a Redis ``HELLO``); the current servers of the test session must pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest
from typer.testing import CliRunner

import catga
from catga._versions import parse_version, require_version
from catga.cli import app as cli
from catga.errors import ConfigurationError, UnsupportedServerError

# -- the gate itself -------------------------------------------------------------------------------


def test_versions_are_parsed_leniently() -> None:
    assert parse_version("2.9.10") == (2, 9, 10)
    assert parse_version("v2.11.0-beta.2") == (2, 11, 0)
    assert parse_version("7.0") == (7, 0, 0)
    assert parse_version("unknown") is None


def test_the_gate_names_the_version_found_and_the_version_needed() -> None:
    with pytest.raises(UnsupportedServerError) as caught:
        require_version("nats", "10.0.0.1:4222", "2.9.10", (2, 11, 0), "the NATS event store")
    err = caught.value
    assert isinstance(err, ConfigurationError)
    assert (err.backend, err.found, err.needed) == ("nats", "2.9.10", "2.11.0")
    assert str(err) == (
        "nats-server 2.9.10 at 10.0.0.1:4222 is too old: the NATS event store needs nats-server 2.11.0 "
        "or newer; upgrade the server"
    )
    require_version("nats", "h:1", "2.11.0", (2, 11, 0), "x")  # exactly the minimum passes
    require_version("redis", "h:1", "8.0.2", (6, 2, 0), "x")
    require_version("redis", "h:1", None, (6, 2, 0), "x")  # unknown: not refused
    require_version("redis", "h:1", "garnet", (6, 2, 0), "x")


# -- stand-in servers ------------------------------------------------------------------------------


@asynccontextmanager
async def fake_nats(version: str) -> AsyncIterator[str]:
    """A NATS server that sends ``INFO`` with ``version`` and answers ``PING``: enough to connect."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "FAKE", "version": version, "proto": 1, "headers": True, "max_payload": 1 << 20}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        try:
            while line := await reader.readline():
                if line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with _server(serve) as port:
        yield f"nats://127.0.0.1:{port}"


@asynccontextmanager
async def fake_redis(reply: Callable[[list[bytes]], bytes]) -> AsyncIterator[str]:
    """A Redis server answering each command with ``reply(command)`` (raw RESP)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    writer.write(reply(command))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with _server(serve) as port:
        yield f"redis://127.0.0.1:{port}/0"


@asynccontextmanager
async def _server(serve: Any) -> AsyncIterator[int]:
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await serve(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        if handlers:
            await asyncio.wait(handlers)
        await server.wait_closed()


def _bulk(text: str) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(text.encode()), text.encode())


def redis_reporting(version: str, *, hello: bool = True) -> Callable[[list[bytes]], bytes]:
    """Replies of a Redis ``version`` (before 6.0 it does not know ``HELLO``)."""

    def reply(command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"HELLO":
            if not hello:
                return b"-ERR unknown command 'HELLO', with args beginning with: '2' \r\n"
            fields = ["server", "redis", "version", version, "proto", "2"]
            return b"*%d\r\n" % len(fields) + b"".join(_bulk(f) for f in fields)
        if name == b"INFO":
            return _bulk(f"# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n")
        if name == b"PING":
            return b"+PONG\r\n"
        return b"-ERR not in this fake\r\n"

    return reply


def doctor(*args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    env = {"CATGA_NATS_URL": None, "CATGA_REDIS_URL": None, "CATGA_POSTGRES_URL": None}
    result = CliRunner().invoke(cli, ["doctor", "--json", "--timeout", "3", *args], env=env)
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


# -- NATS ------------------------------------------------------------------------------------------


async def test_an_app_refuses_a_nats_server_older_than_2_10() -> None:
    async with fake_nats("2.9.10") as url:
        app = catga.App(transport=url)
        with pytest.raises(UnsupportedServerError) as caught:
            await app.start()
    assert not app.running
    assert caught.value.found == "2.9.10" and caught.value.needed == "2.10.0"
    assert "nats-server 2.9.10 at 127.0.0.1:" in str(caught.value)


async def test_nats_stores_refuse_a_server_older_than_they_need() -> None:
    from catga.nats import NatsConnection, NatsEventStore, NatsIdempotencyStore, NatsOutboxStore

    async with fake_nats("2.10.18") as url:
        conn = await NatsConnection.connect(url)  # the transport's 2.10 is enough for the connection
        try:
            with pytest.raises(UnsupportedServerError, match=r"NatsEventStore \(batch direct get\) needs "):
                NatsEventStore(conn)
            with pytest.raises(UnsupportedServerError, match=r"needs nats-server 2\.11\.0 or newer"):
                NatsIdempotencyStore(conn)
        finally:
            await conn.aclose()
        app = catga.App(store=url)
        with pytest.raises(UnsupportedServerError, match=r"2\.10\.18 .* NatsEventStore"):
            await app.start()
    async with fake_nats("2.11.4") as url:
        conn = await NatsConnection.connect(url)
        try:
            NatsEventStore(conn)
            with pytest.raises(UnsupportedServerError, match=r"batch publish\) needs nats-server 2\.12\.0"):
                NatsOutboxStore(conn)
        finally:
            await conn.aclose()


async def test_doctor_fails_on_an_old_nats_server() -> None:
    async with fake_nats("2.9.10") as url:
        code, checks = await asyncio.to_thread(doctor, "--nats", url)
    assert code == 1
    nats_check = checks["nats"]
    assert nats_check["status"] == "fail"
    assert "nats-server 2.9.10 at" in nats_check["detail"]
    assert "needs nats-server 2.11.0 or newer" in nats_check["detail"]


@pytest.mark.nats
async def test_the_session_nats_server_passes_and_memory_streams_are_flagged(
    nats_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from catga.nats import NatsConnection, NatsEventStore, NatsOutboxStore

    conn = await NatsConnection.connect(nats_url)
    try:
        NatsEventStore(conn)  # the current server is new enough for every part
        NatsOutboxStore(conn)
        store = NatsEventStore(conn, stream=unique_name, prefix=unique_name, storage="memory")
        with caplog.at_level(logging.WARNING, logger="catga.nats"):
            await store.append("s-1", [])  # creates the stream
            await store.version("s-1")
        code, checks = await asyncio.to_thread(doctor, "--nats", nats_url)
        await conn.js.delete_stream(unique_name)
    finally:
        await conn.aclose()
    assert code == 0, checks
    assert checks["nats"]["status"] == "ok" and checks["nats"]["facts"]["needed_version"] == "2.11.0"
    assert checks["nats durability"]["status"] == "warn"
    assert unique_name in checks["nats durability"]["facts"]["memory_streams"]
    assert any(f"NATS stream {unique_name!r} is on memory storage" in r.getMessage() for r in caplog.records)


# -- Redis -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "hello"), [("6.0.16", True), ("5.0.7", False)], ids=["6.0-hello", "5.0-info"]
)
async def test_an_app_refuses_a_redis_older_than_6_2(version: str, hello: bool) -> None:
    async with fake_redis(redis_reporting(version, hello=hello)) as url:
        app = catga.App(transport=url)
        with pytest.raises(UnsupportedServerError) as caught:
            await app.start()
        code, checks = await asyncio.to_thread(doctor, "--redis", url)
    assert not app.running
    assert (caught.value.found, caught.value.needed) == (version, "6.2.0")
    assert f"Redis {version} at 127.0.0.1:" in str(caught.value)
    assert code == 1 and checks["redis"]["status"] == "fail"
    assert f"Redis {version} at" in checks["redis"]["detail"]
    assert "needs Redis 6.2.0 or newer" in checks["redis"]["detail"]


@pytest.mark.redis
async def test_the_session_redis_passes_and_its_lack_of_persistence_is_flagged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from catga.redis import RedisClient

    async with RedisClient.from_url(redis_url) as client:
        await client.ping()
        found = parse_version(client.server_version or "")
    assert found is not None and found >= (6, 2, 0)
    code, checks = await asyncio.to_thread(doctor, "--redis", redis_url)
    assert code == 0, checks  # a warning does not fail the run
    assert checks["redis"]["status"] == "ok"
    durability = checks["redis durability"]
    assert durability["status"] == "warn" and "no persistence" in durability["detail"]
    with caplog.at_level(logging.WARNING, logger="catga.redis"):
        async with catga.App(transport=redis_url):
            pass
    assert any("can lose acknowledged messages: no persistence" in r.getMessage() for r in caplog.records)
