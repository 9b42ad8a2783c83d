"""RetryBehavior: retry transient failures with capped exponential backoff and full jitter.

Only failed Results whose :attr:`~catga.result.Result.retryable` is true are retried: those from a
:class:`~catga.errors.RetryableError` (timeouts included) or a retryable backend error. Business
failures, validation errors and internal errors are returned at once. The delay before attempt
``n + 1`` is ``uniform(0, min(max_delay, base_delay * 2 ** (n - 1)))`` ("full jitter").

When it is the innermost behavior, the retry loop is fused into the mediator's handler call (same
semantics, one coroutine less per message).

Events are not retried by default: re-running a fan-out would re-run the handlers that succeeded;
redelivery of events is the transport's job. Pass ``events=True`` to retry them anyway.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import HandlerInfo
from catga.pipeline._hooks import fuse
from catga.pipeline.base import Behavior, Next
from catga.result import Result

__all__ = ("RetryBehavior",)


class RetryBehavior(Behavior):
    """Retry retryable failures.

    Args:
        max_attempts: total attempts including the first (default 3).
        base_delay: backoff base in seconds (default 0.05).
        max_delay: cap on one delay in seconds (default 2.0).
        events: also retry event fan-outs (default False).
        sleep: the sleep coroutine function (injectable for tests).
        random: returns a float in [0, 1) (injectable for tests).

    Raises:
        ConfigurationError: ``max_attempts`` < 1 or a negative delay.
    """

    def __init__(
        self,
        max_attempts: int = 3,
        *,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        events: bool = False,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ConfigurationError(f"delays must be >= 0, got base={base_delay} max={max_delay}")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.events = events
        self.sleep = sleep
        self._random = random

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (1-based), jitter included."""
        return self._random() * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the retry layer, or skip it (events, or a single attempt)."""
        if self.max_attempts == 1 or (info.is_event and not self.events):
            return call_next
        fused = fuse(call_next, retry=self)
        if fused is not None:  # innermost: the mediator runs the retry loop in the handler's frame
            return fused
        max_attempts = self.max_attempts
        sleep, delay = self.sleep, self.delay

        async def retry(message: Any, ctx: Context) -> Result[Any]:
            result = await call_next(message, ctx)
            if result.ok or not result.retryable:
                return result
            attempt = 1
            while attempt < max_attempts:
                await sleep(delay(attempt))
                attempt += 1
                result = await call_next(message, ctx)
                if result.ok or not result.retryable:
                    return result
            return result

        return retry
