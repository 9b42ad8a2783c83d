"""A URL without a host, and a NATS subject prefix with dots, are refused at once, saying what is wrong."""

from __future__ import annotations

import nats.aio.client
import pytest

import catga
from catga.errors import ConfigurationError
from catga.nats import NatsTransport
from catga.nats.connection import NatsConnection
from catga.redis.connection import RedisSettings


@pytest.mark.parametrize("url", ["nats://", "nats://:4222", "tls://?prefix=x", "redis://", "redis://:6379/0"])
def test_an_app_refuses_a_url_without_a_host_in_its_constructor(url: str) -> None:
    with pytest.raises(ConfigurationError, match="host") as info:
        catga.App(transport=url)
    assert "127.0.0.1" in str(info.value)  # an example of what to write


@pytest.mark.parametrize("url", ["redis://", "rediss:///1", "redis://:secret@:6379/0"])
def test_redis_settings_refuse_a_url_without_a_host_instead_of_meaning_localhost(url: str) -> None:
    with pytest.raises(ConfigurationError, match="no host; write the server's address") as info:
        RedisSettings.from_url(url)
    assert "secret" not in str(info.value)
    assert RedisSettings.from_url("unix:///tmp/redis.sock").unix_path == "/tmp/redis.sock"


async def test_a_nats_connection_refuses_a_server_without_a_host_before_connecting() -> None:
    for url in ("nats://", "nats://127.0.0.1:4222,nats://:4223", ["nats://u:secret@:4222"]):
        with pytest.raises(ConfigurationError, match="has no host; write the server's address") as info:
            await NatsConnection.connect(url, connect_timeout=0.5)  # type: ignore[arg-type]
        assert "secret" not in str(info.value)


@pytest.mark.parametrize("prefix", ["P.evt.other", "a.b", "shop:eu", "x" * 65])
def test_a_nats_transport_refuses_what_a_url_prefix_refuses(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="subject prefix") as info:
        NatsTransport(nats.aio.client.Client(), prefix=prefix)
    with pytest.raises(ConfigurationError, match="invalid prefix"):
        catga.App(transport=f"nats://127.0.0.1:4222?prefix={prefix}")
    if "." in prefix:
        assert "another prefix's '<prefix>.evt.>'" in str(info.value)


def test_a_nats_transport_takes_a_one_token_prefix() -> None:
    transport = NatsTransport(nats.aio.client.Client(), prefix="shop-eu_1")
    assert transport.prefix == "shop-eu_1" and transport.stream == "SHOP-EU_1_MESSAGES"
