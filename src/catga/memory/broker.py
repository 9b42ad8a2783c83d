"""The in-memory bus: routing tables shared by :class:`~catga.memory.MemoryTransport` instances.

Each destination maps to a tuple of subscriptions, pre-grouped in a :class:`_Route` that is replaced
whole on every subscribe/unsubscribe, so publishing reads without locks. Not thread-safe: one event
loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from catga.memory._subscription import MemorySubscription, _Delivery, _ServeSubscription
from catga.protocols import IdempotencyStore

__all__ = ("MemoryBroker",)


class _Route:
    """Subscriptions of one destination, pre-grouped for routing."""

    __slots__ = ("groups", "rr", "singles", "subs")

    def __init__(self, subs: tuple[MemorySubscription, ...]) -> None:
        self.subs = subs
        self.singles = tuple(s for s in subs if s.group is None)
        grouped: dict[str, list[MemorySubscription]] = {}
        for s in subs:
            if s.group is not None:
                grouped.setdefault(s.group, []).append(s)
        self.groups = tuple((tuple(members), itertools.count()) for members in grouped.values())
        self.rr = itertools.count()


class MemoryBroker:
    """The in-memory bus shared by :class:`MemoryTransport` instances.

    Attributes:
        inbox: the inbox used for exactly-once subscriptions of transports that were given none
            (shared by all transports on this broker, like a server-side store).
    """

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._servers: dict[str, _Route] = {}
        self._inbox: IdempotencyStore | None = None
        self._scopes = itertools.count(1)

    @property
    def inbox(self) -> IdempotencyStore:
        """The broker's shared inbox (a :class:`~catga.memory.MemoryIdempotencyStore`), made on first use."""
        if self._inbox is None:
            from catga.memory.idempotency import MemoryIdempotencyStore

            self._inbox = MemoryIdempotencyStore()
        return self._inbox

    def _table(self, sub: MemorySubscription) -> dict[str, _Route]:
        return self._servers if isinstance(sub, _ServeSubscription) else self._routes

    def _attach(self, sub: MemorySubscription) -> None:
        table = self._table(sub)
        route = table.get(sub.destination)
        table[sub.destination] = _Route((route.subs if route else ()) + (sub,))

    def _detach(self, sub: MemorySubscription) -> None:
        table = self._table(sub)
        route = table.get(sub.destination)
        if route is None or sub not in route.subs:
            return
        rest = tuple(s for s in route.subs if s is not sub)
        if rest:
            table[sub.destination] = _Route(rest)
        else:
            del table[sub.destination]

    @staticmethod
    def _fan_out(route: _Route | None, make: Callable[[], _Delivery]) -> int:
        if route is None:
            return 0
        n = 0
        for sub in route.singles:
            n += sub._enqueue(make())
        for members, rr in route.groups:
            n += members[next(rr) % len(members)]._enqueue(make())
        return n

    def _publish(self, destination: str, body: bytes, headers: dict[str, str]) -> int:
        return self._fan_out(self._routes.get(destination), lambda: _Delivery(body, headers))

    def _send(self, destination: str, body: bytes, headers: dict[str, str]) -> int:
        route = self._routes.get(destination)
        if route is None:
            return 0
        subs = route.subs
        return int(subs[next(route.rr) % len(subs)]._enqueue(_Delivery(body, headers, None, True)))

    def _request(
        self, destination: str, body: bytes, headers: dict[str, str], reply: asyncio.Future[Any]
    ) -> int:
        return self._fan_out(self._servers.get(destination), lambda: _Delivery(body, headers, reply))

    def _peer(self, sub: MemorySubscription) -> MemorySubscription | None:
        """Another open member of ``sub``'s group, to take over its deliveries."""
        if sub.group is None:
            return None
        route = self._table(sub).get(sub.destination)
        if route is None:
            return None
        for members, rr in route.groups:
            if members[0].group == sub.group:
                return members[next(rr) % len(members)]
        return None
