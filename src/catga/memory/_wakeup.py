"""Waking asyncio waiters from any thread: the shared helper of the memory backends.

A waiter is ``(loop, future)``. :func:`notify` resolves the futures of the calling thread's running loop
directly and schedules the others on their own loops with ``call_soon_threadsafe``; a closed loop's
waiter is skipped (its task is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ("Waiter", "notify", "wake")

Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` unless it is already done (cancelled or woken)."""
    if not fut.done():
        fut.set_result(None)


def notify(waiters: list[Waiter]) -> None:
    """Wake every waiter, each on its own loop."""
    running: Any = asyncio._get_running_loop()
    for loop, fut in waiters:
        if loop is running:
            wake(fut)
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(wake, fut)
