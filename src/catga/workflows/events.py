"""Workflows waiting for events: the engine's half that delivers an event to its waiters.

A wait (``wf.expect`` / ``wf.wait_for``, see :mod:`catga.workflows.waits`) leaves the workflow's
store record naming the event type (``wait_for``) and the outcome's sequence number and match
(``wait_spec``), while the run goes on (``running``) and while it sleeps. The engine listens for that
type on the app's mediator; a published event is matched against every waiter of its type
(:meth:`WorkflowStore.waiting <catga.workflows.WorkflowStore.waiting>`), and for each match the
engine offers it as the wait's outcome (:meth:`WorkflowStore.offer
<catga.workflows.WorkflowStore.offer>`: once per sequence number, no lease), then reads the
instance: if it sleeps on that wait, the engine takes its lease, makes it ``pending`` and resumes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from catga.errors import ConfigurationError, WorkflowError
from catga.messages import Event, type_name
from catga.serialization import TypeRegistry
from catga.workflows._values import decode_value
from catga.workflows.store import PENDING, SLEEPING, HistoryEntry, WorkflowInstance, WorkflowStore

if TYPE_CHECKING:
    from catga.mediator import Mediator

__all__ = ("EventWaits",)

_MISSING = object()
E = TypeVar("E", bound=Event)


class EventWaits:
    """The event delivery of :class:`~catga.workflows.WorkflowEngine` (a base class of it)."""

    store: WorkflowStore
    mediator: Mediator
    registry: TypeRegistry
    lease: float
    owner: str
    _listening: set[type[Event]]

    def resume(self, id: str) -> None:
        """Start a run of ``id`` (the engine's)."""
        raise NotImplementedError

    async def start_workflow(self, workflow: Any, input: object = None, *, id: str | None = None) -> str:
        """Start a workflow (the engine's)."""
        raise NotImplementedError

    def start_on(
        self,
        event_type: type[E],
        workflow: Any,
        *,
        id: Callable[[E], str],
        input: Callable[[E], object] | None = None,
    ) -> None:
        """Start ``workflow`` for every ``event_type`` event published in this app.

        Args:
            event_type: the event type (a handler is registered on the app's mediator).
            workflow: the workflow's name or function.
            id: the workflow id of an event (``lambda e: f"order-{e.order_id}"``): a redelivered or
                repeated event starts nothing new.
            input: the workflow's input from the event (default: the event itself).

        Raises:
            ConfigurationError: not an Event subclass.
        """
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ConfigurationError(f"start_on() takes an Event subclass, got {event_type!r}")

        async def start(event: Any) -> None:
            await self.start_workflow(workflow, event if input is None else input(event), id=id(event))

        start.__qualname__ = f"start workflow {workflow if isinstance(workflow, str) else workflow.__name__}"
        self.mediator.register(start, event_type)

    def listen(self, event_type: type[Event]) -> None:
        """Deliver the events of ``event_type`` published in this app to the workflows waiting for
        them (a handler on the mediator; idempotent). Every replica that may receive such an event
        must listen: declare it with ``@app.workflow(events=[...])``.

        Raises:
            ConfigurationError: not an Event subclass, or another type has its name in the registry.
        """
        if event_type in self._listening:
            return
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ConfigurationError(f"a workflow can wait for events only, got {event_type!r}")
        if event_type not in self.registry:
            self.registry.register(event_type)

        async def deliver(event: Any) -> None:
            await self.deliver_event(event)

        deliver.__qualname__ = f"workflows waiting for {type_name(event_type)}"
        self.mediator.register(deliver, event_type)
        self._listening.add(event_type)

    async def deliver_event(self, event: Event) -> int:
        """Hand ``event`` to every workflow waiting for its type whose ``match`` it meets: offer it
        as the wait's outcome, and wake the workflow if it sleeps on that wait.

        A running workflow (it opened the wait with ``wf.expect`` and still holds its lease; its
        runner may be blocked in the very step that published this event) gets the offer only: its
        runner reads the outcome before going to sleep, and again after (see
        :mod:`catga.workflows.waits`). A sleeping one is made ``pending`` under its lease and
        resumed here.

        Returns:
            how many workflows it was delivered to (whose wait it ended).

        Raises:
            WorkflowError: a matching sleeping workflow stayed leased by a runner for longer than the
                lease (the event's delivery fails, so a transport redelivers it).
        """
        name = type_name(type(event))
        delivered = 0
        body: bytes | None = None
        for instance in await self.store.waiting(name):
            spec = decode_value(instance.wait_spec or b"{}")
            match = spec.get("match") or {}
            if any(msgspec.to_builtins(getattr(event, k, _MISSING)) != v for k, v in match.items()):
                continue
            if body is None:
                body = self.registry.encode(event)[1]
            if await self._deliver_to(instance.id, int(spec["seq"]), name, body):
                delivered += 1
        return delivered

    async def _deliver_to(self, id: str, seq: int, name: str, body: bytes) -> bool:
        offered = await self.store.offer(id, HistoryEntry(seq=seq, kind="event", name=name, value=body))
        # Read the instance only now: a runner that missed the offer stored "sleeping" before it
        # (and then it must be woken here, even when the entry was offered by someone else first).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease
        delay = 0.01
        while True:
            if not _sleeps_on(await self.store.get(id), name, seq):
                return offered
            token = await self.store.acquire(id, self.owner, self.lease)
            if token is not None:
                break
            if loop.time() >= deadline:
                raise WorkflowError(
                    f"workflow {id!r} waits for {name} but stayed leased by another runner for "
                    f"{self.lease:g} s; the event is not delivered to it (a transport redelivers it)",
                    workflow_id=id,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            if not _sleeps_on(await self.store.get(id), name, seq):
                return offered  # woken meanwhile (timeout, cancel, another delivery)
            await self.store.update(id, token, PENDING)
        finally:
            await self.store.release(id, token)
        self.resume(id)
        return True


def _sleeps_on(instance: WorkflowInstance | None, name: str, seq: int) -> bool:
    """``instance`` sleeps until the outcome ``seq`` of its wait for ``name`` comes."""
    if instance is None or instance.status != SLEEPING or instance.wait_for != name:
        return False
    spec = decode_value(instance.wait_spec or b"{}")
    return spec.get("seq") == seq and spec.get("wake", True) is not False
