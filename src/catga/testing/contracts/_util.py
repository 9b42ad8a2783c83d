"""Small helpers shared by the conformance suites."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

__all__ = ("WAIT", "eventually", "unique")

#: Upper bound for anything a contract waits for; generous, so slow CI machines do not flake.
WAIT = 5.0


def unique(prefix: str = "s") -> str:
    """A fresh identifier, so tests never see each other's data even on a shared backend."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = WAIT, what: str = "") -> None:
    """Poll ``check`` every 10 ms until it returns True; fail the test after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - polling a backend, no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s: {what or check!r}") from None
