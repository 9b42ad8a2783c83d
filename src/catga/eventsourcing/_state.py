"""Encoding of snapshot state and conversion of plain data into user types (private)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from catga.errors import SerializationError

__all__ = ("convert", "decode_json", "encode_json", "is_record")


def is_record(value: object) -> bool:
    """Whether ``value`` is an instance of a msgspec Struct, a dataclass or a pydantic model."""
    return (
        isinstance(value, msgspec.Struct)
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        or hasattr(type(value), "model_validate")
    )


def _enc_hook(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:  # pydantic v2
        return dump(mode="json")
    raise NotImplementedError(f"cannot encode objects of type {type(value).__qualname__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()


def encode_json(value: Any) -> bytes:
    """Encode any msgspec-encodable value (pydantic models included) as JSON.

    Raises:
        SerializationError: the value cannot be encoded.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, NotImplementedError, msgspec.EncodeError) as exc:
        raise SerializationError(f"cannot encode {type(value).__qualname__} as JSON: {exc}") from exc


def decode_json(data: bytes) -> Any:
    """Decode JSON into plain data (dicts, lists, str, numbers, bools, None).

    Raises:
        SerializationError: the bytes are not valid JSON.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"malformed JSON: {exc}") from exc


def convert(data: Any, cls: type[Any]) -> Any:
    """Convert plain decoded data into ``cls`` (a Struct, dataclass, pydantic model or builtin type).

    Raises:
        SerializationError: the data does not fit ``cls``.
    """
    try:
        validate = getattr(cls, "model_validate", None)
        if validate is not None:
            return validate(data)
        return msgspec.convert(data, cls)
    except Exception as exc:  # msgspec.ValidationError, pydantic.ValidationError...
        raise SerializationError(f"cannot convert data into {cls.__qualname__}: {exc}") from exc
