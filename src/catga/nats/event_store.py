# Over 500 lines: one class whose appends (an inlined hot path, conflict settlement, ANY) and reads (a
# binary search from a version, the leader catch-up) share one per-stream cache of (version, sequence).
# The message layout of an append lives in _event_format, the JetStream API calls in _jsapi.
"""An event store on one JetStream stream, with optimistic concurrency enforced by the server.

Layout (see ``docs/nats.md``):
    * one stream (default ``CATGA_EVENTS``) with subjects ``<prefix>.>`` (default ``catga.events.>``),
      ``allow_direct`` on, no limits;
    * each event stream id maps to exactly one subject ``<prefix>.<token>`` where the token is made by
      :func:`~catga.nats._subjects.subject_token` (``.`` and other specials escaped as ``=XX``), so no
      id can address another stream's subject or a wildcard;
    * one append = one NATS message, so a multi-event append is atomic: a single event is stored as its
      encoded body with a ``Catga-Type`` header; several events as an envelope (a JSON or msgpack array
      of ``{"type", "data"}``) with ``Catga-Count``. Headers ``Catga-Version`` (first version),
      and optionally ``Catga-Metadata`` (JSON object) complete it. The timestamp of stored events is the
      server's (``Nats-Time-Stamp``): one per message, so shared by the events of one append.

Concurrency: every append carries ``Nats-Expected-Last-Subject-Sequence``, so the server stores it only
if the subject's last message is the one the client based its version on (``0`` = no message =
:data:`~catga.protocols.NO_STREAM`). The store keeps a per-stream cache of (version, last sequence),
updated from acks and reads; when the cache is missing or disagrees, it reads the subject's last message
from the stream *leader* (``STREAM.MSG.GET``: a direct get may be answered by a follower of a replicated
stream that has not applied the latest message yet). A rejected append (JetStream error 10071 "wrong
last sequence", or 10164, which a clustered stream returns when an earlier message of the same subject
is still being replicated and it cannot check) is settled against the leader: the append raises
:class:`~catga.errors.ConcurrencyError` only when the stream really is at another version, and is sent
again otherwise (until the store's ``timeout``). :data:`~catga.protocols.ANY` appends to one stream
are serialised per store object and sent expecting the last known message; a rejection re-reads the
leader and sends again, without limit on attempts but within ``timeout`` without landing (then
:class:`~catga.errors.BackendTimeoutError`) -- never a ``ConcurrencyError``, and still checked by the
server, so versions stay contiguous with concurrent writers in other processes.

Positions: ``position = stream_sequence * 1024 + index_in_message`` -- strictly increasing, gaps
allowed, >= 1024; hence at most :data:`MAX_EVENTS_PER_APPEND` events per append.

Reads use (batch) direct get -- never a consumer. :meth:`NatsEventStore.subscribe_all` uses one ordered
consumer (ephemeral, in-memory, deleted on close). A read from a version (after a snapshot, say) does not
page through the stream's older messages: from :data:`SEARCH_FROM_VERSION` on, it reads the subject's
last message, then finds the first message to read by a binary search over sequences (one direct get
per step, about ``log2(stream sequence)`` steps).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from catga.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ConcurrencyError,
    ConfigurationError,
    SerializationError,
)
from catga.nats._base import NatsStoreBase, check_name
from catga.nats._errors import timeout_error, translate_errors
from catga.nats._event_format import (
    APPEND_HEADERS,
    MAX_EVENTS_PER_APPEND,
    POSITION_SHIFT,
    EventFormat,
    encode_error,
    last_version,
)
from catga.nats._jsapi import (
    StreamMessage,
    ack_decoder,
    decode_ack,
    direct_last,
    direct_next,
    iter_direct,
    leader_last,
    leader_next,
)
from catga.nats._subjects import subject_token
from catga.nats.connection import STORES_SERVER, LazyInit, NatsConnection
from catga.protocols import ANY, NO_STREAM, StoredEvent
from catga.serialization import TypeRegistry, default_registry

__all__ = ("MAX_EVENTS_PER_APPEND", "POSITION_SHIFT", "SEARCH_FROM_VERSION", "NatsEventStore")

#: Reads from this version on locate their first message by binary search instead of paging from the
#: stream's first message (about two batch pages of one-event messages cost as much as the search).
SEARCH_FROM_VERSION = 512
#: Longest pause (seconds) between two sends of a rejected append while the stream leader still reports
#: the expected version (an earlier message of the subject being replicated: 10164).
_RETRY_PAUSE_MAX = 0.05

_IDLE_POLL = 1.0
_STREAM_CHECK = (
    "subjects",
    "storage",
    "retention",
    "allow_direct",
    "max_msgs_per_subject",
    "max_msgs",
    "max_bytes",
    "max_age",
)


class _State:
    """Cached per-stream knowledge: its subject, last version and last subject sequence (-1: unknown),
    and the lock serialising this store's ``ANY`` appends to the stream (created on first use)."""

    __slots__ = ("any_lock", "seq", "subject", "version")

    def __init__(self, subject: bytes) -> None:
        self.subject = subject
        self.version = -1
        self.seq = -1
        self.any_lock: asyncio.Lock | None = None


