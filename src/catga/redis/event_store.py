"""Event store on Redis: one Lua script per append, lists per stream, a Redis Stream as the global log.

Keys (``P`` = the client's prefix; see :mod:`catga.redis._keys`):

* ``P:es:s:<stream id>`` — a list; element ``i`` is the event with version ``i`` (so versions are
  0-based and contiguous by construction), stored as ``b"<position>|" + envelope``.
* ``P:es:pos`` — the global position counter.
* ``P:es:log`` — a Redis Stream with one entry per event, id ``<position>-0``, fields ``s`` (stream
  id), ``v`` (version), ``e`` (envelope). ``XRANGE`` reads it in position order, ``XREAD BLOCK``
  follows it live. Each event is stored twice (stream list + log) so that both reads are one command.

The envelope is msgpack ``[type_name, timestamp, metadata, body]``; ``body`` is the event encoded by the
store's :class:`~catga.serialization.TypeRegistry` (JSON by default).

``append`` runs one script that checks the expected version against ``LLEN``, takes positions with
``INCRBY``, ``XADD``\\ s to the log and ``RPUSH``\\ es to the stream, all atomically on the server — the
client never reads then writes. A conflict returns the actual version and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import msgspec

from catga._payload import DEFAULT_MAX_PAYLOAD, check_max_payload
from catga.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    PayloadTooLargeError,
    SerializationError,
)
from catga.protocols import ANY, NO_STREAM, StoredEvent, validate_identifier
from catga.redis._base import RedisStoreBase
from catga.redis.connection import DEFAULT_URL, RedisClient, Script
from catga.serialization import TypeRegistry, default_registry

__all__ = ("RedisEventStore",)

logger = logging.getLogger("catga.redis.event_store")

_APPEND = Script(
    """
local cur = redis.call('LLEN', KEYS[1]) - 1
local exp = tonumber(ARGV[1])
if exp ~= -2 and exp ~= cur then return {0, cur} end
local n = #ARGV - 2
if n == 0 then return {1, cur} end
local pos = redis.call('INCRBY', KEYS[2], n) - n
local recs = {}
for i = 1, n do
  pos = pos + 1
  local p = string.format('%d', pos)
  local env = ARGV[i + 2]
  recs[i] = p .. '|' .. env
  redis.call('XADD', KEYS[3], p .. '-0', 's', ARGV[2], 'v', string.format('%d', cur + i), 'e', env)
