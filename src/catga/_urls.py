"""URL helpers shared by the core and the backends."""

from __future__ import annotations

import re

__all__ = ("redact_url",)

_SECRET = re.compile(r"(?<=://)([^/@?#]*)@")


def redact_url(url: str) -> str:
    """``url`` with its password or token replaced by ``***`` (for messages and logs)."""

    def hide(match: re.Match[str]) -> str:
        user, sep, _ = match.group(1).partition(":")
        return f"{user}:***@" if sep else "***@"

    return _SECRET.sub(hide, url)
