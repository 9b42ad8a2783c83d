"""The ScheduleStore contract on JetStream: message schedules (2.12+) and delayed redelivery (2.10+)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.errors import ConfigurationError
from catga.nats import NatsConnection, NatsScheduleStore
from catga.testing.contracts import ScheduleStoreContract
from catga.testing.contracts.schedules import LEASE

pytestmark = pytest.mark.nats


class TestNatsScheduleStore(ScheduleStoreContract):
    mode = "schedules"

    @pytest.fixture
    async def schedule_stores(
        self, nats_connection: NatsConnection, nats_url: str, unique_name: str, doomed_streams: list[str]
    ) -> AsyncIterator[tuple[NatsScheduleStore, NatsScheduleStore]]:
        stream = f"SCHED_{unique_name}"
        doomed_streams.append(stream)
        options = {"stream": stream, "prefix": unique_name, "lease": LEASE, "storage": "memory"}
        async with (
            NatsScheduleStore(nats_connection, mode=self.mode, **options) as a,  # type: ignore[arg-type]
            await NatsScheduleStore.connect(nats_url, mode=self.mode, **options) as b,
        ):
            assert (a.mode, b.mode) == (self.mode, self.mode)
            yield a, b


class TestNatsScheduleStoreDelayed(TestNatsScheduleStore):
    """The fallback for servers without message schedules, run on this server."""

    mode = "delayed"


async def test_auto_picks_message_schedules_on_this_server(nats_connection: NatsConnection) -> None:
    store = NatsScheduleStore(nats_connection)
    assert store.mode == "schedules"
    await store.aclose()


async def test_a_bad_mode_is_refused(nats_connection: NatsConnection) -> None:
    with pytest.raises(ConfigurationError, match="mode"):
        NatsScheduleStore(nats_connection, mode="cron")
