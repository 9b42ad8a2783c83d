"""TLS: the nats-py connection and catga's lean connection both upgrade and verify the server."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from catga.errors import BackendUnavailableError
from catga.nats import NatsEventStore
from catga.protocols import NO_STREAM
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.servers import NatsServer

pytestmark = pytest.mark.nats


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:  # pragma: no cover - openssl is part of the test image
        raise RuntimeError("the TLS tests need the openssl command")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=catga-ca",
        cwd=d,
    )
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d,
    )  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_server(certificates: Path) -> Iterator[NatsServer]:
    args = [
        "--tls",
        "--tlscert",
        str(certificates / "server.pem"),
        "--tlskey",
        str(certificates / "server.key"),
    ]
    with NatsServer(extra_args=args) as server:
        yield server


async def test_event_store_over_tls(tls_server: NatsServer, certificates: Path) -> None:
    context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    url = tls_server.url.replace("nats://", "tls://")
    async with await NatsEventStore.connect(
        url, connect_options={"tls": context}, registry=contract_registry()
    ) as store:
        assert await store.append("t", [ContractOrderPlaced("o", 0)], NO_STREAM) == 0
        assert [e.data for e in await store.read("t")] == [ContractOrderPlaced("o", 0)]
        proto = store.connection.wire._proto
        assert proto is not None and proto.transport is not None
        assert proto.transport.get_extra_info("ssl_object") is not None  # the lean socket is TLS too


async def test_an_untrusted_server_certificate_is_refused(tls_server: NatsServer) -> None:
    url = tls_server.url.replace("nats://", "tls://")
    with pytest.raises(BackendUnavailableError):
        await NatsEventStore.connect(
            url,
            connect_options={
                "tls": ssl.create_default_context(),
                "allow_reconnect": False,
                "connect_timeout": 2,
            },
            registry=contract_registry(),
        )