end
for i = 1, n, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(recs, i, math.min(i + 999, n)))
end
return {1, cur + n}
""",
    "event-store-append",
)

_BATCH = 512
_BLOCK_MS = 5000
_RETRY_MAX = 2.0

_encode_envelope = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(tuple[str, float, dict[str, str], bytes]).decode


class RedisEventStore(RedisStoreBase):
    """Event streams in Redis with atomic, optimistically concurrent appends.

    Implements :class:`~catga.protocols.EventStore`.

    Args:
        client: the :class:`~catga.redis.RedisClient` to use; keys live under its prefix.
        registry: types allowed in the store (default :func:`~catga.serialization.default_registry`).
        owns_client: close ``client`` in :meth:`aclose` (set by :meth:`connect`).
        max_payload: the largest encoded event accepted, in bytes (default 1 MiB, as on the other
            backends); a larger one raises :class:`~catga.errors.PayloadTooLargeError`, nothing stored.

    Example:
        >>> store = RedisEventStore.connect("redis://127.0.0.1:6379/0", prefix="shop")  # doctest: +SKIP
        >>> await store.append("order-1", [OrderPlaced("order-1", 42)], NO_STREAM)  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        registry: TypeRegistry | None = None,
        owns_client: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        super().__init__(client, owns_client=owns_client)
        self._registry = registry if registry is not None else default_registry()
        self.max_payload = check_max_payload(max_payload)
        layout = client.layout
        self._stream_prefix = layout.per_id("es:s")[0]
        self._pos_key = layout.fixed("es:pos")
        self._log_key = layout.fixed("es:log")
        self._blockers: set[RedisClient] = set()
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "catga",
        registry: TypeRegistry | None = None,
        timeout: float | None = 5.0,
    ) -> RedisEventStore:
        """A store with its own client for ``url`` (closed by :meth:`aclose`)."""
        client = RedisClient.from_url(url, prefix=prefix, timeout=timeout)
        return cls(client, registry=registry, owns_client=True)

    # -- writes ----------------------------------------------------------------------------------
    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` to ``stream_id`` atomically; return the new stream version.

        Args:
            stream_id: a valid identifier (:func:`~catga.protocols.validate_identifier`).
            events: the events; an empty sequence stores nothing and returns the current version.
            expected_version: :data:`~catga.protocols.ANY`, :data:`~catga.protocols.NO_STREAM` or the
                exact current version.
            metadata: string metadata stored with each event.

        Raises:
            ConcurrencyError: the stream's version is not ``expected_version``; nothing was stored.
            InvalidIdentifierError: ``stream_id`` is malformed.
            SerializationError: an event does not encode (nothing was stored).
            PayloadTooLargeError: an encoded event is over ``max_payload`` (nothing was stored).
            BackendUnavailableError, BackendTimeoutError: Redis failed; the append may or may not
                have happened (re-read the stream to find out).
        """
        validate_identifier(stream_id)
        if type(expected_version) is not int or expected_version < ANY:
            raise ConfigurationError(
                f"invalid expected_version {expected_version!r} for stream {stream_id!r}: use ANY, "
                "NO_STREAM or a version >= 0"
            )
        ts = time.time()
        meta = dict(metadata) if metadata else {}
        encode = self._registry.encode
        envelopes: list[bytes] = []
        for event in events:
            try:
                name, body = encode(event)
            except SerializationError:
                raise
            except (TypeError, ValueError) as exc:  # msgspec refusing the type at registration
                raise SerializationError(f"cannot encode {type(event).__qualname__}: {exc}") from exc
            if len(body) > self.max_payload:
                raise PayloadTooLargeError(
                    len(body), self.max_payload, destination=stream_id, backend="redis", what="event"
                )
            envelopes.append(_encode_envelope((name, ts, meta, body)))
        ok, version = await self._client.run_script(
            _APPEND,
            (self._stream_prefix + stream_id, self._pos_key, self._log_key),
            (expected_version, stream_id, *envelopes),
        )
        if not ok:
            raise ConcurrencyError(
                stream_id, "NO_STREAM" if expected_version == NO_STREAM else expected_version, version
            )
        return int(version)

    # -- reads -----------------------------------------------------------------------------------
    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """Events of one stream with ``version >= from_version``, oldest first, at most ``max_count``.

        One ``LRANGE``. An unknown stream reads as ``[]``.

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
            ConfigurationError: ``max_count`` is negative.
            SerializationError: a stored event's type is not in the registry, or its bytes are malformed.
        """
        validate_identifier(stream_id)
        start = from_version if from_version > 0 else 0
        if max_count is None:
            stop = -1
        elif max_count < 0:
            raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
        elif max_count == 0:
            return []
        else:
            stop = start + max_count - 1
        records = await self._client.execute("LRANGE", self._stream_prefix + stream_id, start, stop)
        decode = self._registry.decode
        out: list[StoredEvent] = []
        version = start
        for rec in records:
            cut = rec.index(b"|")
            name, ts, meta, body = _decode_envelope(rec[cut + 1 :])
            out.append(StoredEvent(stream_id, version, int(rec[:cut]), name, decode(name, body), ts, meta))
            version += 1
        return out

    async def version(self, stream_id: str) -> int:
        """The stream's current version (``LLEN - 1``), -1 when it has no event.

        Raises:
            InvalidIdentifierError: ``stream_id`` is malformed.
        """
        validate_identifier(stream_id)
        length: int = await self._client.execute("LLEN", self._stream_prefix + stream_id)
        return length - 1

    async def last_position(self) -> int:
        """Position of the newest event, 0 when the store is empty."""
        value = await self._client.execute("GET", self._pos_key)
        return int(value) if value is not None else 0

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of every stream with ``position >= from_position``, in position order (one ``XRANGE``).

        Raises:
            ConfigurationError: ``max_count`` is negative.
        """
        start = f"{from_position if from_position > 1 else 1}-0"
        if max_count is None:
            entries = await self._client.execute("XRANGE", self._log_key, start, "+")
        elif max_count < 0:
            raise ConfigurationError(f"max_count must be >= 0 or None, got {max_count}")
        elif max_count == 0:
            return []
        else:
            entries = await self._client.execute("XRANGE", self._log_key, start, "+", "COUNT", max_count)
        return self._decode_log(entries)

    def _decode_log(self, entries: list[Any]) -> list[StoredEvent]:
        decode = self._registry.decode
        out: list[StoredEvent] = []
        for entry_id, fields in entries:
            name, ts, meta, body = _decode_envelope(fields[5])
            out.append(
                StoredEvent(
                    fields[1].decode(),
                    int(fields[3]),
                    int(entry_id[:-2]),
                    name,
                    decode(name, body),
                    ts,
                    meta,
                )
            )
        return out

    # -- subscription ----------------------------------------------------------------------------
    async def subscribe_all(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Yield every event from ``from_position`` on: stored ones (``XRANGE``), then live (``XREAD BLOCK``).

        Live reads use a dedicated connection, closed when the iterator is closed (``aclose()``), its
        task cancelled, or the store closed (which ends the iterator). A lost connection is retried
        with backoff from the last position yielded, so no event is skipped or repeated.
        """
        position = from_position if from_position > 1 else 1
        while True:  # catch up on the shared connection
            batch = await self.read_all(position, _BATCH)
            for event in batch:
                yield event
            if batch:
                position = batch[-1].position + 1
            if len(batch) < _BATCH:
                break
        blocker = self._client.clone(client_name=f"catga-subscribe-all:{self._client.prefix}")
        self._blockers.add(blocker)
        last_id = f"{position - 1}-0"
        retry = 0.05
        timeout = _BLOCK_MS / 1000 + (self._client.timeout or 5.0)
        try:
            while not self._closed:
                try:
                    reply = await blocker.execute(
                        "XREAD", "COUNT", _BATCH, "BLOCK", _BLOCK_MS, "STREAMS", self._log_key, last_id,
                        timeout=timeout,
                    )  # fmt: skip
                except (BackendUnavailableError, BackendTimeoutError) as exc:
                    if self._closed:
                        return
                    logger.warning("subscribe_all: %s; retrying in %.2f s", exc, retry)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue  # the client reconnects on the next call
                retry = 0.05
                if reply is None:
                    continue
                entries = reply[0][1]
                for event in self._decode_log(entries):
                    yield event
                last_id = entries[-1][0]
        finally:
            self._blockers.discard(blocker)
            await blocker.aclose()

    # -- lifecycle -------------------------------------------------------------------------------
    def _reopen(self) -> None:
        self._closed = False

    async def _close(self) -> None:
        """End live subscriptions (before an owned client is closed)."""
        self._closed = True
        for blocker in list(self._blockers):
            await blocker.aclose()
