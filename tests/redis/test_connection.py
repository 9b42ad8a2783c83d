"""RedisClient: URLs, auth, TLS, pipelining, timeouts, connection loss, scripts and the key prefix."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidIdentifierError,
)
from catga.redis import RedisClient, RedisSettings, Script
from catga.redis._errors import redis_errors, translate_error
from catga.redis._resp import ReplyError
from catga.testing.servers import RedisServer, free_port

pytestmark = pytest.mark.redis


# -- URL parsing ----------------------------------------------------------------------------------


def test_url_with_user_password_and_db() -> None:
    s = RedisSettings.from_url("redis://al%40ice:p%3Ass%2Fw@127.0.0.1:7001/3?client_name=app")
    assert (s.host, s.port, s.db) == ("127.0.0.1", 7001, 3)
    assert (s.username, s.password, s.client_name) == ("al@ice", "p:ss/w", "app")
    assert s.ssl_context is None and s.unix_path is None
    assert "p:ss" not in repr(s) and "p%3Ass" not in repr(s)


def test_url_with_password_only_and_defaults() -> None:
    s = RedisSettings.from_url("redis://:secret@localhost")
    assert (s.host, s.port, s.db, s.username, s.password) == ("localhost", 6379, 0, None, "secret")
    assert s.timeout == 5.0


def test_rediss_verifies_certificates_by_default() -> None:
    s = RedisSettings.from_url("rediss://127.0.0.1:6380/0")
    assert s.ssl_context is not None
    assert s.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert s.ssl_context.check_hostname


def test_rediss_cert_reqs_none() -> None:
    s = RedisSettings.from_url("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none")
    assert s.ssl_context is not None and s.ssl_context.verify_mode == ssl.CERT_NONE
    assert not s.ssl_context.check_hostname


def test_unix_socket_url() -> None:
    s = RedisSettings.from_url("unix:///run/redis.sock?db=2&password=pw")
    assert (s.unix_path, s.db, s.password) == ("/run/redis.sock", 2, "pw")
    assert s.address == "/run/redis.sock"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1:notaport/0",
        "rediss://127.0.0.1/0?ssl_cert_reqs=maybe",
    ],
)
def test_bad_urls_raise_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisSettings.from_url(url)


def test_bad_url_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisSettings.from_url("redis://u:topsecret@127.0.0.1:6379/x")
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "a:b", "a b", "{a}", "é", "x" * 65, None])
def test_bad_prefixes_are_rejected(prefix: object) -> None:
    with pytest.raises(InvalidIdentifierError):
        RedisClient.from_url("redis://127.0.0.1:1/0", prefix=prefix)  # type: ignore[arg-type]


# -- commands and pipelining ----------------------------------------------------------------------


async def test_execute_round_trips_bytes(redis_client: RedisClient) -> None:
    key = f"{redis_client.prefix}:k"
    value = bytes(range(256)) * 3
    assert await redis_client.execute("SET", key, value) == b"OK"
    assert await redis_client.execute("GET", key) == value
    assert await redis_client.execute("GET", f"{redis_client.prefix}:missing") is None


async def test_concurrent_commands_get_their_own_replies(redis_client: RedisClient) -> None:
    p = redis_client.prefix
    await redis_client.execute_many([("SET", f"{p}:{i}", f"v{i}") for i in range(300)])
    replies = await asyncio.gather(*(redis_client.execute("GET", f"{p}:{i}") for i in range(300)))
    assert replies == [f"v{i}".encode() for i in range(300)]
    incrs = await asyncio.gather(*(redis_client.execute("INCR", f"{p}:n") for _ in range(200)))
    assert sorted(incrs) == list(range(1, 201))


async def test_execute_many_raises_the_first_error_after_all_replies(redis_client: RedisClient) -> None:
    p = redis_client.prefix
    await redis_client.execute("LPUSH", f"{p}:list", "x")
    with pytest.raises(BackendError) as info:
        await redis_client.execute_many(
            [("SET", f"{p}:a", "1"), ("INCR", f"{p}:list"), ("SET", f"{p}:b", "2")]
        )
    assert "INCR" in str(info.value) and "WRONGTYPE" in str(info.value)
    assert await redis_client.execute("GET", f"{p}:b") == b"2"


async def test_error_reply_names_the_command_and_keeps_the_connection(redis_client: RedisClient) -> None:
    with pytest.raises(BackendError) as info:
        await redis_client.execute("NOSUCHCOMMAND", "x")
    assert not isinstance(info.value, BackendUnavailableError | BackendTimeoutError)
    assert "NOSUCHCOMMAND" in str(info.value)
    assert await redis_client.execute("PING") == b"PONG"


async def test_a_cancelled_call_does_not_shift_the_replies(redis_client: RedisClient) -> None:
    p = redis_client.prefix
    await redis_client.execute_many([("SET", f"{p}:a", "A"), ("SET", f"{p}:b", "B")])
    first = asyncio.ensure_future(redis_client.execute("GET", f"{p}:a"))
    second = asyncio.ensure_future(redis_client.execute("GET", f"{p}:b"))
    await asyncio.sleep(0)  # both written
    first.cancel()
    assert await second == b"B"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await redis_client.execute("GET", f"{p}:a") == b"A"


async def test_script_survives_a_script_cache_flush(redis_client: RedisClient) -> None:
    script = Script("return {KEYS[1], ARGV[1]}", "echo")
    key = f"{redis_client.prefix}:s"
    assert await redis_client.run_script(script, (key,), ("x",)) == [key.encode(), b"x"]
    await redis_client.execute("SCRIPT", "FLUSH")
    assert await redis_client.run_script(script, (key,), ("y",)) == [key.encode(), b"y"]


async def test_script_errors_name_the_script(redis_client: RedisClient) -> None:
    with pytest.raises(BackendError) as info:
        await redis_client.run_script(Script("return redis.call('NOPE')", "broken"), ())
    assert "broken" in str(info.value)


# -- failures -------------------------------------------------------------------------------------


async def test_closed_port_raises_backend_unavailable() -> None:
    port = free_port()
    async with RedisClient.from_url(f"redis://127.0.0.1:{port}/0", connect_timeout=2.0) as client:
        with pytest.raises(BackendUnavailableError) as info:
            await client.execute("PING")
        assert isinstance(info.value, ConnectionError)
        assert f"127.0.0.1:{port}" in str(info.value)
        with pytest.raises(BackendUnavailableError):  # and again: each call retries the connect
            await client.execute("PING")


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url.split(",")[0])
    return f"{parts.hostname}:{parts.port}"


@pytest.mark.nats
async def test_a_redis_url_on_a_nats_port_says_it_is_not_redis(nats_url: str) -> None:
    # NATS greets with "INFO {...}": not RESP. Before: "malformed reply ... may or may not have run".
    async with RedisClient.from_url(f"redis://{_host_port(nats_url)}/0", connect_timeout=2.0) as client:
        with pytest.raises(ConfigurationError) as info:
            await client.execute("PING")
    text = str(info.value)
    assert "does not look like a Redis server (got 'INFO {" in text, text
    assert "may or may not have run" not in text


async def test_rediss_on_a_plain_server_says_the_tls_handshake_failed(redis_url: str) -> None:
    # A plain redis-server never answers the TLS handshake (before: "timed out").
    url = f"rediss://{_host_port(redis_url)}/0?ssl_cert_reqs=none"
    async with RedisClient.from_url(url, connect_timeout=1.0) as client:
        with pytest.raises(ConfigurationError) as info:
            await client.execute("PING")
    text = str(info.value)
    assert "TLS handshake with Redis" in text and "speaks plain Redis, not TLS" in text, text
    assert "got '+PONG'" in text and "use redis://" in text


@pytest.mark.nats
async def test_rediss_on_a_plain_text_server_says_the_tls_handshake_failed(nats_url: str) -> None:
    url = f"rediss://{_host_port(nats_url)}/0?ssl_cert_reqs=none"
    async with RedisClient.from_url(url, connect_timeout=2.0) as client:
        with pytest.raises(ConfigurationError) as info:
            await client.execute("PING")
    text = str(info.value)
    assert "TLS handshake with Redis" in text and "speaks plain text, not TLS" in text, text
    assert "got 'INFO {" in text


async def test_timeout_names_the_command_and_seconds_then_reconnects(redis_client: RedisClient) -> None:
    key = f"{redis_client.prefix}:empty"
    with pytest.raises(BackendTimeoutError) as info:
        await redis_client.execute("BLPOP", key, 2, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert "BLPOP" in str(info.value) and "0.2 s" in str(info.value)
    assert await redis_client.execute("PING") == b"PONG"  # a new connection


async def test_a_timed_out_call_behind_a_slow_one_keeps_the_connection(redis_client: RedisClient) -> None:
    conn_id = await redis_client.execute("CLIENT", "ID")
    slow = asyncio.ensure_future(redis_client.execute("BLPOP", f"{redis_client.prefix}:q", 1, timeout=5.0))
    await asyncio.sleep(0)
    with pytest.raises(BackendTimeoutError) as info:
        await redis_client.execute("PING", timeout=0.2)
    assert "PING" in str(info.value)
    assert await slow is None  # BLPOP's own answer, after 1 s: the slots stayed matched
    assert await redis_client.execute("ECHO", "x") == b"x"
    assert await redis_client.execute("CLIENT", "ID") == conn_id  # same connection


async def test_connection_loss_fails_pending_calls_then_reconnects(redis_url: str, unique_name: str) -> None:
    async with (
        RedisClient.from_url(redis_url, prefix=unique_name) as victim,
        RedisClient.from_url(redis_url, prefix=unique_name) as admin,
    ):
        victim_id = await victim.execute("CLIENT", "ID")
        pending = asyncio.ensure_future(victim.execute("BLPOP", f"{unique_name}:q", 10))
        await asyncio.sleep(0.1)
        assert await admin.execute("CLIENT", "KILL", "ID", victim_id) == 1
        with pytest.raises(BackendUnavailableError) as info:
            await pending
        assert "BLPOP" in str(info.value)
        assert await victim.execute("PING") == b"PONG"
        assert await victim.execute("CLIENT", "ID") != victim_id


async def test_closed_client_refuses_calls(redis_url: str) -> None:
    client = RedisClient.from_url(redis_url)
    await client.execute("PING")
    await client.aclose()
    await client.aclose()  # idempotent
    assert client.closed
    with pytest.raises(BackendUnavailableError):
        await client.execute("PING")


async def test_a_client_made_not_opened_refuses_calls_until_open(redis_url: str) -> None:
    client = RedisClient.from_url(redis_url, opened=False)  # what an App builds for a redis:// URL
    assert client.closed
    with pytest.raises(ConfigurationError, match=r"Redis client for .* is not open: App\.start"):
        await client.execute("PING")  # no connect on demand
    for _ in range(2):  # opened, closed, opened again
        await client.open()
        assert not client.closed and client.server_version is not None  # connected by open()
        assert await client.execute("PING") == b"PONG"
        await client.aclose()
        with pytest.raises(ConfigurationError, match="is not open"):
            await client.execute("PING")


def test_translate_error_maps_builtin_errors_and_error_replies() -> None:
    assert isinstance(translate_error(ConnectionResetError("x"), "GET k"), BackendUnavailableError)
    assert isinstance(translate_error(ConnectionRefusedError(), "connect"), BackendUnavailableError)
    assert isinstance(translate_error(ssl.SSLError("bad cert"), "connect"), BackendUnavailableError)
    timeout = translate_error(TimeoutError("slow"), "GET k", 1.5)
    assert isinstance(timeout, BackendTimeoutError) and "GET k" in str(timeout) and "1.5 s" in str(timeout)
    refused = translate_error(ReplyError("WRONGPASS invalid username-password pair"), "AUTH")
    assert isinstance(refused, ConfigurationError)
    assert type(translate_error(ReplyError("ERR x"), "GET")) is BackendError
    cancelled = asyncio.CancelledError()
    assert translate_error(cancelled, "GET") is cancelled
    other = ValueError("not a client error")
    assert translate_error(other, "GET") is other
    with pytest.raises(BackendUnavailableError) as info, redis_errors("XADD s", 1.0):
        raise ConnectionResetError("gone")
    assert isinstance(info.value.__cause__, ConnectionResetError)


# -- auth, db, TLS (on a server of their own) ---------------------------------------------------------


async def test_acl_user_and_password(redis_url: str, unique_name: str) -> None:
    user, password = f"u{unique_name}", "p@ss:w/rd"
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    async with RedisClient.from_url(redis_url) as admin:
        await admin.execute("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
        try:
            quoted = "p%40ss%3Aw%2Frd"
            async with RedisClient.from_url(f"redis://{user}:{quoted}@{host_port}/0") as client:
                assert await client.execute("ACL", "WHOAMI") == user.encode()
            async with RedisClient.from_url(f"redis://{user}:wrong@{host_port}/0") as bad:
                with pytest.raises(ConfigurationError) as info:
                    await bad.execute("PING")
                assert "wrong" not in str(info.value)
        finally:
            await admin.execute("ACL", "DELUSER", user)


async def test_db_from_the_url_is_selected(redis_url: str, unique_name: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    key = f"{unique_name}:db"
    async with RedisClient.from_url(f"{base}/5") as db5, RedisClient.from_url(f"{base}/0") as db0:
        await db5.execute("SET", key, "five")
        try:
            assert await db0.execute("GET", key) is None
            assert await db5.execute("GET", key) == b"five"
        finally:
            await db5.execute("DEL", key)


async def test_tls_with_a_verified_certificate(tls_server: tuple[int, Path, RedisServer]) -> None:
    port, ca, _ = tls_server
    async with RedisClient.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}") as client:
        assert await client.execute("PING") == b"PONG"
        await client.execute("SET", "tls:k", "v")
        assert await client.execute("GET", "tls:k") == b"v"


async def test_tls_rejects_an_unknown_ca(tls_server: tuple[int, Path, RedisServer]) -> None:
    port, _, _ = tls_server
    async with RedisClient.from_url(f"rediss://127.0.0.1:{port}/0") as client:
        with pytest.raises(BackendUnavailableError) as info:
            await client.execute("PING")
        assert isinstance(info.value.__cause__, ssl.SSLError)


async def test_password_only_auth(tls_server: tuple[int, Path, RedisServer]) -> None:
    _, _, server = tls_server
    async with RedisClient.from_url(server.url) as admin:
        await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
        try:
            async with RedisClient.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0") as client:
                assert await client.execute("PING") == b"PONG"
            async with RedisClient.from_url(server.url) as anonymous:
                with pytest.raises(ConfigurationError):
                    await anonymous.execute("PING")
        finally:
            await admin.execute("CONFIG", "SET", "requirepass", "")


def test_key_layout_is_unambiguous() -> None:
    from catga.redis._keys import FAMILIES, FIXED

    for family in FAMILIES:
        assert family not in FIXED
        for other in FAMILIES:
            assert other == family or not other.startswith(family + ":"), (family, other)
        for fixed in FIXED:
            assert not fixed.startswith(family + ":"), (family, fixed)
