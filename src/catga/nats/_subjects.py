"""Mapping catga identifiers onto NATS subject tokens, safe by construction.

An identifier accepted by :func:`catga.protocols.validate_identifier` uses ASCII letters, digits and
``_ - : @ = + .``. A NATS subject token must not contain ``.`` (the token separator), ``*`` or ``>``
(wildcards) or whitespace, and KV keys are limited to ``[-/_=.A-Za-z0-9]``. :func:`subject_token`
maps every identifier to exactly one token made of ``[A-Za-z0-9_=-]``:

* letters, digits, ``_`` and ``-`` stay as they are;
* every other character becomes ``=`` followed by its two-digit upper-case hex code
  (``.`` -> ``=2E``, ``:`` -> ``=3A``, ``@`` -> ``=40``, ``+`` -> ``=2B``, ``=`` -> ``=3D``).

:func:`key_token` applies the same escaping to any non-empty string (each byte of its UTF-8 form), for
ids that are not validated identifiers (outbox message ids, dead-letter ids).

Because ``=`` itself is escaped, the mapping is injective: ``"a.b"`` -> ``a=2Eb``, ``"a"`` -> ``a``,
``"a_b"`` -> ``a_b`` and ``"a=2Eb"`` -> ``a=3D2Eb`` are all distinct, and no identifier can produce a
``.``, so no id can address a subject of another stream or a wildcard.
"""

from __future__ import annotations

import re

from catga.errors import InvalidIdentifierError
from catga.protocols import validate_identifier

__all__ = ("key_token", "subject_token", "token_to_identifier")

_ESCAPE = re.compile(r"[^A-Za-z0-9_\-]")
_UNESCAPE = re.compile(r"=([0-9A-F]{2})")
_BYTES_ESCAPE = re.compile(rb"[^A-Za-z0-9_\-]")
_BYTES_UNESCAPE = re.compile(rb"=([0-9A-F]{2})")
MAX_KEY_LENGTH = 1000


def _esc(match: re.Match[str]) -> str:
    return f"={ord(match.group()):02X}"


def subject_token(identifier: str, kind: str = "stream id") -> str:
    """Validate ``identifier`` and return its single-token subject form.

    Raises:
        InvalidIdentifierError: the identifier breaks :func:`~catga.protocols.validate_identifier`.
    """
    validate_identifier(identifier, kind)
    return _ESCAPE.sub(_esc, identifier)


def key_token(key: str, kind: str) -> str:
    """Escape any non-empty string (up to 1000 characters) into one subject token.

    Raises:
        InvalidIdentifierError: ``key`` is not a non-empty str of at most 1000 characters.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidIdentifierError(kind, key, f"must be a non-empty str of at most {MAX_KEY_LENGTH} chars")
    if _ESCAPE.search(key) is None:
        return key
    return _BYTES_ESCAPE.sub(lambda m: b"=%02X" % m.group()[0], key.encode()).decode("ascii")


def token_to_identifier(token: str) -> str:
    """Invert :func:`subject_token` and :func:`key_token`."""
    if "=" not in token:
        return token
    return _BYTES_UNESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), token.encode()).decode(
        "utf-8", "replace"
    )
