"""The projection runner's error policy, and the dead letter of a parked event."""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from catga.errors import ConfigurationError
from catga.eventsourcing._state import encode_json
from catga.protocols import PROJECTION, DeadLetter, StoredEvent

__all__ = ("ErrorPolicy", "parked_letter")


class ErrorPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What a :class:`ProjectionRunner` does when a projection handler raises.

    Attributes:
        retries: how many times to retry the handler on the same event (0: none).
        backoff: seconds before the first retry; doubled each time, up to ``max_backoff``.
        max_backoff: the longest wait between two tries.
        then: after the last retry, ``"stop"`` the runner (the error is raised from ``run()``), or
            ``"park"`` the event in the runner's dead-letter queue and continue with the next one.

    Raises:
        ConfigurationError: a negative count or delay, or an unknown ``then``.
    """

    retries: int = 0
    backoff: float = 0.1
    max_backoff: float = 5.0
    then: Literal["stop", "park"] = "stop"

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError(f"ErrorPolicy needs retries, backoff and max_backoff >= 0: {self!r}")
        if self.then not in ("stop", "park"):
            raise ConfigurationError(f"ErrorPolicy.then is 'stop' or 'park', got {self.then!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


def parked_letter(name: str, stored: StoredEvent, exc: BaseException, attempts: int) -> DeadLetter:
    """The dead letter of an event projection ``name`` parked: id ``<name>-<position>``, kind
    ``"projection"``, the event as JSON, its metadata plus ``Catga-Projection``, ``Catga-Stream``,
    ``Catga-Version`` and ``Catga-Position`` headers."""
    try:
        body = encode_json(stored.data)
    except Exception:  # the event itself may be what cannot be encoded: keep what we can
        body = repr(stored.data).encode()
    headers = dict(stored.metadata)
    headers.update(
        {
            "Catga-Projection": name,
            "Catga-Stream": stored.stream_id,
            "Catga-Version": str(stored.version),
            "Catga-Position": str(stored.position),
        }
    )
    return DeadLetter(
        id=f"{name}-{stored.position}",
        source=name,
        type_name=stored.type_name,
        body=body,
        headers=headers,
        error=f"{type(exc).__name__}: {exc}",
        attempts=attempts,
        failed_at=time.time(),
        kind=PROJECTION,
        message_id=stored.metadata.get("message_id", ""),
    )
