"""The per-message :class:`Context` and correlation propagation.

The mediator creates one :class:`Context` for every message it dispatches and makes it the *current*
context (a :mod:`contextvars` variable) while the message's pipeline and handler run. A message sent or
published while another is being handled gets:

* ``correlation_id`` = the current message's correlation id (the root message's own id), and
* ``causation_id`` = the current message's id,

whether it is sent with ``ctx.send(...)`` or straight through the mediator or app. Tasks spawned by a
handler inherit the current context like any other context variable.

Cost: a context is a small msgspec Struct; its :class:`~catga.messages.Metadata` and ``items``
dict are built only when first read.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

import catga.clock as _clock
from catga.messages import Metadata, Request

if TYPE_CHECKING:
    from catga.mediator import Mediator
    from catga.result import Result

__all__ = ("Context", "current_context")

R = TypeVar("R")

_current: ContextVar[Context | None] = ContextVar("catga_context", default=None)
_draw_lock = threading.Lock()


def current_context() -> Context | None:
    """The context of the message being handled in this task, or None outside any handler."""
    return _current.get()


class Context(msgspec.Struct):
    """What a handler and the behaviors know about the message being handled.

    Attributes:
        mediator: the mediator dispatching the message.
        message_id: the message's id (a Snowflake id unless the caller supplied metadata). A
            command's or query's id is drawn when it is dispatched; an event's id is drawn the first
            time anything reads it (a behavior, a handler, a child message, the transport), so a
            published event that nobody asks about costs no id. Reads from several threads agree.
        correlation_id: the id shared by every message caused by the same root message; for a root
            message, its own id.
        causation_id: the id of the message whose handling sent this one, or None for a root message.

    A context is a small msgspec Struct (created in C, faster than a ``__slots__`` class). Apart from
    drawing its id, it is not thread-safe: a context belongs to one message handled in one task.

    Why events draw their id lazily: a Snowflake id (a clock read and a counter step) is a sizeable
    part of an in-process publish to two handlers (figures in ``docs/benchmarks.md``, *Design
    figures*). Commands and queries always need theirs at once (the idempotency behavior keys on it),
    so they draw it eagerly.
    """

    mediator: Mediator
    _message_id: int | None = None
    _correlation_id: int | str | None = None
    causation_id: int | None = None
    _metadata: Metadata | None = None
    _items: dict[str, Any] | None = None

    @property
    def message_id(self) -> int:
        """The message's id: given by the caller's metadata, else drawn from the mediator on first read."""
        mid = self._message_id
        if mid is None:
            with _draw_lock:  # two threads reading a fresh context's id must see the same id
                mid = self._message_id
                if mid is None:
                    mid = self._message_id = self.mediator.new_id()
        return mid

    @property
    def correlation_id(self) -> int | str:
        """The id shared by every message caused by the same root message (a root's own id, or the
        correlation id another system sent with it: a str such as a UUID or a W3C trace id)."""
        corr = self._correlation_id
        return self.message_id if corr is None else corr

    @classmethod
    def from_metadata(cls, mediator: Mediator, metadata: Metadata) -> Context:
        """A context for a message that arrived with its own metadata (from a transport, a retry...)."""
        corr = metadata.correlation_id
        return cls(
            mediator,
            metadata.message_id,
            metadata.message_id if corr is None else corr,
            metadata.causation_id,
            metadata,
        )

    @property
    def metadata(self) -> Metadata:
        """The message's metadata; built on first access when the mediator generated the id.

        A generated metadata's ``created_at`` is stamped at that first access (normally within
        microseconds of dispatch).
        """
        md = self._metadata
        if md is None:
            md = self._metadata = Metadata(
                message_id=self.message_id,
                correlation_id=self.correlation_id,
                causation_id=self.causation_id,
                created_at=_clock.get_clock().time(),
            )
        return md

    @property
    def items(self) -> dict[str, Any]:
        """A dict for behaviors and handlers to share per-message state (DI scopes, timings...)."""
        items = self._items
        if items is None:
            items = self._items = {}
        return items

    def new_id(self) -> int:
        """A new unique id from the mediator's id generator (Snowflake by default)."""
        return self.mediator.new_id()

    async def send(self, request: Request[R], *, metadata: Metadata | None = None) -> Result[R]:
        """Send a command or query caused by this message (correlation and causation set from it).

        See :meth:`catga.mediator.Mediator.send`.
        """
        if metadata is None:  # positional: the cheapest call
            return await self.mediator.send(request, self)
        return await self.mediator.send(request, self, metadata=metadata)

    async def publish(self, event: object, *, metadata: Metadata | None = None) -> Result[None]:
        """Publish an event caused by this message (correlation and causation set from it).

        This is the hook the outbox uses when one is configured; by default it publishes in process
        through :meth:`catga.mediator.Mediator.publish`.
        """
        if metadata is None:  # positional: the cheapest call
            return await self.mediator.publish(event, self)
        return await self.mediator.publish(event, self, metadata=metadata)

    def child_metadata(self, message_id: int | None = None) -> Metadata:
        """Metadata for a new message caused by this one (for outboxes and transports)."""
        return Metadata(
            message_id=self.mediator.new_id() if message_id is None else message_id,
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            created_at=_clock.get_clock().time(),
        )

    def __repr__(self) -> str:
        return (
            f"Context(message_id={self.message_id}, correlation_id={self.correlation_id}, "
            f"causation_id={self.causation_id})"
        )
