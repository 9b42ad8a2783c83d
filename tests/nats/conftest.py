"""Fixtures shared by the NATS storage tests: a connection per test and stream clean-up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
import pytest

from catga.nats import NatsConnection

ANCHOR = "CATGA_TEST_ANCHOR"


@pytest.fixture
async def nats_connection(nats_url: str) -> AsyncIterator[NatsConnection]:
    """A fresh :class:`NatsConnection` (closed after the test).

    It also makes sure an idle "anchor" stream exists: nats-server deletes an account's storage
    directory when its last stream goes, racing with a stream created by the next test.
    """
    async with await NatsConnection.connect(nats_url, name="catga-tests") as conn:
        await conn.js.add_stream(name=ANCHOR, subjects=["catga-test-anchor"])
        yield conn


@pytest.fixture
async def doomed_streams(nats_connection: NatsConnection) -> AsyncIterator[list[str]]:
    """Append stream names to this list; they are deleted after the test (errors ignored)."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
            await nats_connection.js.delete_stream(name)
