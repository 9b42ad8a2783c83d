"""How :class:`~catga.nats.NatsEventStore` stores one append as one NATS message, both ways.

::

    one event     body: the encoded event          headers: Catga-Type: <wire name>
    several       body: [[type, data], ...]        headers: Catga-Count: <n>
                  (JSON or msgpack, as the registry's format)
    always        Catga-Version: <first version>   optional Catga-Metadata: <JSON object>
    on append     Nats-Expected-Last-Subject-Sequence: <the subject's last sequence known>

A stored event's position is ``stream sequence << POSITION_SHIFT | index in the message``; its timestamp
is the server's (``Nats-Time-Stamp``), shared by the events of one append.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from catga.errors import SerializationError
from catga.nats._jsapi import StreamMessage
from catga.nats._subjects import token_to_identifier
from catga.protocols import StoredEvent
from catga.serialization import TypeRegistry

__all__ = (
    "APPEND_HEADERS",
    "MAX_EVENTS_PER_APPEND",
    "POSITION_SHIFT",
    "EventFormat",
    "encode_error",
    "last_version",
)

#: ``position = sequence << POSITION_SHIFT | index``.
POSITION_SHIFT = 10
#: Events per append (one NATS message holds them all).
MAX_EVENTS_PER_APPEND = 1 << POSITION_SHIFT
#: An append's header block: expected last subject sequence, first version, then the event lines.
APPEND_HEADERS = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\nCatga-Version: %d\r\n%b\r\n"

_seconds: dict[str, int] = {}


def _server_time(stamp: str) -> float:
    """Parse ``Nats-Time-Stamp`` (RFC 3339 in UTC, e.g. ``2026-01-02T03:04:05.123456789Z``) to unix seconds.

    The whole seconds are cached per distinct value, so a batch of messages costs little.
    """
    base, dot, fraction = stamp.partition(".")
    if dot:
        fraction = fraction.rstrip("Z")
        base += "Z"
    seconds = _seconds.get(base)
    if seconds is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        seconds = _seconds[base] = int(datetime.datetime.fromisoformat(base).timestamp())
    return seconds + int(fraction) / 10 ** len(fraction) if fraction else float(seconds)


def encode_error(event: object, exc: Exception) -> SerializationError:
    """The error to raise when encoding ``event`` failed with ``exc``."""
    return SerializationError(f"cannot encode {type(event).__qualname__}: {exc}")


def last_version(message: StreamMessage) -> int:
    """The version of the last event stored in ``message`` (one append)."""
    headers = message.headers
    return int(headers.get("Catga-Version", "0")) + int(headers.get("Catga-Count", "1")) - 1


class _Item(msgspec.Struct, array_like=True):
    type: str
    data: msgspec.Raw


class EventFormat:
    """Encodes appends and decodes stored messages of one event store (stream ``stream``, subjects
    ``<prefix>.<token>``) with its registry.

    Attributes:
        fast: per event type, ``(encode function, Catga-Type header line)`` (see :meth:`single`); the
            store's append hot path reads it directly.
    """

    def __init__(self, registry: TypeRegistry, stream: str, prefix: str) -> None:
        self.registry = registry
        self.stream = stream
        self.prefix = prefix
        self.fast: dict[type, tuple[Any, bytes]] = {}
        self._subject_start = len(prefix) + 1
        self._type_headers: dict[str, bytes] = {}
        binary = registry.format != "json"
        self._envelope_encode = msgspec.msgpack.encode if binary else msgspec.json.encode
        self._envelope_decoder: Any = (
            msgspec.msgpack.Decoder(list[_Item]) if binary else msgspec.json.Decoder(list[_Item])
        )

    def type_header(self, name: str) -> bytes:
        """The ``Catga-Type`` header line of wire name ``name``.

        Raises:
            SerializationError: the name holds a line break.
        """
        header = self._type_headers.get(name)
        if header is None:
            if "\r" in name or "\n" in name:
                raise SerializationError(f"message type name {name!r} contains a line break")
            header = self._type_headers[name] = f"Catga-Type: {name}\r\n".encode()
        return header

    def single(self, event: object) -> tuple[Any, bytes]:
        """(encode function, type header line) for a single event's type, cached per type in ``fast``.

        Raises:
            SerializationError: the type is not registered.
        """
        cls = type(event)
        fast = self.fast.get(cls)
        if fast is None:
            try:
                codec = self.registry.codec_for(cls)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, SerializationError):
                    raise
                raise SerializationError(f"cannot encode {cls.__qualname__}: {exc}") from exc
            # the codec's own encoder when it has one (skips a wrapper frame; errors are translated by
            # the caller), else its public encode()
            encode = getattr(codec, "_encode", codec.encode)
            fast = self.fast[cls] = (encode, self.type_header(codec.name))
        return fast

    def encode(self, events: Sequence[object], metadata: Mapping[str, str] | None) -> tuple[bytes, bytes]:
        """Return (header lines without version/expectation, body) of an append.

        Raises:
            SerializationError: an event or the metadata cannot be encoded.
        """
        try:
            return self._encode(events, metadata)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"cannot encode the events: {exc}") from exc

    def _encode(self, events: Sequence[object], metadata: Mapping[str, str] | None) -> tuple[bytes, bytes]:
        registry = self.registry
        if len(events) == 1:
            event = events[0]
            codec = registry.codec_for(type(event))
            body = codec.encode(event)
            lines = self.type_header(codec.name)
        else:
            items = []
            for event in events:
                codec = registry.codec_for(type(event))
                items.append(_Item(codec.name, msgspec.Raw(codec.encode(event))))
            body = self._envelope_encode(items)
            lines = b"Catga-Count: %d\r\n" % len(events)
        if metadata:
            try:
                meta = msgspec.json.encode({str(k): str(v) for k, v in metadata.items()})
            except msgspec.EncodeError as exc:
                raise SerializationError(f"cannot encode event metadata: {exc}") from exc
            lines += b"Catga-Metadata: " + meta + b"\r\n"
        return lines, body

    def decode(self, message: StreamMessage, stream_id: str | None = None) -> list[StoredEvent]:
        """The events stored in ``message`` (of ``stream_id``; None: read from the subject).

        Raises:
            SerializationError: the message is not a catga event (or an event does not decode).
        """
        headers = message.headers
        try:
            first = int(headers["Catga-Version"])
            timestamp = message.time if message.time else _server_time(headers["Nats-Time-Stamp"])
            raw_meta = headers.get("Catga-Metadata")
            metadata: dict[str, str] = msgspec.json.decode(raw_meta, type=dict[str, str]) if raw_meta else {}
            if stream_id is None:
                stream_id = token_to_identifier(message.subject[self._subject_start :])
            type_name = headers.get("Catga-Type")
            if type_name is not None:
                items = [(type_name, message.data)]
            else:
                items = [(i.type, i.data) for i in self._envelope_decoder.decode(message.data)]
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise SerializationError(
                f"message {message.seq} on {message.subject!r} in NATS stream {self.stream!r} is not a "
                f"catga event ({exc}); only catga should publish to {self.prefix}.>"
            ) from exc
        base = message.seq << POSITION_SHIFT
        registry = self.registry
        return [
            StoredEvent(
                stream_id=stream_id,
                version=first + index,
                position=base | index,
                type_name=name,
                data=registry.decode(name, data),
                timestamp=timestamp,
                metadata=metadata,
            )
            for index, (name, data) in enumerate(items)
        ]
