"""The real-server fixtures: they start real NATS JetStream / Redis servers and clean up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis

import catga.testing
from catga.errors import ConfigurationError
from catga.testing import _process, servers
from catga.testing.servers import (
    NatsServer,
    RedisServer,
    ServerStartError,
    check_loopback_url,
    find_nats_server,
    url_from_env,
)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False


def _assert_gone(pid: int, port: int, directory: Path) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _port_open(port)
    assert not directory.exists()


@pytest.mark.nats
async def test_nats_fixture_is_real_jetstream(nats_url: str, unique_name: str) -> None:
    assert nats_url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        version = nc.connected_server_version
        assert (version.major, version.minor) >= (2, 10)
        js = nc.jetstream(timeout=5)
        await js.add_stream(name=unique_name, subjects=[f"{unique_name}.>"], allow_direct=True)
        try:
            ack = await js.publish(f"{unique_name}.a", b"hello")
            assert (ack.stream, ack.seq) == (unique_name, 1)
            direct = await js.get_msg(unique_name, seq=1, direct=True)
            assert (direct.subject, direct.data) == (f"{unique_name}.a", b"hello")
            stored = await js.get_msg(unique_name, seq=1)
            assert stored.data == b"hello"
        finally:
            await js.delete_stream(unique_name)
    finally:
        await nc.close()


@pytest.mark.redis
async def test_redis_fixture_is_real_redis(redis_url: str, unique_name: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    client = aioredis.from_url(redis_url, socket_timeout=5)
    try:
        await client.set(unique_name, "value")
        assert await client.get(unique_name) == b"value"
        info = await client.info("server")
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(info["redis_version"]))
        assert await client.delete(unique_name) == 1
    finally:
        await client.aclose()


_seen_names: set[str] = set()


@pytest.mark.parametrize("_round", range(3))
def test_unique_name_is_short_and_fresh_per_test(unique_name: str, _round: int) -> None:
    assert re.fullmatch(r"t[0-9a-f]{12}", unique_name)
    assert unique_name not in _seen_names
    _seen_names.add(unique_name)


@pytest.mark.nats
def test_find_nats_server_prefers_a_recent_binary() -> None:
    out = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = re.search(r"v(\d+)\.(\d+)", out)
    assert match is not None, out
    assert (int(match[1]), int(match[2])) >= (2, 10)


@pytest.mark.nats
def test_nats_server_bad_argument_fails_with_log_tail() -> None:
    server = NatsServer(extra_args=["--no-such-flag"])
    with pytest.raises(ServerStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "--no-such-flag" in message  # the command line
    assert "flag provided but not defined" in message  # the server's own output
    assert "flag provided but not defined" in caught.value.log_tail
    assert caught.value.command[-1] == "--no-such-flag"
    assert not server.running
    assert server.directory is None  # temp dir removed


@pytest.mark.redis
def test_redis_server_bad_argument_fails_with_log_tail() -> None:
    with pytest.raises(ServerStartError) as caught:
        RedisServer(extra_args=["--no-such-directive", "x"]).start()
    assert "no-such-directive" in caught.value.log_tail
    assert "Bad directive" in str(caught.value)


@pytest.mark.nats
def test_nats_server_stop_kills_process_and_frees_ports() -> None:
    server = NatsServer().start()
    pid, port, monitor_port, directory = server.pid, server.port, server.monitor_port, server.directory
    assert pid is not None and directory is not None
    assert server.running and directory.is_dir()
    assert server.url == f"nats://127.0.0.1:{port}"
    assert server.version == server.info["version"] != ""
    assert _port_open(port) and _port_open(monitor_port)
    server.stop()
    _assert_gone(pid, port, directory)
    assert not _port_open(monitor_port)
    assert not server.running
    server.stop()  # idempotent


@pytest.mark.redis
def test_redis_server_context_manager_stops_it() -> None:
    with RedisServer() as server:
        pid, port, directory = server.pid, server.port, server.directory
        assert pid is not None and directory is not None
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
    _assert_gone(pid, port, directory)


@pytest.mark.nats
def test_nats_server_kill_then_stop() -> None:
    server = NatsServer().start()
    assert server.directory is not None
    server.kill()
    assert not server.running
    assert not _port_open(server.port)
    assert server.directory.is_dir()  # kept until stop(), e.g. to restart on the same store
    directory = server.directory
    server.stop()
    assert not directory.exists()


@pytest.mark.nats
async def test_nats_server_restart_keeps_store_dir(tmp_path: Path, unique_name: str) -> None:
    async def publish_or_read(url: str, publish: bool) -> bytes:
        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            if publish:
                await js.add_stream(name=unique_name, subjects=[unique_name])
                await js.publish(unique_name, b"durable")
            return (await js.get_msg(unique_name, seq=1)).data or b""
        finally:
            await nc.close()

    first = NatsServer(store_dir=tmp_path)
    await asyncio.to_thread(first.start)
    try:
        assert await publish_or_read(first.url, publish=True) == b"durable"
    finally:
        await asyncio.to_thread(first.stop)
    assert await asyncio.to_thread((tmp_path / "jetstream").is_dir)  # survives stop()
    second = NatsServer(store_dir=tmp_path)
    await asyncio.to_thread(second.start)
    try:
        assert await publish_or_read(second.url, publish=False) == b"durable"
    finally:
        await asyncio.to_thread(second.stop)


@pytest.mark.nats
def test_nats_server_pinned_to_cpu_with_gomaxprocs() -> None:
    cpu = min(os.sched_getaffinity(0))
    with NatsServer(cpu=cpu) as server:
        assert server.command[:3] == [servers.shutil.which("taskset"), "-c", str(cpu)]
        status = Path(f"/proc/{server.pid}/status").read_text()
        assert re.search(rf"^Cpus_allowed_list:\s+{cpu}$", status, re.MULTILINE)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environ


def test_cpu_outside_affinity_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="cpu=4096"):
        NatsServer(cpu=4096)


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222",
        "nats://127.0.0.2:4222,nats://localhost:4223",
        "redis://localhost:6379/0",
        "redis://[::1]:6379/0",
        "127.0.0.1:4222",
    ],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert check_loopback_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "nats://10.0.0.5:4222",
        "nats://127.0.0.1:4222,nats://demo.nats.io:4222",
        "redis://redis.example.com:6379/0",
        "redis://localhost.evil.com/0",
        "nats://:4222",
    ],
)
def test_remote_urls_are_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        check_loopback_url(url, source="CATGA_NATS_URL")


def test_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATGA_TEST_URL", raising=False)
    assert url_from_env("CATGA_TEST_URL") is None
    monkeypatch.setenv("CATGA_TEST_URL", "  ")
    assert url_from_env("CATGA_TEST_URL") is None
    monkeypatch.setenv("CATGA_TEST_URL", "redis://127.0.0.1:7000/1")
    assert url_from_env("CATGA_TEST_URL") == "redis://127.0.0.1:7000/1"
    monkeypatch.setenv("CATGA_TEST_URL", "redis://192.168.1.2:6379/0")
    with pytest.raises(ConfigurationError, match=re.escape("CATGA_TEST_URL='redis://192.168.1.2")):
        url_from_env("CATGA_TEST_URL")


def test_testing_all_matches_module() -> None:
    exported = set(catga.testing.__all__)
    assert exported >= set(servers.__all__)
    assert all(hasattr(catga.testing, name) for name in exported)


def test_unrunnable_binary_fails_cleanly(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("not a program")  # not executable
    with pytest.raises(ServerStartError, match="could not be run") as caught:
        NatsServer(binary=str(fake)).start()
    assert caught.value.command[0] == str(fake)


_HOLDS_A_SERVER = """
import signal, sys, time
from catga.testing.servers import NatsServer
if sys.argv[1] == "own-handler":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(7))
with NatsServer() as server:
    print(server.pid, server.port, server.directory, flush=True)
    time.sleep(60)
