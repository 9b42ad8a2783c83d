"""The ``async with`` support shared by catga's closeable objects: exiting the block calls ``aclose()``."""

from __future__ import annotations

from typing import Self

__all__ = ("AsyncCloseable",)


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
