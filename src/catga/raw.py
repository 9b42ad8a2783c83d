"""Raw reads: any event store's streams and global log, without registering a single type.

Open a store with a :class:`RawRegistry` and every event reads with a :class:`RawEvent` as its
``data``: the wire type name, the stored body untouched, and its decoding as plain JSON data (dicts,
lists, strings, numbers). Nothing is appended through such a store (:class:`RawRegistry` encodes
nothing), and no user class is ever instantiated from stored bytes::

    store = RedisEventStore.connect(url, prefix="shop", registry=RawRegistry())
    for stored in await store.read_all(1, 10):
        print(stored.position, stored.type_name, stored.data.decoded(), stored.metadata)

:func:`open_raw_store` does the same from an application's store URL (what ``catga tail`` runs). The
``format`` is the application registry's (``json`` by default, ``msgpack``): it decides how a NATS
store's multi-event messages are framed; bodies are sniffed either way.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from catga.errors import ConfigurationError, SerializationError
from catga.protocols import EventStore
from catga.serialization import Codec, Format, TypeRegistry

__all__ = ("RawEvent", "RawRegistry", "last_position", "open_raw_store")

_json = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Decoder()


class RawEvent(msgspec.Struct, frozen=True):
    """An event as stored, undecoded: what a raw read puts in ``StoredEvent.data``.

    Attributes:
        type_name: the wire type name.
        body: the stored bytes, untouched.
        format: ``"json"`` or ``"msgpack"`` when the body parses as one (JSON tried first), else ``""``.
    """

    type_name: str
    body: bytes
    format: str

    def decoded(self) -> Any:
        """The body as plain data (dicts, lists, str, numbers...).

        Raises:
            SerializationError: the body is neither JSON nor msgpack.
        """
        if self.format == "json":
            return _json.decode(self.body)
        if self.format == "msgpack":
            return _msgpack.decode(self.body)
        raise SerializationError(
            f"the body of a {self.type_name!r} event ({len(self.body)} bytes) is neither JSON nor msgpack"
        )


def _sniff(data: bytes) -> str:
    try:
        _json.decode(data)
        return "json"
    except msgspec.DecodeError:
        pass
    try:
        _msgpack.decode(data)
        return "msgpack"
    except msgspec.DecodeError:
        return ""


class RawRegistry(TypeRegistry):
    """A registry that decodes every type name to a :class:`RawEvent` and encodes nothing.

    Args:
        format: the application's serialization format (how a NATS store frames several events of
            one append); bodies are sniffed regardless.
    """

    def __init__(self, format: Format = "json") -> None:
        super().__init__(format)

    def decode(self, name: str, data: bytes | bytearray | memoryview) -> Any:
        """A :class:`RawEvent` of ``data`` (never fails)."""
        body = bytes(data)
        return RawEvent(name, body, _sniff(body))

    def codec_for(self, cls: type) -> Codec:
        """Refused: a raw store is read-only.

        Raises:
            ConfigurationError: always.
        """
        raise ConfigurationError(
            f"a raw reader cannot store {cls.__qualname__} events; open the store with the app's registry"
        )

    def __contains__(self, item: object) -> bool:
        return True


async def last_position(store: EventStore) -> int | None:
    """The newest global position of ``store`` when it tells it (a ``last_position`` method or
    property, as the memory, Redis, NATS and PostgreSQL stores have), else None."""
    value: Any = getattr(store, "last_position", None)
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value if isinstance(value, int) else None


@asynccontextmanager
async def open_raw_store(
    url: str, *, format: Format = "json", timeout: float = 5.0
) -> AsyncIterator[EventStore]:
    """The event store an application's store URL names, reading raw (see the module docs).

    Args:
        url: the app's store URL (``nats://...``, ``redis://...`` with its ``?prefix=``,
            ``postgresql://...``).
        format: the app registry's format (``json`` or ``msgpack``).
        timeout: seconds for connecting and for each call.

    Raises:
        ConfigurationError: a ``memory://`` URL (those events live in their process), or a bad URL.
        BackendUnavailableError: the server cannot be reached.
    """
    from catga.backends import Backends, parse_url

    spec = parse_url(url, "store")
    if spec.backend == "memory":
        raise ConfigurationError(
            "an in-memory event store lives in its process: give the app's nats://, redis:// or "
            "postgresql:// store URL"
        )
    backends = Backends(name="catga-raw-reader", registry=RawRegistry(format), timeout=timeout)
    try:
        store: EventStore = await backends.opened("store", spec)
        yield store
    finally:
        for _, close in backends.closers():
            await close()