"""


def _run_and_terminate(mode: str) -> tuple[int, int, int, Path]:
    """Start a script holding ``with NatsServer()``, SIGTERM it once the server runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDS_A_SERVER, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        pid, port, directory = line.split()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return code, int(pid), int(port), Path(directory)


def _assert_gone_or_clean_up(pid: int, port: int, directory: Path) -> None:
    """:func:`_assert_gone`; if it fails, the orphaned server and its directory are removed first."""
    try:
        _assert_gone(pid, port, directory)
    except (AssertionError, pytest.fail.Exception):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        raise


@pytest.mark.nats
def test_sigterm_stops_the_servers_then_terminates_as_sigterm_does() -> None:
    # docs/testing.md: servers still running when Python exits are stopped; atexit alone missed SIGTERM.
    code, pid, port, directory = _run_and_terminate("default")
    try:
        assert code == -signal.SIGTERM  # killed by SIGTERM, as without catga's handler
    finally:
        _assert_gone_or_clean_up(pid, port, directory)


@pytest.mark.nats
def test_sigterm_leaves_the_programs_own_handler_alone() -> None:
    code, pid, port, directory = _run_and_terminate("own-handler")
    try:
        assert code == 7  # the program's handler ran (sys.exit(7)); the with-block stopped the server
    finally:
        _assert_gone_or_clean_up(pid, port, directory)


@pytest.mark.redis
def test_the_sigterm_handler_lives_only_while_a_server_runs() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with RedisServer():
        during = signal.getsignal(signal.SIGTERM)
        if before is signal.SIG_DFL:
            assert during is _process._on_sigterm
        else:  # a session server (or pytest) got there first: nothing replaced
            assert during is before
    if not _process._running:
        assert signal.getsignal(signal.SIGTERM) is before
