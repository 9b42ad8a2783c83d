"""The payload limit every backend applies before it sends or stores a message (private).

One limit, one error: a message body larger than ``max_payload`` bytes raises
:class:`~catga.errors.PayloadTooLargeError` (code ``too_large``) before anything is written, on the
memory, NATS and Redis transports alike, and in the event stores and outboxes that take the option. The
default, 1 MiB, is NATS's default ``max_payload``, so an app that works on memory or Redis works on a
default nats-server too. The size measured is the encoded message body; NATS also counts the headers
(a few hundred bytes) against the server's own ``max_payload``.
"""

from __future__ import annotations

from catga.errors import ConfigurationError, PayloadTooLargeError

__all__ = ("DEFAULT_MAX_PAYLOAD", "PayloadTooLargeError", "check_max_payload")

#: The default payload limit in bytes: 1 MiB (NATS's default ``max_payload``).
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def check_max_payload(value: object) -> int:
    """Check a ``max_payload`` option and return it.

    Raises:
        ConfigurationError: not a positive whole number of bytes.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_payload must be a positive number of bytes, got {value!r}")
    return value
