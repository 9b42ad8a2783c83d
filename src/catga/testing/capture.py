"""Capture what an app sends and publishes, for assertions in tests.

:func:`capture` puts a recording behavior at the outside of an app's (or mediator's) pipeline; every
message dispatched from then on is written to a :class:`MessageLog` with its metadata and Result::

    app = catga.App()
    app.scan("myapp.handlers")
    log = capture(app)                      # before the first message is dispatched
    async with app:
        await app.send(PlaceOrder("c-1", 42))
    assert log.events(OrderPlaced) == [OrderPlaced("o-1", 42)]
    assert log.exported_events(OrderPlaced)  # would have gone on the transport (app.export)

What is recorded: every command and query sent (``app.send``, ``ctx.send`` in a handler, batches and
streams), every event published (locally, by a handler, or arriving from the transport through
:meth:`App.consume <catga.App.consume>`, then with ``inbound=True``). An event of a type declared with
:meth:`App.export <catga.App.export>` and published in this app is marked ``exported``, with or without
a transport, so an in-memory test can check what another process would receive. A request type with no
handler at all fails before any behavior runs, so it is not recorded.

Not thread-safe (like the mediator): use it from the test's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

from catga._bridge import _inbound
from catga.app import App
from catga.context import Context
from catga.errors import ConfigurationError
from catga.mediator import Mediator
from catga.messages import Event, Metadata
from catga.pipeline.base import Next
from catga.result import Result

__all__ = ("Captured", "MessageLog", "capture")

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Captured:
    """One dispatched message, as the pipeline saw it.

    Attributes:
        message: the command, query or event.
        metadata: its metadata (message id, correlation, causation, headers).
        result: its Result once handled (``None`` while its handlers still run).
        inbound: it arrived from the transport (an event of a :meth:`App.consume` declaration).
        exported: an event of a type this app exports, published here (not received).
    """

    message: Any
    metadata: Metadata
    result: Result[Any] | None
    inbound: bool
    exported: bool

    @property
    def is_event(self) -> bool:
        """True for events, False for commands and queries."""
        return isinstance(self.message, Event)


class MessageLog:
    """What an app dispatched, in dispatch order (see :func:`capture`).

    Attributes:
        entries: every :class:`Captured` message, oldest first.
    """

    def __init__(self, exports: set[type] | None = None) -> None:
        self.entries: list[Captured] = []
        self._exports = exports if exports is not None else set()
        self._changed = asyncio.Condition()  # bound to the loop that first uses it

    # -- recording ---------------------------------------------------------------------------------

    async def __call__(self, message: Any, ctx: Context, call_next: Next) -> Result[Any]:
        """The recording behavior: note the message, run the rest of the pipeline, note its Result."""
        inbound = _inbound.get() == ctx.message_id
        exported = (
            not inbound
            and isinstance(message, Event)
            and any(isinstance(message, t) for t in tuple(self._exports))
        )
        index = len(self.entries)
        self.entries.append(Captured(message, ctx.metadata, None, inbound, exported))
        await self._notify()
        result = await call_next(message, ctx)
        old = self.entries[index]
        self.entries[index] = Captured(old.message, old.metadata, result, old.inbound, old.exported)
        await self._notify()
        return result

    async def _notify(self) -> None:
        cond = self._changed
        async with cond:
            cond.notify_all()

    # -- reading -----------------------------------------------------------------------------------

    @property
    def sent(self) -> list[Captured]:
        """Commands and queries, in dispatch order."""
        return [e for e in self.entries if not e.is_event]

    @property
    def published(self) -> list[Captured]:
        """Events (local, from handlers and received), in dispatch order."""
        return [e for e in self.entries if e.is_event]

    @property
    def exported(self) -> list[Captured]:
        """Events published here whose type this app exports (what the transport gets)."""
        return [e for e in self.entries if e.exported]

    def messages(self, message_type: type[M]) -> list[M]:
        """Every dispatched message that is an instance of ``message_type``, in order."""
        return [e.message for e in self.entries if isinstance(e.message, message_type)]

    def commands(self, message_type: type[M]) -> list[M]:
        """The commands/queries of ``message_type`` sent, in order."""
        return [e.message for e in self.sent if isinstance(e.message, message_type)]

    def events(self, message_type: type[M]) -> list[M]:
        """The events of ``message_type`` published (received ones included), in order."""
        return [e.message for e in self.published if isinstance(e.message, message_type)]

    def exported_events(self, message_type: type[M]) -> list[M]:
        """The events of ``message_type`` this app exported, in order."""
        return [e.message for e in self.exported if isinstance(e.message, message_type)]

    def of(self, message: object) -> Captured:
        """The entry of ``message`` (the same object that was dispatched).

        Raises:
            LookupError: it was not dispatched through this app.
        """
        for e in self.entries:
            if e.message is message:
                return e
        raise LookupError(f"{message!r} was not dispatched through the captured app")

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.entries.clear()

    async def wait_for(self, message_type: type[M], count: int = 1, *, timeout: float = 5.0) -> list[M]:
        """Wait until ``count`` messages of ``message_type`` have been *handled*; return them all.

        For messages that arrive later, from another app on a shared broker (see
        :class:`~catga.testing.MemoryBus`) or a real transport.

        Raises:
            TimeoutError: fewer than ``count`` were handled within ``timeout`` seconds (the message
                says how many were).
        """

        def handled() -> list[M]:
            return [
                e.message
                for e in self.entries
                if isinstance(e.message, message_type) and e.result is not None
            ]

        cond = self._changed
        try:
            async with asyncio.timeout(timeout), cond:
                await cond.wait_for(lambda: len(handled()) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"{len(handled())} of {count} {message_type.__qualname__} handled within {timeout} s"
            ) from None
        return handled()

    def __repr__(self) -> str:
        return f"MessageLog(sent={len(self.sent)}, published={len(self.published)})"


def capture(target: App | Mediator) -> MessageLog:
    """Record every message ``target`` dispatches from now on (an outermost behavior).

    Args:
        target: a :class:`~catga.App` (exported events are then marked) or a
            :class:`~catga.mediator.Mediator`.

    Returns:
        the :class:`MessageLog` that fills as messages are dispatched.

    Raises:
        ConfigurationError: a message was already dispatched (pipelines are composed once): call
            ``capture`` right after building the app.
    """
    if isinstance(target, App):
        mediator, exports = target.mediator, target._bridge.exports
    elif isinstance(target, Mediator):
        mediator, exports = target, set()
    else:
        raise ConfigurationError(f"capture() takes a catga.App or a Mediator, got {type(target).__name__}")
    log = MessageLog(exports)
    mediator.add_behavior(log, index=0)
    return log
