"""One event loop in a thread of its own: how eventsourcing's synchronous recorders call catga's async
stores.

Every recorder call submits a coroutine to the loop (:func:`asyncio.run_coroutine_threadsafe`) and waits
for its result with a deadline; the stores' connections live on that loop only. Any thread may call, and
so may code running in another event loop (it blocks that loop for the call, as any synchronous database
client does: wrap the call in :func:`asyncio.to_thread` to keep that loop responsive). The one caller
refused is the loop's own thread (a coroutine running on it), which would wait on itself forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from eventsourcing.persistence import OperationalError, ProgrammingError

__all__ = ("LoopThread",)

T = TypeVar("T")


class LoopThread:
    """A daemon thread running one asyncio loop until :meth:`close`.

    Args:
        name: the thread's name (shown by debuggers and ``py-spy``).

    Thread-safety: :meth:`run` and :meth:`close` may be called from any thread.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the caller owns the returned future (wait on it or cancel it).

        Raises:
            ProgrammingError: the loop is closed, or the caller runs on the loop's own thread.
        """
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise ProgrammingError(
                "a catga recorder was called from its own event loop thread, which would wait on itself: "
                "call the eventsourcing application from another thread (asyncio.to_thread)"
            )
        if self._closed:
            coro.close()
            raise ProgrammingError("the catga infrastructure factory is closed: construct a new application")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the loop and return its result, waiting at most ``timeout`` seconds.

        Raises:
            OperationalError: the call took longer than ``timeout`` (it is cancelled first).
            ProgrammingError: see :meth:`submit`.
            Exception: whatever ``coro`` raised.
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():  # the coroutine's own TimeoutError, or it finished just now
                return future.result()
            future.cancel()
            raise OperationalError(
                f"{what} did not finish within {timeout} s (CATGA_CALL_TIMEOUT); it was cancelled"
            ) from None

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what still runs on the loop (a subscription waiting for events: its caller gets the
        cancellation), stop the loop and join its thread (idempotent). Close the stores on it first.

        Args:
            timeout: seconds the cancelled tasks get to finish.
        """
        if self._closed:
            return
        if self._thread.ident == threading.get_ident():
            raise ProgrammingError(
                "the catga loop thread cannot close itself: close the factory from another thread"
            )
        self._closed = True
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(_cancel_all(timeout), self._loop).result(timeout + 1.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


async def _cancel_all(timeout: float) -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
