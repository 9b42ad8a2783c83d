"""One-time async initialisation with a lock-free fast path (streams and buckets created on first use).

Lazy initialisation follows the origin's lock review, option A (see ``docs/nats.md``): call sites test
a plain attribute, ``if not self._init.ready: await self._init()``, so once initialised no coroutine is
created and no lock is taken; the slow path (:class:`LazyInit`) takes an :class:`asyncio.Lock`,
re-checks, runs the initialiser and only then sets the flag. A failed or cancelled initialisation
leaves the flag unset, so the next call retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ("LazyInit",)


class LazyInit:
    """One-time async initialisation with a lock-free fast path (the origin's option A).

    Use it as ``if not init.ready: await init()``. The slow path runs ``initializer`` once for all the
    callers waiting at that moment (single flight): the first caller runs it, the others wait for that
    attempt and share its outcome -- its success, or its exception -- instead of each running an
    attempt of its own after it failed. So a caller waits for at most the attempt under way, not for a
    queue of attempts (after a lost stream leader, 16 writers queued behind one another's stream checks
    and an ``append()`` took 5 s with ``timeout=1.0``). :attr:`ready` is set only after ``initializer``
    returned; if it raises or is cancelled, :attr:`ready` stays False and the next call runs it again
    (the callers waiting on a cancelled attempt start a new one, unless they are cancelled themselves).

    Args:
        initializer: the coroutine function to run once.
    """

    __slots__ = ("_attempt", "_initializer", "ready")

    def __init__(self, initializer: Callable[[], Awaitable[None]]) -> None:
        self._initializer = initializer
        self._attempt: asyncio.Future[None] | None = None
        self.ready = False

    async def __call__(self) -> None:
        while not self.ready:
            attempt = self._attempt
            if attempt is not None:  # another caller is initialising: share its outcome
                try:
                    await asyncio.shield(attempt)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if attempt.cancelled() and (task is None or not task.cancelling()):
                        continue  # that caller was cancelled, not this one: try again
                    raise
                return
            attempt = self._attempt = asyncio.get_running_loop().create_future()
            try:
                await self._initializer()
            except BaseException as exc:
                self._attempt = None
                if isinstance(exc, asyncio.CancelledError):
                    attempt.cancel()
                else:
                    attempt.set_exception(exc)
                    attempt.exception()  # retrieved: no "never retrieved" log when nobody was waiting
                raise
            self.ready = True
            self._attempt = None
            attempt.set_result(None)

    def reset(self) -> None:
        """Forget the initialisation (e.g. the stream was deleted); the next call runs it again."""
        self.ready = False
