"""The waiting half of :class:`~catga.eventsourcing.ProjectionRunner`: ``wait_for_position`` and
``wait_until_live`` (a mixin, to keep the runner's module to its loop)."""

from __future__ import annotations

import asyncio

from catga.errors import CatgaError, OperationTimeoutError

__all__ = ("WaitingMixin",)


class WaitingMixin:
    """Futures resolved by the runner as it advances; failed when it stops."""

    name: str
    position: int
    live: bool
    error: BaseException | None
    _running: bool
    _finished_runs: int
    _own_task: asyncio.Task[None] | None

    def _init_waiting(self) -> None:
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._live_waiters: list[asyncio.Future[None]] = []

    def _stopped_for_good(self) -> bool:
        own = self._own_task
        return bool(self._finished_runs) and not self._running and (own is None or own.done())

    async def wait_for_position(self, position: int, timeout: float = 10.0) -> None:
        """Wait until the projection has handled every event up to global ``position``.

        Raises:
            OperationTimeoutError: not reached within ``timeout`` seconds.
            CatgaError: the runner stopped (or failed) before reaching it, or has already stopped.
        """
        if self.position >= position:
            return
        if self._stopped_for_good():
            raise self._stopped_error(position)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (position, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise OperationTimeoutError(
                f"projection {self.name!r} reaching position {position} (at {self.position})", timeout
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_until_live(self, timeout: float = 10.0) -> None:
        """Wait until the runner has caught up and follows new events live.

        Raises:
            OperationTimeoutError: not live within ``timeout`` seconds.
            CatgaError: the runner stopped (or failed) before going live, or has already stopped.
        """
        if self.live:
            return
        if self._stopped_for_good():
            raise self._stopped_error(None)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._live_waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise OperationTimeoutError(f"projection {self.name!r} going live", timeout) from None
        finally:
            if future in self._live_waiters:
                self._live_waiters.remove(future)

    def _notify(self) -> None:
        position = self.position
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if target <= position:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def _notify_live(self) -> None:
        live_waiters, self._live_waiters = self._live_waiters, []
        for future in live_waiters:
            if not future.done():
                future.set_result(None)

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for target, future in waiters:
            if not future.done():
                future.set_exception(self._stopped_error(target))
        live_waiters, self._live_waiters = self._live_waiters, []
        for future in live_waiters:
            if not future.done():
                future.set_exception(self._stopped_error(None))

    def _stopped_error(self, target: int | None) -> CatgaError:
        goal = "going live" if target is None else f"reaching {target}"
        error = CatgaError(
            f"projection runner {self.name!r} stopped at position {self.position} before {goal}"
            + (f": {self.error}" if self.error else "; start it again")
        )
        error.__cause__ = self.error
        return error
