"""Encode a :class:`~catga.result.Result` to bytes and back, typed by the handler's return type.

Used by the idempotency and caching behaviors to store results. One encoder and one typed msgspec
decoder are built per handler return type, once, when the chain is composed. The wire form is a JSON
array ``[ok, value, error, code, metadata]``; values are anything msgspec encodes (Structs,
dataclasses, builtins...) plus pydantic models (through ``model_dump`` / ``model_validate``).
A replayed failure carries its message, code and metadata but not the original exception.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

from catga.errors import SerializationError
from catga.result import Result

__all__ = ("ResultCodec",)


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:  # pydantic v2
        return dump(mode="json")
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__qualname__}")


def _dec_hook(tp: Any, obj: Any) -> Any:
    validate = getattr(tp, "model_validate", None)
    if validate is not None:
        return validate(obj)
    raise NotImplementedError(f"cannot decode {tp!r}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


class ResultCodec:
    """Bytes ⇄ Result for one value type.

    Args:
        value_type: the handler's return type; ``typing.Any`` decodes to builtin types.
    """

    __slots__ = ("_decoder", "value_type")

    def __init__(self, value_type: Any) -> None:
        self.value_type = value_type
        try:
            full: Any = tuple[
                bool,
                Optional[value_type],  # noqa: UP045 - value_type is a runtime value
                Optional[str],  # noqa: UP045
                Optional[str],  # noqa: UP045
                Optional[dict[str, Any]],  # noqa: UP045
            ]
            self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(full, dec_hook=_dec_hook)
        except TypeError:  # a return type msgspec cannot describe: decode loosely
            self._decoder = msgspec.json.Decoder(dec_hook=_dec_hook)

    def encode(self, result: Result[Any]) -> bytes:
        """Encode ``result`` (its exception is not stored).

        Raises:
            SerializationError: the value cannot be encoded.
        """
        meta = result.metadata
        try:
            return _ENCODER.encode(
                (result.ok, result.value, result.error, result.code, dict(meta) if meta else None)
            )
        except (TypeError, ValueError, NotImplementedError, msgspec.EncodeError) as exc:
            raise SerializationError(
                f"cannot encode a result of type {type(result.value).__qualname__}: {exc}"
            ) from exc

    def decode(self, data: bytes) -> Result[Any]:
        """Decode bytes written by :meth:`encode`.

        Raises:
            SerializationError: the bytes do not match the value type.
        """
        try:
            ok, value, error, code, meta = self._decoder.decode(data)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise SerializationError(f"cannot decode a stored result as {self.value_type!r}: {exc}") from exc
        return Result(ok, value, error, code, None, meta)
