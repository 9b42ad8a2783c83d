"""Serialization through a registry of allowed message types.

Only registered types are ever decoded (encoding registers a type on first use, which is safe: the
process already has the class; decoding never does): a type name that was never registered raises
:class:`~catga.errors.UnknownMessageTypeError`, malformed bytes raise
:class:`~catga.errors.SerializationError`. Nothing is ever unpickled.

Encoders and decoders are built once per type at registration (msgspec's typed decoders), so the hot path
is one dict lookup and one C call. msgspec Structs and dataclasses are handled natively; pydantic models
go through ``model_dump(mode="json")`` / ``model_validate``.

Formats: ``"json"`` (default, readable by any client) and ``"msgpack"`` (smaller, faster).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import msgspec

from catga.errors import ConfigurationError, SerializationError, UnknownMessageTypeError
from catga.messages import type_name

__all__ = ("Codec", "Format", "TypeRegistry", "default_registry")

Format = Literal["json", "msgpack"]
T = TypeVar("T")


class Codec:
    """Encoder/decoder pair for one type in one format, built once.

    Attributes:
        type: the message class.
        name: its wire name.
    """

    __slots__ = ("_decode", "_encode", "name", "type")

    def __init__(self, cls: type, name: str, fmt: Format) -> None:
        self.type = cls
        self.name = name
        if fmt == "json":
            enc: Any = msgspec.json.Encoder()
            raw_dec: Any = msgspec.json.Decoder()
        elif fmt == "msgpack":
            enc = msgspec.msgpack.Encoder()
            raw_dec = msgspec.msgpack.Decoder()
        else:
            raise ConfigurationError(f"unknown serialization format {fmt!r}; use 'json' or 'msgpack'")
        if hasattr(cls, "model_validate") and hasattr(cls, "model_dump"):  # pydantic v2
            validate = cls.model_validate
            encode = enc.encode
            decode = raw_dec.decode
            self._encode: Callable[[Any], bytes] = lambda m: encode(m.model_dump(mode="json"))
            self._decode: Callable[[Any], Any] = lambda b: validate(decode(b))
        else:
            typed: Any = msgspec.json.Decoder(cls) if fmt == "json" else msgspec.msgpack.Decoder(cls)
            self._encode = enc.encode
            self._decode = typed.decode

    def encode(self, message: Any) -> bytes:
        """Encode ``message`` to bytes.

        Raises:
            SerializationError: the value cannot be encoded.
        """
        try:
            return self._encode(message)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise SerializationError(f"cannot encode {self.name}: {exc}") from exc

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode bytes into an instance of the type.

        Raises:
            SerializationError: malformed bytes or a payload that does not fit the type.
        """
        try:
            return self._decode(data)
        except Exception as exc:  # msgspec.DecodeError, pydantic.ValidationError...
            raise SerializationError(
                f"cannot decode {self.name}: {exc}; the message is malformed or of another version"
            ) from exc


class TypeRegistry:
    """The set of message types allowed on the wire, with their codecs.

    Thread-safe: registration takes a lock; lookups read a dict that is replaced whole.

    Args:
        format: ``"json"`` (default) or ``"msgpack"``.
        types: types to register right away.
    """

    def __init__(self, format: Format = "json", types: Iterable[type] = ()) -> None:
        if format not in ("json", "msgpack"):
            raise ConfigurationError(f"unknown serialization format {format!r}; use 'json' or 'msgpack'")
        self.format: Format = format
        self._by_name: dict[str, Codec] = {}
        self._by_type: dict[type, Codec] = {}
        self._lock = threading.Lock()
        for t in types:
            self.register(t)

    def register(self, cls: type[T], name: str | None = None) -> type[T]:
        """Allow ``cls`` on the wire under ``name`` (default :func:`~catga.messages.type_name`).

        Registering the same type twice is a no-op; two types under one name is an error.

        Returns:
            ``cls``, so this works as a class decorator.

        Raises:
            ConfigurationError: the name is taken by another type.
        """
        wire = name or type_name(cls)
        with self._lock:
            existing = self._by_name.get(wire)
            if existing is not None:
                if existing.type is cls:
                    return cls
                raise ConfigurationError(
                    f"message name {wire!r} is used by both {existing.type.__qualname__} and "
                    f"{cls.__qualname__}; give one a distinct name with @message_name(...)"
                )
            codec = Codec(cls, wire, self.format)
            by_name = dict(self._by_name)
            by_name[wire] = codec
            by_type = dict(self._by_type)
            by_type[cls] = codec
            self._by_name, self._by_type = by_name, by_type
        return cls

    def __contains__(self, item: object) -> bool:
        return item in self._by_type or item in self._by_name

    def codec_for(self, cls: type) -> Codec:
        """The codec of a registered type; registers it on first use."""
        codec = self._by_type.get(cls)
        if codec is None:
            self.register(cls)
            codec = self._by_type[cls]
        return codec

    def codec_named(self, name: str) -> Codec:
        """The codec registered under ``name``.

        Raises:
            UnknownMessageTypeError: nothing is registered under that name.
        """
        codec = self._by_name.get(name)
        if codec is None:
            raise UnknownMessageTypeError(name)
        return codec

    def name_of(self, cls: type) -> str:
        """Wire name of ``cls`` (registering it if needed)."""
        return self.codec_for(cls).name

    def encode(self, message: object) -> tuple[str, bytes]:
        """Encode a message; returns ``(type_name, body)``."""
        codec = self.codec_for(type(message))
        return codec.name, codec.encode(message)

    def decode(self, name: str, data: bytes | bytearray | memoryview) -> Any:
        """Decode ``data`` as the type registered under ``name``.

        Raises:
            UnknownMessageTypeError: the name was never registered.
            SerializationError: the bytes are malformed.
        """
        return self.codec_named(name).decode(data)

    def types(self) -> tuple[type, ...]:
        """All registered types."""
        return tuple(self._by_type)


_default: TypeRegistry | None = None


def default_registry() -> TypeRegistry:
    """The process-wide JSON registry used when none is passed explicitly."""
    global _default
    if _default is None:
        _default = TypeRegistry()
    return _default
