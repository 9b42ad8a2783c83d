"""The ScheduleStore contract on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from catga.postgres import PostgresScheduleStore
from catga.testing.contracts import ScheduleStoreContract

pytestmark = pytest.mark.postgres


class TestPostgresScheduleStore(ScheduleStoreContract):
    @pytest.fixture
    async def schedule_stores(
        self, pool: Any, postgres_url: str, unique_name: str
    ) -> AsyncIterator[tuple[PostgresScheduleStore, PostgresScheduleStore]]:
        table = f"schedules_{unique_name}"
        async with (
            PostgresScheduleStore(pool, table=table) as a,
            await PostgresScheduleStore.connect(postgres_url, table=table) as b,
        ):
            yield a, b
