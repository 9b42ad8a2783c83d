"""An app whose Redis server dies: the caller gets ``unavailable``, shutdown leaves no stray future."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from catga import App, Event
from catga.errors import ErrorCode
from catga.messages import message_name
from catga.redis import RedisClient
from catga.testing.servers import RedisServer

pytestmark = pytest.mark.redis


@message_name("death.Noted")
class Noted(msgspec.Struct, Event, frozen=True):
    text: str


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Every call of the running loop's exception handler (a "never retrieved" future, say)."""
    loop = asyncio.get_running_loop()
    calls: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    yield calls
    loop.set_exception_handler(previous)


def _crash_during(server: RedisServer) -> None:
    """Freeze the server (so commands sent now stay unanswered), then kill it."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)


async def test_pipelined_commands_in_flight_at_a_crash_leave_no_unretrieved_future(
    loop_errors: list[dict[str, Any]],
) -> None:
    with RedisServer() as server:
        client = RedisClient.from_url(server.url)
        await client.execute("PING")
        _crash_during(server)
        call = asyncio.ensure_future(client.execute_many([("SET", "a", b"1"), ("PUBLISH", "c", b"m")]))
        await asyncio.sleep(0.1)
        server.kill()
        with pytest.raises(ConnectionError):
            await call
        await client.aclose()
        del call
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_stopping_an_app_after_its_redis_server_died(
    unique_name: str, loop_errors: list[dict[str, Any]]
) -> None:
    with RedisServer() as server:
        app = App(transport=f"{server.url}?prefix={unique_name}", name=unique_name)
        app.export(Noted)
        app.consume(Noted)
        await app.start()
        try:
            assert (await app.publish(Noted("before"))).ok
            _crash_during(server)
            pending = asyncio.ensure_future(app.publish(Noted("in flight")))
            await asyncio.sleep(0.1)
            server.kill()
            result = await pending
            assert not result.ok
            assert result.code == ErrorCode.UNAVAILABLE, result
            later = await app.publish(Noted("after"))
            assert later.code == ErrorCode.UNAVAILABLE, later
        finally:
            await app.aclose()
        del pending, result
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_closing_an_app_whose_redis_server_was_stopped(
    unique_name: str, loop_errors: list[dict[str, Any]]
) -> None:
    server = RedisServer().start()
    try:
        app = App(transport=f"{server.url}?prefix={unique_name}", name=unique_name)
        app.export(Noted)
        app.consume(Noted)
        await app.start()
        assert (await app.publish(Noted("before"))).ok
        server.stop()
        assert (await app.publish(Noted("after"))).code == ErrorCode.UNAVAILABLE
        await app.aclose()
    finally:
        server.stop()
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []
