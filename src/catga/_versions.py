"""Server version gates shared by the backends (no I/O): parse what a server reports, refuse one that
is older than a backend needs with :class:`~catga.errors.UnsupportedServerError`.

Each backend checks once per connection, when it opens (NATS: the ``INFO`` the server sends on
connect; Redis: ``HELLO``), never on a hot path.
"""

from __future__ import annotations

import re

from catga.errors import UnsupportedServerError

__all__ = ("Version", "format_version", "parse_version", "require_version")

Version = tuple[int, int, int]

_VERSION = re.compile(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> Version | None:
    """``"2.9.10"``, ``"v2.11.0-beta.2"``, ``"7.0"`` -> ``(major, minor, patch)``; None if unreadable."""
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def format_version(version: Version) -> str:
    """``(2, 11, 0)`` -> ``"2.11.0"``."""
    return ".".join(map(str, version))


def require_version(backend: str, address: str, found: str | None, needed: Version, feature: str) -> None:
    """Refuse a server whose version ``found`` is older than ``needed``.

    A version that is missing or unreadable is not refused: the gate only stops servers known to be too
    old (a Redis-compatible server may report something else).

    Args:
        backend: ``"nats"``, ``"redis"``...
        address: the server's address, for the message.
        found: what the server reported.
        needed: the oldest version that works.
        feature: what needs it (``"the NATS event store (batch direct get)"``).

    Raises:
        UnsupportedServerError: the server is older than ``needed``.
    """
    version = parse_version(found) if found else None
    if version is not None and version < needed:
        raise UnsupportedServerError(backend, address, str(found), format_version(needed), feature)
