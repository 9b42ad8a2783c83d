"""No socket outlives the client that opened it (issue 15: a flaky ``ResourceWarning``).

Two ways a client used to leave a connected socket behind, for the garbage collector to find in some
later test (which ``filterwarnings = error`` then failed, at random):

* ``aclose()`` of catga's lean NATS connection while it was reconnecting: the handshake finished after
  the close and the new socket was kept by a closed connection that nobody would close again;
* ``aclose()`` of a Redis or NATS connection to a server that stopped reading: ``transport.close()``
  waits for the write buffer to drain, which never happens, so the socket stayed open.

Each test watches the socket itself (the peer sees it closed, or its descriptor is gone) and runs with
``ResourceWarning`` as an error after a ``gc.collect()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pytest

from catga.errors import BackendUnavailableError
from catga.nats import NatsConnection
from catga.nats._wire import LeanConnection
from catga.redis import RedisClient
from catga.testing.servers import NatsServer, RedisServer

BIG = b"PING\r\n" * (8 * 1024 * 1024)  # 48 MiB of valid commands: more than the socket buffers hold


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    """Fail when an unclosed socket or transport is collected during or right after the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


@contextlib.contextmanager
def stopped(pid: int | None) -> Iterator[None]:
    """SIGSTOP the server process for the block: it accepts nothing and reads nothing."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # the signal is asynchronous: wait until every thread is stopped, so nothing more is read
        deadline = time.monotonic() + 5
        while _state(pid) != "T":
            assert time.monotonic() < deadline, f"server {pid} did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _state(pid: int) -> str:
    """The process state letter from ``/proc/PID/stat`` (``T``: stopped)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _fileno(transport: Any) -> int:
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


@pytest.mark.usefixtures("no_resource_warnings")
async def test_aclose_while_the_lean_nats_connection_reconnects_closes_the_new_socket() -> None:
    accepted, release, peer_saw_close = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def fake_nats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await release.wait()
        writer.write(b'INFO {"headers":true,"max_payload":1048576}\r\n')
        await reader.readline()  # CONNECT (then SUB/PING in the same write)
        writer.write(b"PONG\r\n")
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        peer_saw_close.set()
        writer.close()

    server = await asyncio.start_server(fake_nats, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = SimpleNamespace(
        connected_url=None,
        servers=[urlparse(f"nats://127.0.0.1:{port}")],
        options={},
        ssl_context=None,
        _inbox_prefix=b"_INBOX",
        _signature_cb=None,
        _user_jwt_cb=None,
        _public_nkey=None,
    )
    wire = LeanConnection(client, connect_timeout=5.0)
    async with server:
        connecting = asyncio.ensure_future(wire.connect())
        await asyncio.wait_for(accepted.wait(), 5)
        await wire.aclose()  # while the handshake is under way
        release.set()
        with pytest.raises(BackendUnavailableError, match="aclose"):
            await connecting
        await asyncio.wait_for(peer_saw_close.wait(), 5)  # the socket was closed, not kept
        assert not wire.connected


@pytest.mark.redis
@pytest.mark.usefixtures("no_resource_warnings")
async def test_aclose_of_a_redis_client_whose_server_stopped_reading_closes_the_socket() -> None:
    with RedisServer() as server:
        client = RedisClient.from_url(server.url)
        await client.ping()
        conn = client._conn
        assert conn is not None and conn._transport is not None
        transport = conn._transport
        with stopped(server.pid):
            transport.write(BIG)  # the server reads nothing: most of it stays in our buffer
            await asyncio.sleep(0.05)
            assert transport.get_write_buffer_size() > 0
            await asyncio.wait_for(client.aclose(), 5)
            assert _fileno(transport) == -1, "the socket is still open after aclose()"


@pytest.mark.nats
@pytest.mark.usefixtures("no_resource_warnings")
async def test_aclose_of_a_nats_connection_whose_server_stopped_reading_closes_the_socket() -> None:
    with NatsServer() as server:
        conn = await NatsConnection.connect(server.url, timeout=1.0)
        await conn.wire.connect()
        proto = conn.wire._proto
        assert proto is not None and proto.transport is not None
        transport = proto.transport
        with stopped(server.pid):
            transport.write(BIG)
            await asyncio.sleep(0.05)
            assert transport.get_write_buffer_size() > 0
            await asyncio.wait_for(conn.wire.aclose(), 5)
            assert _fileno(transport) == -1, "the socket is still open after aclose()"
        await conn.aclose()
