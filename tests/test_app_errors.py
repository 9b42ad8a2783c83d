"""What an app's caller and its log see when the broker refuses a message or goes away (issue 9)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from catga import App, Event
from catga._payload import DEFAULT_MAX_PAYLOAD
from catga.backends import parse_url
from catga.errors import BackendUnavailableError, ConfigurationError, ErrorCode, PayloadTooLargeError
from catga.mediator import HandlerFailure
from catga.messages import message_name
from catga.result import Result
from catga.testing.contracts._util import WAIT
from catga.testing.servers import NatsServer, RedisServer, free_port


@message_name("apperr.Noted")
class Noted(msgspec.Struct, Event, frozen=True):
    text: str


Server = NatsServer | RedisServer


@pytest.fixture(
    params=[pytest.param("nats", marks=pytest.mark.nats), pytest.param("redis", marks=pytest.mark.redis)]
)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server of its own on a fixed port (the test stops and restarts it), JetStream data on disk."""
    made: Server = (
        NatsServer(port=free_port(), monitor_port=free_port(), store_dir=tmp_path)
        if request.param == "nats"
        else RedisServer(port=free_port())
    )
    with made:
        yield made


def _url(server: Server, prefix: str) -> str:
    return f"{server.url}?prefix={prefix}"


def _failure(result: Result[None]) -> HandlerFailure:
    assert not result.ok
    assert result.metadata is not None
    (failure,) = result.metadata["failures"]
    assert isinstance(failure, HandlerFailure)
    return failure


async def test_a_2_mb_event_fails_with_too_large_and_a_lower_limit_applies(
    server: Server, unique_name: str
) -> None:
    app = App(transport=_url(server, unique_name), name=unique_name)
    app.export(Noted)
    small = App(transport=_url(server, unique_name), name=f"{unique_name}s", max_payload=1000)
    small.export(Noted)
    async with app, small:
        assert (await app.publish(Noted("fits"))).ok
        result = await app.publish(Noted("x" * 2_000_000))
        assert result.code == ErrorCode.TOO_LARGE, result
        error = _failure(result).exception
        assert isinstance(error, PayloadTooLargeError)
        assert (error.limit, error.size > 2_000_000) == (DEFAULT_MAX_PAYLOAD, True)
        assert "exceeds" in (result.error or "") and "internal error" not in (result.error or "")

        assert (await small.publish(Noted("x" * 900))).ok
        refused = await small.publish(Noted("x" * 1000))
        assert refused.code == ErrorCode.TOO_LARGE
        assert isinstance(error := _failure(refused).exception, PayloadTooLargeError) and error.limit == 1000

    by_url = App(transport=f"{_url(server, unique_name)}&max_payload=500", name=f"{unique_name}u")
    by_url.export(Noted)
    async with by_url:
        refused = await by_url.publish(Noted("x" * 500))
        assert isinstance(error := _failure(refused).exception, PayloadTooLargeError) and error.limit == 500


def test_max_payload_in_a_url() -> None:
    assert parse_url("nats://h:4222?max_payload=2048&prefix=p").max_payload == 2048
    spec = parse_url("redis://h:6379/0?max_payload=10&db=1")
    assert (spec.max_payload, spec.address) == (10, "redis://h:6379/0?db=1")
    assert parse_url("redis://h:6379/0").max_payload is None
    for bad in ("0", "-5", "1k", ""):
        with pytest.raises(ConfigurationError, match="max_payload must be a positive number of bytes"):
            parse_url(f"nats://h:4222?max_payload={bad}")
    with pytest.raises(ConfigurationError, match="max_payload"):
        App(max_payload=0)


async def test_a_down_broker_gives_unavailable_and_one_log_line_per_outage(
    server: Server, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(transport=_url(server, unique_name), name=unique_name, connect_timeout=2.0)
    app.export(Noted)
    async with app:
        assert (await app.publish(Noted("before"))).ok
        server.stop()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="catga"):
            for i in range(200):
                result = await app.publish(Noted(f"down {i}"))
                assert result.code == ErrorCode.UNAVAILABLE, result
                assert isinstance(_failure(result).exception, BackendUnavailableError)
            mediator_lines = [r for r in caplog.records if r.name == "catga.mediator"]
            assert len(mediator_lines) == 1, [r.getMessage() for r in mediator_lines]
            assert mediator_lines[0].exc_info is None  # catga's own error: no traceback
            assert "unavailable" in mediator_lines[0].getMessage().lower()
            assert len(caplog.records) < 20, [r.getMessage() for r in caplog.records]

            server.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while not (await app.publish(Noted("back"))).ok:
                assert loop.time() < deadline, "the app did not publish again after the server came back"
                await asyncio.sleep(0.1)
            recovered = [
                r
                for r in caplog.records
                if r.name == "catga.mediator" and "recovered after" in r.getMessage()
            ]
            assert len(recovered) == 1, [r.getMessage() for r in caplog.records]
            failures = int(recovered[0].getMessage().split("recovered after ")[1].split()[0])
            assert failures >= 200  # and any that failed while the server was starting again
