"""Redis Cluster hash slots: which slot a key is in, and which argument of a command is its key.

Used by :class:`~catga.redis.RedisClusterClient` to route each command to the primary of its slot.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

__all__ = ("SLOTS", "command_key", "key_slot")

#: Hash slots of a Redis Cluster.
SLOTS = 16384

# Commands whose first key is not args[1]: the index of the key (or of "STREAMS" for the X*READ*).
_KEY_AT = {
    b"XGROUP": 2,
    b"XINFO": 2,
    b"PUBSUB": 2,
    b"BLMPOP": 3,
    b"LMPOP": 2,
    b"EVALSHA": 3,
    b"EVAL": 3,
    b"FCALL": 3,
}
_KEYLESS = frozenset(
    {
        b"PING", b"INFO", b"CONFIG", b"CLIENT", b"HELLO", b"CLUSTER", b"SCAN", b"DBSIZE", b"FLUSHALL",
        b"FLUSHDB", b"SCRIPT", b"TIME", b"WAIT", b"ECHO", b"COMMAND", b"MEMORY", b"LATENCY", b"ROLE",
    }
)  # fmt: skip


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key``: CRC16 (XMODEM) of its hash tag (``{...}``) or of the whole key."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def command_key(args: Sequence[Any]) -> Any:
    """The key a command is routed by (``None``: any node will do), for the commands catga sends."""
    name = args[0]
    upper = (name.encode() if isinstance(name, str) else bytes(name)).upper()
    if upper in _KEYLESS or len(args) < 2:
        return None
    if upper in (b"XREAD", b"XREADGROUP"):
        for i in range(1, len(args) - 1):
            arg = args[i]
            if isinstance(arg, str | bytes) and arg.upper() in ("STREAMS", b"STREAMS"):
                return args[i + 1]
        return None
    at = _KEY_AT.get(upper, 1)
    if upper in (b"EVALSHA", b"EVAL", b"FCALL", b"BLMPOP", b"LMPOP"):
        numkeys = args[at - 1] if upper != b"BLMPOP" else args[2]
        if int(numkeys) == 0:
            return None
    return args[at] if at < len(args) else None
