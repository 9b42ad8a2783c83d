"""An asyncpg pool on the session's PostgreSQL test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[Any]:
    """A small pool, closed after the test."""
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=8)
    yield pool
    await pool.close()
