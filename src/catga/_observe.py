"""Where catga's own machinery reports spans and metrics (backend-neutral core; private).

The core never imports OpenTelemetry. :func:`catga.otel.instrument` (or
:func:`catga.otel.instrument_backends`) installs a :class:`Probe` in :data:`probe`; the call sites read
it once per operation::

    probe = _observe.probe
    if probe is not None:
        ...  # the instrumented path

so an uninstrumented process pays one module-attribute check per message, append or relay pass.

Call sites, one per concern (not one per backend):

==========================  ==============================================================================
where                        what
==========================  ==============================================================================
``Bridge`` export            ``produce("send"|"create")``: a PRODUCER span, its context written into the
                             outgoing headers (``create`` when the event goes to an outbox)
``OutboxRelay.run_once``     ``produce("send", inject=False)`` per message, child of the stored context;
                             ``outbox(outcome, n)``
``DeliveryPolicy.deliver``   ``process``: a CONSUMER span, child of the context in the delivery's headers,
                             with the verdict as its outcome; ``dead_lettered`` for each dead letter
``Repository`` load / save   ``store("read"|"append")``
a lock's ``acquire``         ``lock``, through :func:`catga._lease.observed_acquire` on each backend's
==========================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ("Probe", "Scope", "probe", "system_of")


class Scope(Protocol):
    """An operation in progress (a span, and the metrics recorded when it ends)."""

    def outcome(self, outcome: str) -> None:
        """Record how the operation ended (``ack``, ``retry``, ``conflict``...): a span attribute and
        a metric label."""

    def count(self, n: int) -> None:
        """Record how many items (events read or appended) the operation moved."""


class Probe(Protocol):
    """What :mod:`catga.otel` implements; see the module docs for the call sites."""

    def produce(
        self,
        operation: str,
        system: str,
        destination: str,
        headers: dict[str, str],
        *,
        command: bool = False,
        inject: bool = True,
        message_id: object = None,
        correlation_id: object = None,
    ) -> AbstractContextManager[Scope]:
        """A message leaves: ``operation`` is ``send`` or ``create`` (stored in an outbox).

        With ``inject`` the span's context is written into ``headers``; without, the span's parent is
        read from them (the relay sending what an export created). The ids default to the catga
        headers' (present on stored messages; an export passes its context's).
        """
        ...

    def process(
        self, system: str, destination: str, headers: Mapping[str, str], attempts: int, *, command: bool
    ) -> AbstractContextManager[Scope]:
        """A delivery is processed (decode, inbox, handler); its parent is the context in ``headers``."""
        ...

    def store(self, operation: str, system: str, stream_id: str) -> AbstractContextManager[Scope]:
        """An event-store ``read`` or ``append`` of one stream."""
        ...

    def lock(self, system: str, key: str, wait: float) -> AbstractContextManager[Scope]:
        """A lock acquisition that may wait up to ``wait`` seconds."""
        ...

    def dead_lettered(self, system: str, destination: str, reason: str) -> None:
        """A message was dead-lettered (``reason``: ``undecodable``, ``over_delivered``, ``failed``,
        ``outbox``)."""

    def outbox(self, outcome: str, n: int) -> None:
        """The relay moved ``n`` messages to ``outcome`` (``published``, ``failed``, ``dead``)."""


_SCHEMES = {"rediss": "redis", "tls": "nats", "postgresql": "postgres"}

#: The installed probe; None (the default) turns every call site into one check.
probe: Probe | None = None


def system_of(obj: object) -> str:
    """The backend name (``memory``, ``nats``, ``redis``, ``postgres``) of a catga backend object.

    A late-bound proxy (an app's URL-named backend) answers for its target, or its URL's scheme
    while unbound; any other object gives its top-level package name.
    """
    target = getattr(obj, "_target", None)
    if target is not None:
        obj = target
    else:
        url = getattr(obj, "_url", None)
        if isinstance(url, str) and "://" in url:
            scheme = url.split("://", 1)[0].split("+", 1)[0]
            return _SCHEMES.get(scheme, scheme)
    parts = type(obj).__module__.split(".")
    return parts[1] if parts[0] == "catga" and len(parts) > 2 else parts[0]
