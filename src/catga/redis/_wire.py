"""Wire format of the Redis transport, shared by its publishing, consuming and request/reply code.

* A stream entry: first field ``body`` (the encoded message), then one field per header.
* A pub/sub message or an RPC reply (one Redis string): the headers as one JSON object, ``\\n``, the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import msgspec

__all__ = ("entry_args", "frame", "parse_entry", "quietly", "unframe")

logger = logging.getLogger("catga.redis.transport")

_BODY = b"body"
_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def frame(body: bytes, headers: Mapping[str, str]) -> bytes:
    """Pub/sub and reply framing: the headers as a JSON object, ``\\n``, then the body."""
    return _encode_headers(headers) + b"\n" + body


def unframe(data: bytes) -> tuple[bytes, dict[str, str], str | None]:
    """Split a framed message into ``(body, headers, error)``; ``error`` says why it is malformed."""
    cut = data.find(b"\n")
    if cut < 0:
        return data, {}, "no header line in the frame"
    try:
        return data[cut + 1 :], _decode_headers(data[:cut]), None
    except msgspec.DecodeError as exc:
        return data[cut + 1 :], {}, f"malformed header line: {exc}"


def entry_args(key: str, body: bytes, headers: Mapping[str, str], max_len: int | None) -> tuple[Any, ...]:
    """The ``XADD`` command writing one message (``body`` first, then the headers)."""
    args: list[Any] = ["XADD", key]
    if max_len is not None:
        args += ("MAXLEN", "~", max_len)
    args += ("*", _BODY, body)
    for name, value in headers.items():
        args += (name, value)
    return tuple(args)


def parse_entry(fields: list[bytes] | None) -> tuple[bytes, dict[str, str], str | None]:
    """Split stream entry fields into ``(body, headers, error)``; ``error`` says why it is malformed."""
    if not fields:
        return b"", {}, "empty stream entry"
    body, start, error = b"", 0, None
    if fields[0] == _BODY and len(fields) > 1:
        body, start = fields[1], 2
    else:
        error = "the entry's first field is not 'body' (not written by catga)"
    headers = {
        fields[i].decode("utf-8", "replace"): fields[i + 1].decode("utf-8", "replace")
        for i in range(start, len(fields) - 1, 2)
    }
    return body, headers, error


async def quietly(op: Awaitable[Any], what: str) -> None:
    """Await a settle-type operation; a backend failure is logged (the entry stays pending)."""
    try:
        await op
    except Exception as exc:
        logger.warning("%s failed: %s", what, exc)
