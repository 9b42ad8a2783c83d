"""Pub/sub (AT_MOST_ONCE without a group) on catga's own RESP connection: restarts, TLS, AUTH, ACLs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catga.errors import BackendError, BackendUnavailableError, ConfigurationError
from catga.messages import Metadata, QoS
from catga.redis import RedisClient, RedisSettings
from catga.redis._pubsub import PubSubHub
from catga.redis.transport import RedisTransport
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.contracts._util import eventually, unique
from catga.testing.servers import RedisServer

pytestmark = pytest.mark.redis


def recorder(into: list[Any]) -> Callable[[Any, Metadata], Awaitable[None]]:
    async def handle(message: Any, meta: Metadata) -> None:
        into.append(message)

    return handle


def hub_of(transport: RedisTransport) -> PubSubHub:
    hub = transport._pubsub
    assert hub is not None, "the transport opened no pub/sub connection"
    return hub


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of the test's own, so that it can be stopped and restarted."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def transports() -> AsyncIterator[list[RedisTransport]]:
    made: list[RedisTransport] = []
    yield made
    for t in made:
        await t.aclose()


def connect(made: list[RedisTransport], url: str, prefix: str, **options: Any) -> RedisTransport:
    t = RedisTransport.connect(url, prefix=prefix, registry=contract_registry(), **options)
    made.append(t)
    return t


async def delivered_after_publishing(t: RedisTransport, dest: str, got: list[Any]) -> bool:
    """Publish once more (pub/sub drops what nobody hears) and say whether anything arrived."""
    with contextlib.suppress(BackendError):  # the publisher's first call after a loss may fail
        await t.publish(ContractOrderPlaced("again", 1), destination=dest)
    return bool(got)


async def test_a_subscriber_resubscribes_after_a_server_restart_and_logs_the_outage_once(
    server: RedisServer,
    unique_name: str,
    transports: list[RedisTransport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = connect(transports, server.url, unique_name)
    dest, other = unique("ev"), unique("ev")
    got: list[Any] = []
    got_other: list[Any] = []
    await t.subscribe(ContractOrderPlaced, recorder(got), qos=QoS.AT_MOST_ONCE, destination=dest)
    await t.subscribe(ContractOrderPlaced, recorder(got_other), qos=QoS.AT_MOST_ONCE, destination=other)
    assert hub_of(t).connections == 1
    with caplog.at_level(logging.WARNING, logger="catga.redis.transport"):
        port = server.port
        server.stop()
        await eventually(lambda: _lost(hub_of(t)), what="the pub/sub connection noticed the loss")
        # The outage lasts several reconnection attempts (backoff 50 ms doubling), then a new, empty
        # server is back on the same port: nothing remembers our channels but the client.
        await _sleep_through_attempts(hub_of(t), 4)
        server = RedisServer(port=port).start()
        try:
            await eventually(lambda: delivered_after_publishing(t, dest, got), what="delivery after restart")
            await eventually(lambda: delivered_after_publishing(t, other, got_other), what="2nd channel")
            async with RedisClient.from_url(server.url) as plain:
                numsub = await plain.execute("PUBSUB", "NUMSUB", *(hub_of(t)._subs))
            assert numsub[1::2] == [1, 1]  # both channels subscribed again, once each
        finally:
            server.stop()
    lines = [r.getMessage() for r in caplog.records if "pub/sub connection" in r.getMessage()]
    started = [m for m in lines if " failed" in m and "recovered" not in m]
    recovered = [m for m in lines if "recovered" in m]
    assert len(started) == 1, lines  # one line per outage, not one per reconnection attempt
    assert len(recovered) == 1, lines
    assert hub_of(t).connections == 2


async def _lost(hub: PubSubHub) -> bool:
    return hub._conn is None


async def _sleep_through_attempts(hub: PubSubHub, attempts: int) -> None:
    failures = hub._outage.failures

    async def more() -> bool:
        return hub._outage.failures >= failures + attempts

    await eventually(more, what=f"{attempts} failed reconnection attempts")


async def test_pub_sub_over_tls_with_an_acl_user_and_a_database(
    tls_server: tuple[int, Path, RedisServer], unique_name: str
) -> None:
    port, ca, server = tls_server
    user, password = f"u{unique_name}", "s3cret"
    async with RedisClient.from_url(server.url) as admin:
        await admin.execute("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
        try:
            url = f"rediss://{user}:{password}@127.0.0.1:{port}/3?ssl_ca_certs={ca}&client_name={unique_name}"
            t = RedisTransport.connect(url, prefix=unique_name, registry=contract_registry())
            try:
                dest = unique("ev")
                got: list[Any] = []
                await t.subscribe(ContractOrderPlaced, recorder(got), qos=QoS.AT_MOST_ONCE, destination=dest)
                listing = await admin.execute("CLIENT", "LIST", "TYPE", "pubsub")
                [entry] = [c for c in listing.split(b"\n") if c]
                fields = dict(f.split(b"=", 1) for f in entry.split(b" ") if b"=" in f)
                assert fields[b"user"] == user.encode()
                assert fields[b"db"] == b"3"
                assert fields[b"name"] == unique_name.encode()
                assert fields[b"laddr"] == f"127.0.0.1:{port}".encode()  # the TLS port
                await t.publish(ContractOrderPlaced("o", 1), destination=dest)
                await eventually(lambda: _truthy(got), what="a pub/sub message over TLS")
                assert got == [ContractOrderPlaced("o", 1)]
            finally:
                await t.aclose()  # before the user is deleted (which drops its connections)
        finally:
            await admin.execute("ACL", "DELUSER", user)


async def test_a_refused_channel_raises_configuration_error(redis_url: str, unique_name: str) -> None:
    user, password = f"u{unique_name}", "s3cret"
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    async with RedisClient.from_url(redis_url) as admin:
        # Keys and commands allowed; channels only under a prefix that is not ours.
        await admin.execute(
            "ACL", "SETUSER", user, "on", f">{password}", "~*", "resetchannels", "&elsewhere:*"
        )
        await admin.execute("ACL", "SETUSER", user, "+@all")
        try:
            t = RedisTransport.connect(f"redis://{user}:{password}@{host_port}/0", prefix=unique_name)
            try:
                with pytest.raises(ConfigurationError) as info:
                    await t.subscribe(
                        ContractOrderPlaced, recorder([]), qos=QoS.AT_MOST_ONCE, destination="ev"
                    )
                assert "NOPERM" in str(info.value)
            finally:
                await t.aclose()
        finally:
            await admin.execute("ACL", "DELUSER", user)


async def test_an_unreachable_server_fails_the_first_subscription() -> None:
    from catga.testing.servers import free_port

    t = RedisTransport.connect(f"redis://127.0.0.1:{free_port()}/0", registry=contract_registry())
    try:
        with pytest.raises(BackendUnavailableError):
            await t.subscribe(ContractOrderPlaced, recorder([]), qos=QoS.AT_MOST_ONCE, destination="ev")
    finally:
        await t.aclose()


class FakeSubscription:
    """What the hub needs of a subscription: a channel slot and a frame callback."""

    def __init__(self) -> None:
        self._channel: str | None = None
        self.frames: list[bytes] = []

    def _on_frame(self, data: bytes) -> None:
        self.frames.append(data)


async def test_a_silent_server_is_detected_by_the_health_check(server: RedisServer, unique_name: str) -> None:
    """A peer that stops answering without closing the socket (frozen, or a dropped route): the hub's
    PING goes unanswered, the connection is dropped and a new one subscribes again."""
    settings = RedisSettings.from_url(server.url, connect_timeout=0.5)
    hub = PubSubHub(settings, 0.5, health_interval=0.1)
    sub = FakeSubscription()
    channel = f"{unique_name}:ch"
    try:
        await hub.add(channel, sub)  # type: ignore[arg-type]
        first = hub._conn
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: _replaced(hub, first), what="the silent connection dropped")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        async with RedisClient.from_url(server.url) as plain:

            async def heard() -> bool:
                await plain.execute("PUBLISH", channel, b"after")
                return bool(sub.frames)

            await eventually(heard, what="delivery after the freeze")
        assert sub.frames[0] == b"after"
        assert hub.connections >= 2
    finally:
        await hub.aclose()


async def _replaced(hub: PubSubHub, first: object) -> bool:
    return hub._conn is not first


async def _truthy(items: list[Any]) -> bool:
    return bool(items)


def test_the_redis_backend_does_not_import_redis_py() -> None:
    """One client stack per server: catga[redis] needs hiredis only (redis-py is a bench extra)."""
    import subprocess
    import sys

    code = (
        "import sys, catga.redis, catga.redis.transport, catga.redis._pubsub, catga.redis._errors\n"
        "import catga.cli.doctor\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.'))\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
