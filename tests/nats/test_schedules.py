"""The ScheduleStore contract on JetStream message schedules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.nats import NatsConnection, NatsScheduleStore
from catga.testing.contracts import ScheduleStoreContract
from catga.testing.contracts.schedules import LEASE

pytestmark = pytest.mark.nats


class TestNatsScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedule_stores(
        self, nats_connection: NatsConnection, nats_url: str, unique_name: str, doomed_streams: list[str]
    ) -> AsyncIterator[tuple[NatsScheduleStore, NatsScheduleStore]]:
        stream = f"SCHED_{unique_name}"
        doomed_streams.append(stream)
        options = {"stream": stream, "prefix": unique_name, "lease": LEASE, "storage": "memory"}
        async with (
            NatsScheduleStore(nats_connection, **options) as a,  # type: ignore[arg-type]
            await NatsScheduleStore.connect(nats_url, **options) as b,
        ):
            yield a, b
