"""IdempotencyBehavior: a message id is handled once; a duplicate gets the stored Result.

For each message the behavior claims ``str(message_id)`` in an
:class:`~catga.protocols.IdempotencyStore` — one atomic step, never check-then-act:

* CLAIMED: the handler runs. A success, or a business failure that is not retryable, is stored
  (``complete``) and replayed to duplicates for ``ttl`` seconds. A retryable or internal failure, an
  exception or a cancellation releases the claim so a redelivery runs the handler again.
* COMPLETED: the stored Result is decoded (typed by the handler's return type, resolved once) and
  returned without running the handler.
* IN_PROGRESS: another delivery of the same id is being handled right now; a failed Result with code
  ``conflict`` is returned (retry later).

With ``events=True``, events are deduplicated the same way (the whole fan-out counts as one); by
default they are not, since events from a transport go through the consumer's inbox. A result that cannot be
encoded is not stored (logged once per type): the claim is released, the result still returned.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from catga.context import Context
from catga.errors import ConflictError, ErrorCode, SerializationError
from catga.handlers import HandlerInfo
from catga.pipeline._codec import ResultCodec
from catga.pipeline._hooks import Guard, fuse
from catga.pipeline.base import Behavior, Next
from catga.protocols import ClaimStatus
from catga.result import _SUCCESS, Result

if TYPE_CHECKING:
    from catga.protocols import IdempotencyStore

__all__ = ("IdempotencyBehavior",)

_log = logging.getLogger("catga.pipeline")
_CLAIMED = ClaimStatus.CLAIMED
_COMPLETED = ClaimStatus.COMPLETED
_INTERNAL = ErrorCode.INTERNAL
_OK_NONE = b"[true,null,null,null,null]"  # ResultCodec's form of Result(True, None)


def _storable(result: Result[Any]) -> bool:
    return result.ok or (result.code != _INTERNAL and not result.retryable)


class IdempotencyBehavior(Behavior):
    """Deduplicate messages by id through an idempotency store.

    Args:
        store: the store, e.g. :class:`catga.memory.MemoryIdempotencyStore` (the pipeline never picks a
            backend itself; :class:`catga.App` passes its ``idempotency_store``).
        ttl: how long a completed result is kept and replayed (seconds, default one day).
        lock_ttl: how long a claim blocks duplicates if its holder dies (seconds, default 30).
        events: also deduplicate events (default False: events arriving from a transport are
            deduplicated by the consumer's inbox; an in-process publish gets a fresh id).
    """

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        ttl: float = 86400.0,
        lock_ttl: float = 30.0,
        events: bool = False,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.events = events

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the idempotency layer for one message type."""
        if info.is_event and not self.events:
            return call_next
        codec = ResultCodec(None if info.is_event else info.return_type)
        type_name = info.name
        ttl, lock_ttl = self.ttl, self.lock_ttl
        warned: list[bool] = []

        def encode(result: Result[Any]) -> bytes | None:
            try:
                return codec.encode(result)
            except SerializationError as exc:
                if not warned:
                    warned.append(True)
                    _log.warning("results of %s are not stored for idempotency: %s", type_name, exc)
                return None

        def in_progress(ctx: Context) -> Result[Any]:
            exc = ConflictError(
                f"{type_name} {ctx.message_id} is being handled by another delivery; retry later"
            )
            return Result(False, None, str(exc), exc.code, exc)

        store = self.store
        sync_guard = getattr(store, "sync_guard", None)
        guard: Guard | None = None
        if sync_guard is not None:  # the in-memory store: hooks written against its dict
            guard = sync_guard(
                lock_ttl=lock_ttl,
                ttl=ttl,
                replay=codec.decode,
                busy=in_progress,
                encode=lambda result: encode(result) if _storable(result) else None,
                known=(_SUCCESS, _OK_NONE),
            )
        if guard is not None:
            fused = fuse(call_next, guard=guard)
            if fused is not None:  # right around the handler: hooks run in the handler's frame
                return fused
            enter, leave, abort = guard.enter, guard.leave, guard.abort

            async def idempotent_sync(message: Any, ctx: Context) -> Result[Any]:
                early = enter(message, ctx)
                if early is not None:
                    return early
                try:
                    result = await call_next(message, ctx)
                except BaseException:
                    abort(message, ctx)
                    raise
                leave(message, ctx, result)
                return result

            return idempotent_sync

        async def idempotent(message: Any, ctx: Context) -> Result[Any]:
            key = str(ctx.message_id)
            claim = await store.claim(key, lock_ttl)
            if claim.status == _CLAIMED:
                try:
                    result = await call_next(message, ctx)
                except BaseException:
                    await store.release(key)
                    raise
                data = encode(result) if _storable(result) else None
                if data is None:
                    await store.release(key)
                else:
                    await store.complete(key, data, ttl)
                return result
            if claim.status == _COMPLETED:
                return codec.decode(claim.result or b"")
            return in_progress(ctx)

        return idempotent