class NatsEventStore(NatsStoreBase):
    """:class:`~catga.protocols.EventStore` on NATS JetStream.

    Args:
        source: a :class:`~catga.nats.NatsConnection` or a connected nats-py client.
        stream: the JetStream stream name.
        prefix: the subject prefix; the stream holds ``<prefix>.>``.
        registry: the types allowed to be stored and decoded (default: the process-wide registry).
        storage: ``"file"`` (default) or ``"memory"``.
        replicas: stream replicas (3 on a 3-node cluster for durability).
        timeout: seconds per network call (default: the connection's), stream checks and creation
            included; also how long a rejected append whose expected version still holds is retried.
        max_cached_streams: how many streams' (version, sequence) to remember.

    Example:
        >>> store = await NatsEventStore.connect("nats://127.0.0.1:4222", registry=registry)  # doctest: +SKIP
        >>> await store.append("order-1", [OrderPlaced("order-1", 42)], expected_version=NO_STREAM)
        0
    """

    _needs = (STORES_SERVER, "batch direct get")

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        stream: str = "CATGA_EVENTS",
        prefix: str = "catga.events",
        registry: TypeRegistry | None = None,
        storage: str = "file",
        replicas: int = 1,
        timeout: float | None = None,
        max_cached_streams: int = 100_000,
    ) -> None:
        check_name(stream, "stream name")
        check_name(prefix, "subject prefix", dotted=True)
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', got {storage!r}")
        super().__init__(source, timeout=timeout)
        self.stream = stream
        self.prefix = prefix
        self.storage = storage
        self._registry = registry or default_registry()
        self._config = StreamConfig(
            name=stream,
            subjects=[f"{prefix}.>"],
            storage=StorageType(storage),
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            allow_direct=True,
            max_msgs_per_subject=-1,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
        )
        self._direct = f"{self._conn.api_prefix}.DIRECT.GET.{stream}".encode()
        self._msg_get = f"{self._conn.api_prefix}.STREAM.MSG.GET.{stream}".encode()
        self._states: dict[str, _State] = {}
        self._max_states = max_cached_streams
        self._format = EventFormat(self._registry, stream, prefix)
        self._fast = self._format.fast  # read by the append hot path
        self._decode = self._format.decode
        self._init = LazyInit(self._create)
        self._created = False

    @property
    def registry(self) -> TypeRegistry:
        """The registry events are encoded and decoded with."""
        return self._registry

    async def _create(self) -> None:
        await self._conn.ensure_stream(self._config, _STREAM_CHECK, timeout=self._timeout)
        if self._created:  # initialised again (the stream may have been deleted): forget the cache
            self._states.clear()
        self._created = True
        if not self._wire.connected:
            await self._wire.connect()

    # -- helpers ---------------------------------------------------------------------------
    def _state(self, stream_id: str) -> _State:
        state = self._states.get(stream_id)
        if state is None:
            token = subject_token(stream_id)
            if len(self._states) >= self._max_states:
                del self._states[next(iter(self._states))]
            state = self._states[stream_id] = _State(f"{self.prefix}.{token}".encode())
        return state

    async def _refresh(self, stream_id: str, state: _State) -> None:
        """Read the subject's last message from the stream leader; set the cached version and sequence.

        The leader, not a direct get: on a replicated stream a direct get may be answered by a follower
        that has not applied the last acknowledged message yet, and a concurrency decision taken on that
        stale version would be wrong.
        """
        last = await leader_last(
            self._wire,
            self._msg_get,
            state.subject,
            timeout=self._timeout,
            operation=f"read the version of stream {stream_id!r}",
        )
        if last is None:
            state.version, state.seq = -1, 0
        else:
            state.version = last_version(last)
            state.seq = last.seq

    def _send(self, state: _State, version: int, last_seq: int, lines: bytes, body: bytes) -> Any:
        """Publish one append expecting ``last_seq``; return the future of its ack."""
        return self._wire.send(
            state.subject, body, APPEND_HEADERS % (last_seq, version, lines), self._timeout
        )

    @staticmethod
    def _stored(stream_id: str, state: _State, reply: Any, version: int, count: int) -> bool:
        """Check an append's ack; False when the server saw another last message (a conflict)."""
        hdr, data = reply
        if hdr is None:
            try:
                ack = ack_decoder.decode(data)
            except msgspec.DecodeError:
                ack = decode_ack(reply, f"append to stream {stream_id!r}")  # raises a BackendError
            if ack.error is not None:
                ack = decode_ack(reply, f"append to stream {stream_id!r}")  # raises unless a conflict
        else:
            ack = decode_ack(reply, f"append to stream {stream_id!r}")
        if ack.error is not None:
            return False
        if ack.seq > state.seq:
            state.seq = ack.seq
            state.version = version + count - 1
        return True

    # -- EventStore ------------------------------------------------------------------------
    async def append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int = ANY,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``events`` atomically; return the new stream version.

        With :data:`~catga.protocols.ANY` it never raises :class:`~catga.errors.ConcurrencyError`: it
        appends after whatever the stream holds, retrying a lost race within ``timeout``.

        Raises:
            ConcurrencyError: the stream leader reports a version other than ``expected_version``
                (nothing stored; ``actual_version`` is that version).
            InvalidIdentifierError: ``stream_id`` is invalid (before any I/O).
            SerializationError: an event cannot be encoded (nothing stored).
            ConfigurationError: more than :data:`MAX_EVENTS_PER_APPEND` events, or an invalid
                ``expected_version``.
            PayloadTooLargeError: a message larger than the server's ``max_payload`` (nothing stored).
            BackendUnavailableError: the server could not be reached (if the connection dropped while
                waiting for the ack, the outcome is unknown: read the version).
            BackendTimeoutError: no ack within the timeout (outcome unknown likewise), or the server
                kept rejecting the append for ``timeout`` seconds while the stream stayed at the expected
                version (or, for ``ANY``, while other writers kept appending first); nothing stored then.
        """
        # The hot path -- one event of an already seen type, no metadata, and the cache holds the stream
        # at exactly ``expected_version`` -- is one guard, one encode, one write, one await and one ack
        # decode in this coroutine (no nested coroutine). A cached version >= 0 always comes with the
        # sequence of the message that stored it (ack, leader get or read), so no sequence check.
        state = self._states.get(stream_id)
        if (
            state is not None
            and state.version == expected_version
            and expected_version >= 0
            and len(events) == 1
            and not metadata
            and self._init.ready
            and self._wire.connected
        ):
            event = events[0]
            fast = self._fast.get(type(event))
            if fast is not None:
                encode, lines = fast
                try:
                    body = encode(event)
                except SerializationError:
                    raise
                except (TypeError, ValueError, msgspec.EncodeError) as exc:
                    raise encode_error(event, exc) from exc
                version = expected_version + 1
                try:
                    reply = await self._wire.send(
                        state.subject, body, APPEND_HEADERS % (state.seq, version, lines), self._timeout
                    )
                    if reply[0] is None:  # a plain ack (no status headers)
                        try:
                            ack = ack_decoder.decode(reply[1])
                        except msgspec.DecodeError:
                            ack = None
                        if ack is not None and ack.error is None:
                            if ack.seq > state.seq:
                                state.seq = ack.seq
                                state.version = version
                            return version
                    if self._stored(stream_id, state, reply, version, 1):
                        return version
                    return await self._settle(stream_id, state, expected_version, lines, body, 1)
                except BackendUnavailableError:
                    self._init.reset()  # the stream may have been deleted: check it again on the next call
                    raise
        return await self._append(stream_id, events, expected_version, metadata, state)

    async def _append(
        self,
        stream_id: str,
        events: Sequence[object],
        expected_version: int,
        metadata: Mapping[str, str] | None,
        state: _State | None,
    ) -> int:
        """Every append but the hot path: validation, first use, several events, metadata, ANY."""
        if state is None:
            state = self._state(stream_id)
        if expected_version < ANY:
            raise ConfigurationError(
                f"invalid expected_version {expected_version!r}: use ANY, NO_STREAM or a version >= 0"
            )
        if not self._init.ready:
            await self._init()
        if not self._wire.connected:
            await self._wire.connect()
        count = len(events)
        if count == 1 and not metadata:
            event = events[0]
            encode, lines = self._format.single(event)
            try:
                body = encode(event)
            except SerializationError:
                raise
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                raise encode_error(event, exc) from exc
        elif count == 0:
            await self._refresh(stream_id, state)
            if expected_version != ANY and expected_version != state.version:
                raise ConcurrencyError(stream_id, expected_version, state.version)
            return state.version
        elif count > MAX_EVENTS_PER_APPEND:
            raise ConfigurationError(
                f"cannot append {count} events to stream {stream_id!r} at once: the NATS event store "
                f"stores one append as one message and allows at most {MAX_EVENTS_PER_APPEND}; split it"
            )
        else:
            lines, body = self._format.encode(events, metadata)
        try:
            if expected_version == ANY:
                return await self._append_any(stream_id, state, lines, body, count)
            if expected_version == NO_STREAM:
                last_seq = 0
            else:
                if state.seq < 0 or state.version != expected_version:
                    await self._refresh(stream_id, state)
                    if state.version != expected_version:
                        raise ConcurrencyError(stream_id, expected_version, state.version)
                last_seq = state.seq
            reply = await self._send(state, expected_version + 1, last_seq, lines, body)
            if not self._stored(stream_id, state, reply, expected_version + 1, count):
                return await self._settle(stream_id, state, expected_version, lines, body, count)
            return expected_version + count
        except BackendUnavailableError:
            self._init.reset()  # the stream may have been deleted: check it again on the next call
            raise

    async def _settle(
        self, stream_id: str, state: _State, expected: int, lines: bytes, body: bytes, count: int
    ) -> int:
        """The server rejected an append expecting version ``expected``: conflict, or send it again.

        A rejection is a conflict only if the stream leader reports another version. If it reports
        ``expected``, the server could not check (10164: an earlier message of the subject was still
        being replicated) or the cache held another sequence: send again with the leader's sequence,
        pausing a little while the leader's answer does not move, until the store's timeout.

        Raises:
            ConcurrencyError: the stream is at another version (its actual version attached).
            BackendTimeoutError: still rejected after ``timeout`` seconds with the version unchanged.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        pause = 0.0
        attempts = 1
        while True:
            await self._refresh(stream_id, state)
            if state.version != expected:
                raise ConcurrencyError(stream_id, expected, state.version)
            if loop.time() >= deadline:
                raise timeout_error(
                    f"append to stream {stream_id!r} (rejected {attempts} times while the stream "
                    f"leader reported the expected version {expected})",
                    self._timeout,
                )
            if pause:
                await asyncio.sleep(pause)
            pause = min(max(2 * pause, 0.001), _RETRY_PAUSE_MAX)
            reply = await self._send(state, expected + 1, state.seq, lines, body)
            if self._stored(stream_id, state, reply, expected + 1, count):
                return expected + count
            attempts += 1

    async def _append_any(self, stream_id: str, state: _State, lines: bytes, body: bytes, count: int) -> int:
        """Append whatever the version: never a ConcurrencyError, versions contiguous.

        This store's ANY appends to one stream take turns (a lock per stream), so they never race each
        other; each is sent expecting the last message known, and a rejection (another process appended,
        or 10164) re-reads the leader and sends again. It gives up only when ``timeout`` seconds pass
        without landing.

        Raises:
            BackendTimeoutError: it did not land within the store's timeout (other writers kept winning,
                or the server kept rejecting).
        """
        lock = state.any_lock
        if lock is None:
            lock = state.any_lock = asyncio.Lock()
        async with lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            pause = 0.0
            attempts = 0
            while True:
                if state.seq < 0:
                    await self._refresh(stream_id, state)
                version = state.version + 1
                reply = await self._send(state, version, state.seq, lines, body)
                if self._stored(stream_id, state, reply, version, count):
                    return version + count - 1
                attempts += 1
                await self._refresh(stream_id, state)
                if loop.time() >= deadline:
                    raise timeout_error(
                        f"append to stream {stream_id!r} with ANY ({attempts} attempts rejected: other "
                        "writers kept appending first, or the server could not check)",
                        self._timeout,
                    )
                if state.version + 1 == version:  # the leader did not move: 10164, wait for replication
                    await asyncio.sleep(pause)
                    pause = min(max(2 * pause, 0.001), _RETRY_PAUSE_MAX)
                else:
                    pause = 0.0

    async def _messages(
        self, start: int, subject: str, operation: str
    ) -> AsyncGenerator[StreamMessage, None]:
        async with contextlib.aclosing(
            iter_direct(
                self._wire,
                self._direct,
                start=start,
                subject=subject,
                timeout=self._timeout,
                operation=operation,
            )
        ) as messages:
            async for message in messages:
                yield message

    async def read(
        self, stream_id: str, from_version: int = 0, max_count: int | None = None
    ) -> list[StoredEvent]:
        """Events of ``stream_id`` with ``version >= from_version``, oldest first, at most ``max_count``.

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid.
            UnknownMessageTypeError / SerializationError: a stored event cannot be decoded.
        """
        state = self._state(stream_id)
        if not self._init.ready:
            await self._init()
        if not self._wire.connected:
            await self._wire.connect()
        out: list[StoredEvent] = []
        if max_count is not None and max_count <= 0:
            return out
        last: StreamMessage | None = None
        subject = state.subject.decode()
        operation = f"read stream {stream_id!r}"
        start = await self._first_seq(state, subject, from_version, operation)
        if start is None:
            return out
        async with contextlib.aclosing(self._messages(start, subject, operation)) as messages:
            async for message in messages:
                last = message
                if self._collect(message, stream_id, from_version, max_count, out):
                    return out
        seen = last.seq if last is not None else start - 1
        if state.seq > seen:
            # This store knows of a later message (its own ack, or a leader read) than the replica that
            # answered the direct gets had applied: fetch the rest from the leader, so a store always
            # reads what it wrote and what version() showed it.
            while True:
                missed = await leader_next(
                    self._wire,
                    self._msg_get,
                    seen + 1,
                    state.subject,
                    timeout=self._timeout,
                    operation=operation,
                )
                if missed is None:
                    break
                last, seen = missed, missed.seq
                if self._collect(missed, stream_id, from_version, max_count, out):
                    return out
        if last is not None and last.seq > state.seq:  # read to the end: remember where the stream is
            state.seq = last.seq
            state.version = last_version(last)
        return out

    def _collect(
        self,
        message: StreamMessage,
        stream_id: str,
        from_version: int,
        max_count: int | None,
        out: list[StoredEvent],
    ) -> bool:
        """Add ``message``'s events from ``from_version`` on to ``out``; True once ``max_count`` are in."""
        if last_version(message) < from_version:
            return False
        for event in self._decode(message, stream_id):
            if event.version >= from_version:
                out.append(event)
                if max_count is not None and len(out) >= max_count:
                    return True
        return False

    async def _first_seq(self, state: _State, subject: str, from_version: int, operation: str) -> int | None:
        """The sequence to page from for events ``>= from_version``; None: the stream has none."""
        if from_version < SEARCH_FROM_VERSION:
            return 1
        last = await direct_last(
            self._wire, self._direct, state.subject, timeout=self._timeout, operation=operation
        )
        if last is None or last.seq < state.seq:  # a replica behind what this store knows: ask the leader
            last = await leader_last(
                self._wire, self._msg_get, state.subject, timeout=self._timeout, operation=operation
            )
        if last is None:
            return None
        end = last_version(last)
        if last.seq > state.seq:
            state.seq, state.version = last.seq, end
        if end < from_version:
            return None
        # Versions grow with sequences on one subject: find the first message ending at or after
        # from_version. `direct_next(mid)` is the subject's first message at or after `mid`, so when it
        # qualifies no message of the subject lies in [mid, its seq) and the answer is it or before mid.
        found, lo, hi = last.seq, 1, last.seq - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            probe = await direct_next(
                self._wire, self._direct, mid, subject, timeout=self._timeout, operation=operation
            )
            if probe is None or probe.seq >= found:  # nothing new between mid and the best so far
                hi = mid - 1
            elif last_version(probe) < from_version:
                lo = probe.seq + 1
            else:
                found, hi = probe.seq, mid - 1
        return found

    async def version(self, stream_id: str) -> int:
        """The stream's current version (-1 when empty), read from the stream leader.

        On a replicated stream the leader has every acknowledged append, so the version returned is at
        least that of any append acknowledged before the call (whichever store or process made it).

        Raises:
            InvalidIdentifierError: ``stream_id`` is invalid.
        """
        state = self._state(stream_id)
        if not self._init.ready:
            await self._init()
        try:
            await self._refresh(stream_id, state)
        except BackendUnavailableError:
            self._init.reset()  # the stream may have been deleted: check it again on the next call
            raise
        return state.version

    async def last_position(self) -> int:
        """Position of the newest event, 0 when the store is empty, without reading the log: the
        stream's last message as the stream leader has it (one request), its sequence and event count.

        What a projection runner's lag and ``catga tail --follow`` start from.
        """
        if not self._init.ready:
            await self._init()
        try:
            last = await leader_last(
                self._wire,
                self._msg_get,
                f"{self.prefix}.>".encode(),
                timeout=self._timeout,
                operation=f"read the last position of stream {self.stream!r}",
            )
        except BackendUnavailableError:
            self._init.reset()  # the stream may have been deleted: check it again on the next call
            raise
        if last is None:
            return 0
        return last.seq << POSITION_SHIFT | (int(last.headers.get("Catga-Count", "1")) - 1)

    async def read_all(self, from_position: int = 1, max_count: int | None = None) -> list[StoredEvent]:
        """Events of all streams with ``position >= from_position``, in position order."""
        if not self._init.ready:
            await self._init()
        out: list[StoredEvent] = []
        if max_count is not None and max_count <= 0:
            return out
        start = max(1, from_position >> POSITION_SHIFT)
        operation = f"read all events of stream {self.stream!r}"
        async with contextlib.aclosing(self._messages(start, f"{self.prefix}.>", operation)) as messages:
            async for message in messages:
                for event in self._decode(message):
                    if event.position >= from_position:
                        out.append(event)
                        if max_count is not None and len(out) >= max_count:
                            return out
        return out

    async def subscribe_all(self, from_position: int = 1) -> AsyncGenerator[StoredEvent, None]:
        """Catch up from ``from_position``, then yield new events live, in position order, forever.

        Uses one ordered consumer (ephemeral, in memory), deleted when the iterator is closed or the
        consuming task is cancelled.
        """
        if not self._init.ready:
            await self._init()
        start = max(1, from_position >> POSITION_SHIFT)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        with translate_errors(f"subscribe to stream {self.stream!r}", self._timeout):
            sub = await self._conn.js.subscribe(
                f"{self.prefix}.>", stream=self.stream, ordered_consumer=True, config=config
            )
        try:
            while True:
                try:
                    with translate_errors(f"receive from stream {self.stream!r}", _IDLE_POLL):
                        msg = await sub.next_msg(timeout=_IDLE_POLL)
                except BackendTimeoutError:
                    continue  # idle: nothing new yet
                meta = msg.metadata
                message = StreamMessage(
                    seq=meta.sequence.stream,
                    subject=msg.subject,
                    headers=dict(msg.headers or {}),
                    data=msg.data,
                    time=meta.timestamp.timestamp(),
                )
                for event in self._decode(message):
                    if event.position >= from_position:
                        yield event
        finally:
            # best effort and time-limited; an abandoned consumer is removed by the server anyway
            consumer = getattr(sub, "_consumer", None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), self._timeout)
            if consumer:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._conn.js.delete_consumer(self.stream, consumer), self._timeout
                    )
