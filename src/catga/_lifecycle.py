"""The ``async with`` support shared by catga's closeable objects: exiting the block calls ``aclose()``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Self

__all__ = ("CLOSE_GRACE", "AsyncCloseable", "close_transport")

#: Seconds a closing socket may take to flush what was written before it is aborted.
CLOSE_GRACE = 1.0


class AsyncCloseable:
    """Mixin: ``async with obj:`` gives ``obj`` and awaits ``obj.aclose()`` when the block ends.

    Subclasses implement :meth:`aclose` (idempotent).
    """

    __slots__ = ()

    async def aclose(self) -> None:
        """Release what this object holds. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def close_transport(
    transport: asyncio.Transport | None, closed: Callable[[], bool], grace: float = CLOSE_GRACE
) -> None:
    """Close ``transport`` and wait until its socket is really closed (``closed()`` turns true).

    ``close()`` only closes the socket once the write buffer has drained: a peer that stopped reading
    (a frozen or dead server) would keep it open until the object is garbage-collected, long after the
    event loop is gone (an "unclosed transport" ``ResourceWarning`` and a leaked file descriptor). So
    after ``grace`` seconds the transport is aborted (what was not written by then is dropped).
    """
    if transport is None or closed():
        return
    if not transport.is_closing():
        transport.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not closed():
        if loop.time() >= deadline:
            transport.abort()
            await asyncio.sleep(0)  # abort() closes the socket on the next loop iteration
            return
        await asyncio.sleep(0.005)
