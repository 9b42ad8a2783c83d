"""Message markers, metadata and the wire envelope.

Messages are the user's own classes: msgspec Structs, dataclasses or pydantic models. They opt in by also
inheriting one marker:

* :class:`Command` ``[R]`` — changes state; exactly one handler, which returns ``R``.
* :class:`Query` ``[R]`` — reads state; exactly one handler, no side effects.
* :class:`Event` — something that happened; any number of handlers, no response.

The markers have empty ``__slots__`` and no fields, so they mix into any of the three families::

    @dataclass(frozen=True)
    class PlaceOrder(Command[str]):
        customer_id: str

    class OrderPlaced(msgspec.Struct, Event, frozen=True):
        order_id: str

Metadata (ids, correlation, QoS, headers) travels *beside* the message in :class:`Metadata`, never inside.
"""

from __future__ import annotations

import enum
import re
import uuid
from typing import Any, Generic, TypeVar

import msgspec

__all__ = (
    "Command",
    "Event",
    "Message",
    "Metadata",
    "QoS",
    "Query",
    "Request",
    "message_name",
    "parse_correlation_id",
    "trace_id_of",
    "type_name",
)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Message:
    """Base marker of every catga message. Carries no data."""

    __slots__ = ()


class Request(Message, Generic[R_co]):
    """A message with exactly one handler that returns ``R_co`` (commands and queries)."""

    __slots__ = ()


class Command(Request[R_co]):
    """A request to change state. ``Command[None]`` when the handler returns nothing."""

    __slots__ = ()


class Query(Request[R_co]):
    """A request to read state; its handler must not change anything."""

    __slots__ = ()


class Event(Message):
    """A fact that happened; published to every subscribed handler, which return nothing."""

    __slots__ = ()


class QoS(enum.IntEnum):
    """Delivery guarantee of a message.

    ``EXACTLY_ONCE`` is at-least-once delivery plus de-duplication by message id on the consumer side
    (an inbox); it is *effectively* once, not a distributed transaction.
    """

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class Metadata(msgspec.Struct, kw_only=True, gc=False):
    """What travels beside a message.

    Attributes:
        message_id: unique id of this message (a Snowflake id by default).
        correlation_id: id shared by every message caused, directly or not, by one original message:
            a catga id (an int) or what another system sent (a str: a UUID, a W3C trace id, a token;
            see :func:`parse_correlation_id`).
        causation_id: id of the message whose handling sent this one.
        created_at: unix time in seconds.
        qos: delivery guarantee.
        headers: free-form string headers (W3C ``traceparent`` lives here).
    """

    message_id: int
    correlation_id: int | str | None = None
    causation_id: int | None = None
    created_at: float = 0.0
    qos: QoS = QoS.AT_MOST_ONCE
    headers: dict[str, str] | None = None

    def to_headers(self, type_name: str) -> dict[str, str]:
        """Render as wire headers (see ``docs/messages.md``), user headers included."""
        h: dict[str, str] = dict(self.headers) if self.headers else {}
        h[H_TYPE] = type_name
        h[H_ID] = str(self.message_id)
        if self.correlation_id is not None:
            h[H_CORRELATION] = str(self.correlation_id)
        if self.causation_id is not None:
            h[H_CAUSATION] = str(self.causation_id)
        h[H_CREATED] = repr(self.created_at)
        h[H_QOS] = str(int(self.qos))
        return h

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> tuple[str, Metadata]:
        """Parse wire headers back into ``(type_name, metadata)``.

        Raises:
            SerializationError: a catga header is missing or malformed.
        """
        from catga.errors import SerializationError

        try:
            type_name = headers[H_TYPE]
            user = {k: v for k, v in headers.items() if not k.startswith(_PREFIX)}
            corr = headers.get(H_CORRELATION)
            caus = headers.get(H_CAUSATION)
            if corr is not None:
                correlation = parse_correlation_id(corr)
                if correlation is None:
                    raise ValueError(f"{H_CORRELATION} {corr!r} is not a correlation id")
            else:  # a message from outside catga: continue its W3C trace, if it has one
                parent = headers.get("traceparent")
                correlation = None if parent is None else trace_id_of(parent)
            return type_name, cls(
                message_id=int(headers[H_ID]),
                correlation_id=correlation,
                causation_id=int(caus) if caus is not None else None,
                created_at=float(headers.get(H_CREATED, "0")),
                qos=QoS(int(headers.get(H_QOS, "0"))),
                headers=user or None,
            )
        except (KeyError, ValueError) as exc:
            raise SerializationError(f"malformed catga headers {headers!r}: {exc}") from exc


_PREFIX = "Catga-"
H_TYPE = "Catga-Type"
H_ID = "Catga-Id"
H_CORRELATION = "Catga-Correlation-Id"
H_CAUSATION = "Catga-Causation-Id"
H_CREATED = "Catga-Created-At"
H_QOS = "Catga-QoS"
#: Set on a reply or dead letter when the handler raised; value = the error text.
H_ERROR = "Catga-Error"


_MAX_ID = 1 << 63
_TOKEN = re.compile(r"[A-Za-z0-9._:@/+=\-]{1,128}\Z")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")


def trace_id_of(traceparent: str) -> str | None:
    """The trace id (32 lower-case hex digits) of a W3C ``traceparent`` header, or None if malformed.

    Example:
        >>> trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        '4bf92f3577b34da6a3ce929d0e0e4736'
    """
    m = _TRACEPARENT.match(traceparent.strip())
    if m is None or m.group(1) == "ff" or m.group(2) == "0" * 32 or m.group(3) == "0" * 16:
        return None
    if m.group(1) == "00" and m.group(5):  # version 00 has exactly four fields
        return None
    return m.group(2)


def parse_correlation_id(text: str) -> int | str | None:
    """Read a correlation id another system sent (an HTTP header, a message header).

    * a positive integer below 2**63 (a catga id) → that ``int``;
    * a UUID in any of its usual spellings → its canonical form (``"3f2b...-..."``, lower case);
    * a W3C ``traceparent`` → its trace id (32 hex digits), so logs and traces share the id;
    * another token of 1-128 characters from ``A-Z a-z 0-9 . _ : @ / + = -`` → the text as is;
    * anything else (empty, spaces, control characters, too long) → None: the caller starts a new
      correlation instead of carrying untrusted text into logs and headers.
    """
    text = text.strip()
    if text.isascii() and text.isdigit():
        n = int(text)
        return n if 0 < n < _MAX_ID else None
    if len(text) in (32, 36, 38, 45):  # hex, hyphenated, {braced}, urn:uuid:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
    trace = trace_id_of(text) if len(text) >= 55 else None
    if trace is not None:
        return trace
    return text if _TOKEN.match(text) else None


def new_metadata(message_id: int, **fields: Any) -> Metadata:
    """Build metadata stamped with the current time."""
    from catga.clock import get_clock

    return Metadata(message_id=message_id, created_at=get_clock().time(), **fields)


def message_name(name: str) -> Any:
    """Class decorator giving a message type a stable wire name (default: the class ``__name__``).

    Example:
        >>> @message_name("orders.OrderPlaced")
        ... class OrderPlaced(Event): ...
    """

    def apply(cls: type[R]) -> type[R]:
        cls.__catga_name__ = name  # type: ignore[attr-defined]
        return cls

    return apply


def type_name(cls: type) -> str:
    """The wire name of a message type: ``__catga_name__`` when set on the class itself, else ``__name__``."""
    name = cls.__dict__.get("__catga_name__")
    return name if isinstance(name, str) else cls.__name__
