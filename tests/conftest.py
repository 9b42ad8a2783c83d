"""Shared test configuration: the real-server fixtures from catga.testing, and app URLs on them."""

import pytest

from chaos import chaos  # noqa: F401 - the fault suite's fixture (make chaos)

pytest_plugins = ["catga.testing.pytest_plugin"]


@pytest.fixture(
    params=[pytest.param("nats", marks=pytest.mark.nats), pytest.param("redis", marks=pytest.mark.redis)]
)
def app_url(request: pytest.FixtureRequest, unique_name: str) -> str:
    """A backend URL on the NATS or the Redis test server, in a namespace (``prefix``) of its own."""
    if request.param == "nats":
        return f"{request.getfixturevalue('nats_url')}?prefix={unique_name}&storage=memory"
    return f"{request.getfixturevalue('redis_url')}?prefix={unique_name}"
