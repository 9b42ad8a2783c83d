"""TimeoutBehavior: give up on a handler after a time limit.

The rest of the pipeline runs under :func:`asyncio.timeout`; when the limit passes, the handler is
cancelled and a failed Result with code ``timeout`` (an :class:`~catga.errors.OperationTimeoutError`,
retryable) is returned. Put it inside the retry behavior so a timed-out attempt is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from catga.context import Context
from catga.errors import ConfigurationError, OperationTimeoutError
from catga.handlers import HandlerInfo
from catga.pipeline.base import Behavior, Next
from catga.result import Result

__all__ = ("TimeoutBehavior",)


class TimeoutBehavior(Behavior):
    """Limit how long a message's handling may take.

    Args:
        seconds: default limit; None means no limit for types without an override.
        per_type: limits per message type (None disables the limit for that type).

    Raises:
        ConfigurationError: a limit is not positive.
    """

    def __init__(self, seconds: float | None = 30.0, *, per_type: Mapping[type, float | None] | None = None):
        self.seconds = seconds
        self.per_type = dict(per_type or {})
        for limit in (seconds, *self.per_type.values()):
            if limit is not None and limit <= 0:
                raise ConfigurationError(f"timeouts must be > 0 seconds, got {limit}")

    def limit_for(self, message_type: type) -> float | None:
        """The limit for ``message_type`` (its own or a base's override, else the default)."""
        for klass in message_type.__mro__:
            if klass in self.per_type:
                return self.per_type[klass]
        return self.seconds

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the timeout layer, or skip it when the type has no limit."""
        seconds = self.limit_for(info.message_type)
        if seconds is None:
            return call_next
        operation = f"handling {info.name}"

        async def limited(message: Any, ctx: Context) -> Result[Any]:
            cm = asyncio.timeout(seconds)
            try:
                async with cm:
                    return await call_next(message, ctx)
            except TimeoutError:
                if not cm.expired():
                    raise
                exc = OperationTimeoutError(f"{operation} {ctx.message_id}", seconds)
                return Result(False, None, str(exc), exc.code, exc)

        return limited
