"""A Redis that loses its data under running consumers: nothing published after the loss is skipped,
and the loss shows in the log and in ``App.health()`` (issue 9, finding 3)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import catga
from catga.messages import Event, message_name
from catga.redis import RedisClient
from catga.redis.transport import RedisTransport
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.contracts._util import eventually
from catga.testing.servers import RedisServer
from chaos import Chaos

pytestmark = pytest.mark.redis


@message_name("test_redis_data_loss.Ping")
@dataclass(frozen=True)
class Ping(Event):
    n: int


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of the test's own (no persistence), so that it can be restarted empty."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.chaos
@pytest.mark.parametrize("group", ["svc", None], ids=["named-group", "private-group"])
async def test_an_event_published_right_after_an_empty_restart_is_delivered(
    server: RedisServer,
    unique_name: str,
    group: str | None,
    caplog: pytest.LogCaptureFixture,
    chaos: Chaos,
) -> None:
    app = catga.App(transport=f"{server.url}?prefix={unique_name}", name="svc")
    got: list[int] = []

    @app.handler
    async def on_ping(event: Ping) -> None:
        got.append(event.n)

    app.consume(Ping, group=group)
    publisher = RedisTransport.connect(server.url, prefix=unique_name)
    try:
        async with app:
            await publisher.publish(Ping(1))
            await eventually(lambda: _is(got, [1]), what="the first event")
            before = await app.health()
            assert before.ok and not before.degraded, before

            server.stop()
            # The outage lasts a moment (the consumer backs off while the server is down), then an
            # empty server is back and an event is published at once, before the consumer noticed.
            await asyncio.sleep(1.0)
            server = RedisServer(port=server.port).start()
            restarted = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="catga.redis.transport"):
                await publisher.publish(Ping(2))
                await eventually(lambda: _is(got, [1, 2]), what="the event published after the restart")
                recovery = time.monotonic() - restarted
                await publisher.publish(Ping(3))
                await eventually(lambda: _is(got, [1, 2, 3]), what="a later event")

            chaos.record(
                f"Redis restarted empty under a consumer ({group or 'private'} group), publish at once",
                messages=3,
                kills=1,
                lost=3 - len(set(got)),
                twice=len(got) - len(set(got)),
                recovery_s=recovery,
            )
            report = await app.health()
            [consumers] = [c for c in report.checks if c.name == "consumers"]
            assert report.ok and report.degraded and consumers.ok and consumers.degraded, report
            # (the command stream's group vanished too; its reader may not have noticed yet)
            assert "recovered from broker data loss" in consumers.detail
            assert "vanished and was re-created" in consumers.detail
            key = f"{unique_name}:t:evt:test_redis_data_loss.Ping"
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(
                f"on {key} vanished" in w and "re-creating it from the start of the stream" in w
                for w in warnings
            ), warnings
    finally:
        await publisher.aclose()
        server.stop()


async def test_a_deleted_group_is_recreated_after_what_was_read_without_replaying_history(
    redis_url: str, unique_name: str
) -> None:
    """The stream survived, only the group is gone: the group restarts after the last entry read."""
    registry = contract_registry()
    got: list[str] = []

    async def handler(event: ContractOrderPlaced, _meta: object) -> None:
        got.append(event.order_id)

    async with (
        RedisTransport.connect(redis_url, prefix=unique_name, registry=registry) as transport,
        RedisClient.from_url(redis_url, prefix=unique_name) as client,
    ):
        sub = await transport.subscribe(ContractOrderPlaced, handler, group="g")
        for i in range(3):
            await transport.publish(ContractOrderPlaced(f"o{i}", i))
        await eventually(lambda: _is(got, ["o0", "o1", "o2"]), what="three events")
        key = transport.evt_key("contracts.OrderPlaced")
        await client.execute("XGROUP", "DESTROY", key, "g")
        await transport.publish(ContractOrderPlaced("o3", 3))
        await eventually(lambda: _is(got, ["o0", "o1", "o2", "o3"]), what="the event after the loss")
        await asyncio.sleep(0.1)  # nothing more arrives: the history was not replayed
        assert got == ["o0", "o1", "o2", "o3"]
        assert sub.recoveries == 1 and sub.last_recovery is not None
        assert "consumer group g" in sub.last_recovery[1]


async def _is(got: list[object], want: list[object]) -> bool:
    return sorted(got, key=str) == sorted(want, key=str)


async def test_an_entry_waiting_for_its_retry_when_the_group_vanished_is_still_handled(
    redis_url: str, unique_name: str
) -> None:
    """The group restarts at the oldest entry the reader holds, so a failed entry waiting for its
    retry is delivered again instead of being dropped as "no longer pending"."""
    registry = contract_registry()
    calls: list[str] = []

    async def handler(event: ContractOrderPlaced, _meta: object) -> None:
        calls.append(event.order_id)
        if calls.count(event.order_id) == 1 and event.order_id == "o1":
            raise RuntimeError("first delivery of o1 fails")

    options = {"registry": registry, "retry_backoff": 0.5, "retry_backoff_max": 0.5, "block": 0.2}
    async with (
        RedisTransport.connect(redis_url, prefix=unique_name, **options) as transport,
        RedisClient.from_url(redis_url, prefix=unique_name) as client,
    ):
        await transport.subscribe(ContractOrderPlaced, handler, group="g")
        await transport.publish(ContractOrderPlaced("o0", 0))
        await transport.publish(ContractOrderPlaced("o1", 1))
        await eventually(lambda: _is(calls, ["o0", "o1"]), what="o0, and o1's failed delivery")
        await client.execute("XGROUP", "DESTROY", transport.evt_key("contracts.OrderPlaced"), "g")
        await transport.publish(ContractOrderPlaced("o2", 2))

        async def o1_again_and_o2() -> bool:
            return calls.count("o1") >= 2 and "o2" in calls

        await eventually(o1_again_and_o2, what="o1 handled after the loss, and o2")
        assert calls.count("o0") == 1  # handled and acked before the loss: not replayed


def test_the_id_before_an_entry() -> None:
    from catga.redis._reader import _before

    assert _before(b"1700000000000-3") == "1700000000000-2"
    assert _before(b"1700000000000-0") == "1699999999999-18446744073709551615"
    assert _before(b"0-0") == "0"


async def test_an_rpc_request_sent_right_after_an_empty_restart_is_answered(
    server: RedisServer, unique_name: str
) -> None:
    """The RPC server's group vanishes with the data; the request sent at once must still be served
    (re-creating the group at ``$`` lost it: the caller timed out)."""
    served = RedisTransport.connect(server.url, prefix=unique_name)
    caller = RedisTransport.connect(server.url, prefix=unique_name)

    async def echo(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return b"re:" + body, {}

    try:
        await served.serve("echo", echo)
        body, _ = await caller.request("echo", b"1", timeout=5.0)
        assert body == b"re:1"
        server.stop()
        await asyncio.sleep(1.0)  # the server's reader backs off while Redis is down
        server = RedisServer(port=server.port).start()
        body, _ = await caller.request("echo", b"2", timeout=8.0)
        assert body == b"re:2"
    finally:
        await caller.aclose()
        await served.aclose()
