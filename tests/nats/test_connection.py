"""NatsConnection, lazy initialisation, error translation and the lean connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
import pytest

from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
)
from catga.nats import LazyInit, NatsCache, NatsConnection, NatsEventStore
from catga.nats._errors import translate_errors
from catga.protocols import NO_STREAM
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.servers import NatsServer, free_port

pytestmark = pytest.mark.nats


# --- LazyInit (the origin's option A, single flight) ------------------------------------------------


async def test_lazy_init_runs_once_for_concurrent_callers() -> None:
    calls = 0

    async def init() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)

    lazy = LazyInit(init)
    await asyncio.gather(*(lazy() for _ in range(20)))
    assert (calls, lazy.ready) == (1, True)
    await lazy()
    assert calls == 1


async def test_a_failed_init_is_retried_by_the_next_call() -> None:
    attempts = 0

    async def init() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise BackendUnavailableError("down")

    lazy = LazyInit(init)
    with pytest.raises(BackendUnavailableError):
        await lazy()
    assert not lazy.ready
    await lazy()
    assert (attempts, lazy.ready) == (2, True)


async def test_a_cancelled_init_leaves_the_flag_unset() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    lazy = LazyInit(slow)
    task = asyncio.ensure_future(lazy())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lazy.ready
    lazy._initializer = lambda: asyncio.sleep(0)  # type: ignore[method-assign]
    await lazy()
    assert lazy.ready


async def test_callers_waiting_on_a_failed_init_share_its_error_instead_of_queueing() -> None:
    """Single flight: 16 callers, one attempt, one failure for all (not 16 attempts in a row)."""
    attempts = 0

    async def init() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.05)
        raise BackendTimeoutError(f"attempt {attempts} timed out")

    lazy = LazyInit(init)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(lazy() for _ in range(16)), return_exceptions=True)
    elapsed = loop.time() - started
    assert attempts == 1
    assert all(isinstance(r, BackendTimeoutError) and "attempt 1" in str(r) for r in results)
    assert elapsed < 0.05 * 8  # one attempt's time, not 16 in a row (generous)
    assert not lazy.ready
    lazy._initializer = lambda: asyncio.sleep(0)  # type: ignore[method-assign]
    await lazy()
    assert lazy.ready


async def test_callers_waiting_on_a_cancelled_init_run_it_themselves() -> None:
    started = asyncio.Event()
    calls = 0

    async def init() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await asyncio.sleep(10)

    lazy = LazyInit(init)
    first = asyncio.ensure_future(lazy())
    await started.wait()
    waiters = [asyncio.ensure_future(lazy()) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.gather(*waiters)  # not cancelled: one of them initialised
    assert (calls, lazy.ready) == (2, True)


async def test_a_cancelled_waiter_does_not_cancel_the_attempt() -> None:
    release = asyncio.Event()

    async def init() -> None:
        await release.wait()

    lazy = LazyInit(init)
    runner = asyncio.ensure_future(lazy())
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(lazy())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await runner
    assert lazy.ready


async def test_reset_runs_the_initializer_again() -> None:
    calls = 0

    async def init() -> None:
        nonlocal calls
        calls += 1

    lazy = LazyInit(init)
    await lazy()
    lazy.reset()
    await lazy()
    assert calls == 2


# --- error translation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (nats.errors.TimeoutError(), BackendTimeoutError),
        (TimeoutError(), BackendTimeoutError),
        (nats.errors.NoServersError(), BackendUnavailableError),
        (nats.errors.ConnectionClosedError(), BackendUnavailableError),
        (nats.errors.NoRespondersError(), BackendUnavailableError),
        (nats.js.errors.ServiceUnavailableError(), BackendUnavailableError),
        (ConnectionRefusedError(), BackendUnavailableError),
        (nats.errors.AuthorizationError(), ConfigurationError),
        (nats.js.errors.BadRequestError(code=400, err_code=10058, description="nope"), BackendError),
        (nats.errors.BadSubjectError(), BackendError),
    ],
)
def test_nats_errors_become_catga_errors(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, translate_errors("frobnicate 'x'", 1.5):
        raise raised
    assert info.value.__cause__ is raised
    assert "frobnicate 'x'" in str(info.value)
    if expected is BackendTimeoutError:
        assert "1.5 s" in str(info.value)
        assert info.value.details == {"operation": "frobnicate 'x'", "seconds": 1.5}  # type: ignore[attr-defined]


def test_cancellation_and_catga_errors_pass_through() -> None:
    with pytest.raises(asyncio.CancelledError), translate_errors("op"):
        raise asyncio.CancelledError
    original = ConfigurationError("mine")
    with pytest.raises(ConfigurationError) as info, translate_errors("op"):
        raise original
    assert info.value is original


# --- connecting -------------------------------------------------------------------------------------


async def test_connecting_to_nothing_is_unavailable_in_time() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError) as info:
        await NatsConnection.connect(url, connect_timeout=1.0, allow_reconnect=False)
    assert "127.0.0.1" in str(info.value)


async def test_a_refused_port_fails_at_once_with_the_reason() -> None:
    # nats-py retries the first connect like a reconnect (60 rounds, 2 s apart): catga tries each
    # server twice without waiting, then says why, instead of waiting out connect_timeout.
    ports = [free_port(), free_port()]
    for url in (f"nats://127.0.0.1:{ports[0]}", ",".join(f"nats://127.0.0.1:{p}" for p in ports)):
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailableError) as info:
            await NatsConnection.connect(url, connect_timeout=10.0)
        elapsed = asyncio.get_running_loop().time() - started
        assert "no server could be reached (ConnectionRefusedError" in str(info.value), info.value
        assert elapsed < 5.0, f"took {elapsed:.1f} s of the 10 s connect_timeout"


async def test_the_reconnect_policy_applies_after_the_first_connect(nats_url: str) -> None:
    from nats.aio.client import DEFAULT_MAX_RECONNECT_ATTEMPTS, DEFAULT_RECONNECT_TIME_WAIT

    async with await NatsConnection.connect(nats_url) as conn:
        assert conn.client.options["max_reconnect_attempts"] == DEFAULT_MAX_RECONNECT_ATTEMPTS
        assert conn.client.options["reconnect_time_wait"] == DEFAULT_RECONNECT_TIME_WAIT
    async with await NatsConnection.connect(
        nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    ) as conn:
        assert conn.client.options["max_reconnect_attempts"] == -1
        assert conn.client.options["reconnect_time_wait"] == 0.5


async def test_a_failed_connect_never_shows_the_password() -> None:
    url = f"nats://alice:s3cret-pw@127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError) as info:
        await NatsConnection.connect(url, connect_timeout=1.0, allow_reconnect=False)
    assert "s3cret-pw" not in str(info.value)
    assert "alice:***@127.0.0.1" in str(info.value)


async def test_a_lazy_connection_refuses_calls_until_open_and_opens_again(
    nats_url: str, unique_name: str
) -> None:
    conn = NatsConnection.lazy(nats_url, name="lazy")
    store = NatsEventStore(conn, stream=unique_name, prefix=unique_name, storage="memory")
    assert not conn.opened and conn.address == nats_url.split("//")[1]  # nothing connected
    with pytest.raises(ConfigurationError, match=r"NATS connection to nats://.* is not open: App\.start"):
        await store.version("s-1")  # no connect on demand
    with pytest.raises(BackendUnavailableError, match="not open"):
        await conn.ping()
    try:
        for round_ in range(2):  # opened, closed, opened again: the same client and store
            await conn.open()
            await conn.open()  # a no-op while open
            assert conn.opened
            await conn.ping()
            await store.append("s-1", [ContractOrderPlaced(f"o-{round_}", round_)])
            assert await store.version("s-1") == round_
            await conn.aclose()
            assert not conn.opened
            with pytest.raises(ConfigurationError, match="is not open"):  # the lean socket refuses too
                await store.version("s-1")
    finally:
        await conn.open()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await conn.js.delete_stream(unique_name)
        await conn.aclose()


async def test_a_store_built_on_a_plain_nats_py_client_shares_one_connection(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        cache_a = NatsCache(nc, storage="memory", bucket="catga_test_shared")
        cache_b = NatsCache(nc, storage="memory", bucket="catga_test_shared")
        assert cache_a.connection is cache_b.connection
        await cache_a.set("k", b"v")
        assert await cache_b.get("k") == b"v"
        await cache_a.aclose()
        assert cache_b.connection.wire.connected  # still used by cache_b
        await cache_b.aclose()
        assert not cache_b.connection.wire.connected  # last user out closes the lean socket
        assert nc.is_connected  # the user's client is never closed by catga
        await cache_b.connection.js.delete_stream("KV_catga_test_shared")
    finally:
        await nc.close()


async def test_request_timeout_names_the_operation_and_seconds(nats_connection: NatsConnection) -> None:
    silent = await nats_connection.client.subscribe("catga.test.silent")  # never replies
    await nats_connection.client.flush()
    try:
        with pytest.raises(BackendTimeoutError) as info:
            await nats_connection.wire.request(b"catga.test.silent", b"x", timeout=0.2)
        assert "0.2 s" in str(info.value) and "catga.test.silent" in str(info.value)
    finally:
        await silent.unsubscribe()


async def test_no_responders_is_unavailable(nats_connection: NatsConnection, unique_name: str) -> None:
    async with NatsEventStore(
        nats_connection, stream=unique_name.upper(), prefix=unique_name, registry=contract_registry()
    ) as store:
        await store.append("a", [ContractOrderPlaced("o", 0)])
        await nats_connection.js.delete_stream(unique_name.upper())  # deleted behind the store's back
        with pytest.raises(BackendUnavailableError, match="no responders"):
            await store.append("a", [ContractOrderPlaced("o", 1)], NO_STREAM)
        # the next call creates the stream again
        assert await store.append("a", [ContractOrderPlaced("o", 1)], NO_STREAM) == 0
        await nats_connection.js.delete_stream(unique_name.upper())


# --- authentication -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server() -> AsyncIterator[NatsServer] | object:
    with NatsServer(extra_args=["--auth", "s3cret-token"]) as server:
        yield server


@pytest.fixture(scope="module")
def user_server() -> AsyncIterator[NatsServer] | object:
    with NatsServer(extra_args=["--user", "alice", "--pass", "wonder land"]) as server:
        yield server


async def _roundtrip(store: NatsEventStore) -> None:
    assert await store.append("auth", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
    assert [e.version for e in await store.read("auth")] == [0]


async def test_token_in_the_url(token_server: NatsServer) -> None:
    url = token_server.url.replace("nats://", "nats://s3cret-token@")
    async with await NatsEventStore.connect(url, registry=contract_registry()) as store:
        await _roundtrip(store)


async def test_token_as_an_option(token_server: NatsServer) -> None:
    async with await NatsEventStore.connect(
        token_server.url,
        connect_options={"token": "s3cret-token"},
        registry=contract_registry(),
        stream="T2",
        prefix="t2",
    ) as store:
        await _roundtrip(store)


async def test_user_and_password(user_server: NatsServer) -> None:
    async with await NatsEventStore.connect(
        user_server.url,
        connect_options={"user": "alice", "password": "wonder land"},
        registry=contract_registry(),
    ) as store:
        await _roundtrip(store)


async def test_wrong_credentials_are_a_configuration_error(token_server: NatsServer) -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        await NatsConnection.connect(
            token_server.url, token="wrong", allow_reconnect=False, connect_timeout=2.0
        )
    # with reconnects allowed (the default) too, and at once rather than after connect_timeout
    with pytest.raises(ConfigurationError, match="credentials"):
        await NatsConnection.connect(token_server.url, token="wrong", connect_timeout=30.0)


# --- server restart -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_appends_survive_a_server_restart(tmp_path: object) -> None:
    port = free_port()
    store_dir = f"{tmp_path}/js"
    server = NatsServer(port=port, store_dir=store_dir).start()
    try:
        store = await NatsEventStore.connect(
            server.url, registry=contract_registry(), connect_options={"reconnect_time_wait": 0.1}
        )
        async with store:
            assert await store.append("r", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
            server.stop()
            with pytest.raises((BackendUnavailableError, BackendTimeoutError)):
                await store.append("r", [ContractOrderPlaced("o", 1)], 0)
            server = NatsServer(port=port, store_dir=store_dir).start()
            for _ in range(100):  # the lean connection reconnects on use; the cache is still right
                with contextlib.suppress(BackendUnavailableError, BackendTimeoutError):
                    assert await store.append("r", [ContractOrderPlaced("o", 1)], 0) == 1
                    break
                await asyncio.sleep(0.05)
            assert [e.version for e in await store.read("r")] == [0, 1]
    finally:
        server.stop()
