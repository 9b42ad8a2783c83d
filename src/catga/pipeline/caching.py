"""CachingBehavior: serve repeated queries from a cache.

Only queries are cached, and only the types that opt in: listed in ``types=`` (type → TTL) or marked
with :func:`cached`. The key is ``catga.cache.<type name>.<blake2b of the JSON-encoded query>``, so
two equal queries share an entry. Only successful Results are stored, encoded with the handler's
return type (resolved once). The cache is a :class:`~catga.protocols.Cache` (memory, Redis...) or,
by default, an internal LRU dict with TTLs (``max_entries``, not shared between processes).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from catga.context import Context
from catga.handlers import HandlerInfo
from catga.messages import type_name
from catga.pipeline._codec import ResultCodec
from catga.pipeline.base import Behavior, Next
from catga.result import Result

if TYPE_CHECKING:
    from catga.protocols import Cache

__all__ = ("CachingBehavior", "cached")

Q = TypeVar("Q", bound=type)
_ATTR = "__catga_cache_ttl__"


def cached(ttl: float = 60.0) -> Callable[[Q], Q]:
    """Class decorator: results of this query type are cached for ``ttl`` seconds.

    Example:
        >>> @cached(ttl=30)
        ... class GetOrder(Query[dict]): ...
    """

    def mark(cls: Q) -> Q:
        setattr(cls, _ATTR, float(ttl))
        return cls

    return mark


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise NotImplementedError(f"cannot encode {type(obj).__qualname__}")


_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


class _Lru:
    """A small LRU dict with per-entry expiry (monotonic seconds). Not thread-safe (one event loop)."""

    __slots__ = ("_clock", "_data", "_max")

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[1]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._data)


class CachingBehavior(Behavior):
    """Cache successful query results per query value.

    Args:
        cache: a :class:`~catga.protocols.Cache`; an internal LRU when omitted.
        types: query types to cache, with their TTL in seconds (others may opt in with :func:`cached`).
        max_entries: size of the internal LRU (ignored with ``cache``).
        clock: monotonic seconds for the internal LRU (injectable for tests).
    """

    def __init__(
        self,
        cache: Cache | None = None,
        *,
        types: Mapping[type, float] | None = None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.types = dict(types or {})
        self._lru = _Lru(max_entries, clock)

    def ttl_for(self, message_type: type) -> float | None:
        """The TTL of ``message_type`` when it is cached, else None."""
        if message_type in self.types:
            return self.types[message_type]
        ttl = getattr(message_type, _ATTR, None)
        return float(ttl) if ttl is not None else None

    @staticmethod
    def key_for(query: object) -> str | None:
        """The cache key of ``query``, or None when it cannot be encoded (then it is not cached)."""
        try:
            body = _encode(query)
        except (TypeError, ValueError, NotImplementedError, msgspec.EncodeError):
            return None
        digest = hashlib.blake2b(body, digest_size=16).hexdigest()
        return f"catga.cache.{type_name(type(query))}.{digest}"

    async def invalidate(self, query: object) -> bool:
        """Drop the cached result of ``query``; return whether there was one."""
        key = self.key_for(query)
        if key is None:
            return False
        if self.cache is not None:
            return await self.cache.delete(key)
        return self._lru.delete(key)

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the caching layer for opted-in query types; skip it for everything else."""
        ttl = self.ttl_for(info.message_type)
        if ttl is None or not info.is_query:
            return call_next
        codec = ResultCodec(info.return_type)
        key_for, cache, lru = self.key_for, self.cache, self._lru

        async def caching(message: Any, ctx: Context) -> Result[Any]:
            key = key_for(message)
            if key is None:
                return await call_next(message, ctx)
            hit = lru.get(key) if cache is None else await cache.get(key)
            if hit is not None:
                return codec.decode(hit)
            result = await call_next(message, ctx)
            if result.ok:
                data = codec.encode(result)
                if cache is None:
                    lru.set(key, data, ttl)
                else:
                    await cache.set(key, data, ttl)
            return result

        return caching
