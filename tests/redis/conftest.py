"""Fixtures shared by the Redis tests: a client with a prefix unique to each test, a TLS server."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from catga.redis import RedisClient
from catga.testing.servers import RedisServer, free_port


@pytest.fixture
async def redis_client(redis_url: str, unique_name: str) -> AsyncIterator[RedisClient]:
    """A :class:`RedisClient` whose prefix is unique to the test (closed after it)."""
    async with RedisClient.from_url(redis_url, prefix=unique_name) as client:
        yield client


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, RedisServer]]:
    """A redis-server with a TLS port and a self-signed CA (generated with the openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
        "-subj", "/CN=catga-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "1", "-extfile", ext)  # fmt: skip
    tls_port = free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
    with RedisServer(extra_args=args) as server:
        yield tls_port, ca, server


@pytest.fixture(params=["single", "cluster", "sentinel"])
def contract_redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The URL a contract suite runs on: a single server, the session's Redis Cluster, its Sentinel set."""
    if request.param == "single":
        return redis_url
    url: str = request.getfixturevalue(f"redis_{request.param}_url")
    return url


@pytest.fixture
async def contract_redis_client(contract_redis_url: str, unique_name: str) -> AsyncIterator[RedisClient]:
    """A client (a :class:`RedisClusterClient` on the cluster, a :class:`RedisSentinelClient` with
    Sentinel) with a prefix unique to the test."""
    async with RedisClient.from_url(contract_redis_url, prefix=unique_name) as client:
        yield client
