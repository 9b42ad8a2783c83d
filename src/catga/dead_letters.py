"""Replaying dead letters: put failed messages back on the transport without ever losing one.

:func:`replay_dead_letters` is what ``catga dlq replay`` runs. For each letter it

1. reads it from the :class:`~catga.protocols.DeadLetterQueue`,
2. hands it to :meth:`Transport.replay <catga.protocols.Transport.replay>`, which publishes an event
   (or sends a command) to the letter's destination with the message's own id and a fresh broker
   de-duplication id, and returns only once the broker has stored it,
3. only then deletes the letter -- and only if it is still the letter it read (``delete(id,
   expected=letter)``): a replayed message that fails again at once is dead-lettered anew under the
   same id, and that new letter must stay.

A letter that could not be republished is kept, with the reason in its :class:`ReplayOutcome`. The
order makes the failure modes safe: a crash or cancellation between the broker's ack and the delete
leaves the letter *and* the republished message; replaying it again delivers a second copy with the
same message id, which an ``EXACTLY_ONCE`` consumer (inbox) skips.

Example::

    outcomes = await replay_dead_letters(transport, transport.dead_letters, ["1234"])
    failed = [o for o in outcomes if not o.ok]
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

import msgspec

from catga._transport import replay_route
from catga.errors import ConfigurationError
from catga.protocols import COMMAND, EVENT, PROJECTION, DeadLetter, DeadLetterQueue, Transport

__all__ = ("ReplayOutcome", "ReplayStatus", "replay_dead_letters")

logger = logging.getLogger("catga.dead_letters")


class ReplayStatus(enum.StrEnum):
    """What became of one letter."""

    #: Republished (the broker's ack in hand) and the letter deleted.
    REPLAYED = "replayed"
    #: Republished, and the letter changed since it was read (the message failed again and was
    #: dead-lettered anew): the new letter is kept.
    REPLAYED_FAILED_AGAIN = "replayed_failed_again"
    #: Republished, but deleting the letter failed: it is still there (replaying it again delivers a
    #: second copy with the same message id).
    NOT_DELETED = "not_deleted"
    #: Not republished; the letter is kept.
    FAILED = "failed"
    #: No letter with this id.
    NOT_FOUND = "not_found"


class ReplayOutcome(msgspec.Struct, kw_only=True):
    """The result of replaying one letter.

    Attributes:
        id: the letter id.
        status: see :class:`ReplayStatus`.
        kind: ``"event"`` or ``"command"`` (how it was, or would have been, replayed); "" if not found.
        destination: the destination it went to (or was meant for); "" if not found.
        error: why it was not replayed or not deleted ("" on success).
    """

    id: str
    status: ReplayStatus
    kind: str = ""
    destination: str = ""
    error: str = ""

    @property
    def republished(self) -> bool:
        """True when the broker stored the message again."""
        return self.status in (
            ReplayStatus.REPLAYED,
            ReplayStatus.REPLAYED_FAILED_AGAIN,
            ReplayStatus.NOT_DELETED,
        )

    @property
    def ok(self) -> bool:
        """True when nothing is left to do: republished, and the letter gone (or replaced by a new one)."""
        return self.status in (ReplayStatus.REPLAYED, ReplayStatus.REPLAYED_FAILED_AGAIN)


async def replay_dead_letters(
    transport: Transport,
    dead_letters: DeadLetterQueue,
    ids: Sequence[str] | None = None,
    *,
    limit: int = 1000,
) -> list[ReplayOutcome]:
    """Replay letters one by one: republish each, then delete it (see the module docs).

    Args:
        transport: the transport of the application the letters came from (same prefix).
        dead_letters: its dead-letter queue.
        ids: the letters to replay; None replays up to ``limit`` letters, oldest first.
        limit: with ``ids=None``, at most this many.

    Returns:
        One :class:`ReplayOutcome` per letter, in order. Failures are reported there, not raised.

    Raises:
        ConfigurationError: ``transport`` has no ``replay`` method (not a catga transport).
        BackendError: listing or reading the letters failed (nothing was replayed after that point).
    """
    if not callable(getattr(transport, "replay", None)):
        raise ConfigurationError(
            f"{type(transport).__name__} cannot replay dead letters (it has no replay() method); "
            "use a catga transport (memory, NATS or Redis)"
        )
    if ids is None:
        pairs: list[tuple[str, DeadLetter | None]] = [(x.id, x) for x in await dead_letters.list(limit)]
    else:
        pairs = [(i, await dead_letters.get(i)) for i in ids]
    return [await _replay_one(transport, dead_letters, wanted, letter) for wanted, letter in pairs]


def _route(letter: DeadLetter) -> tuple[str, str]:
    try:
        command, destination = replay_route(letter)
    except Exception:
        return (COMMAND if letter.kind == COMMAND else EVENT), letter.source
    return (COMMAND if command else EVENT), destination


async def _replay_one(
    transport: Transport, dlq: DeadLetterQueue, wanted: str, letter: DeadLetter | None
) -> ReplayOutcome:
    if letter is None:
        return ReplayOutcome(id=wanted, status=ReplayStatus.NOT_FOUND, error="no dead letter with this id")
    if letter.kind == PROJECTION:  # parked by a projection: republishing it would reach no projection
        return ReplayOutcome(
            id=letter.id,
            status=ReplayStatus.FAILED,
            kind=PROJECTION,
            destination=letter.source,
            error=(
                f"parked by projection {letter.source!r}: not replayable through the transport; fix the "
                "projection, then rebuild it (ProjectionRunner.rebuild) or apply the event, and delete "
                "the letter"
            ),
        )
    kind, destination = _route(letter)
    outcome = ReplayOutcome(id=letter.id, status=ReplayStatus.FAILED, kind=kind, destination=destination)
    try:
        await transport.replay(letter)
    except Exception as exc:  # keep the letter; report it and go on with the others
        outcome.error = f"{type(exc).__name__}: {exc}"
        logger.warning("dead letter %s was not replayed (kept): %s", letter.id, outcome.error)
        return outcome
    try:
        deleted = await dlq.delete(letter.id, expected=letter)
    except Exception as exc:
        outcome.status = ReplayStatus.NOT_DELETED
        outcome.error = (
            f"republished, but deleting the letter failed ({type(exc).__name__}: {exc}); delete it "
            "yourself -- replaying it again delivers a second copy (same message id)"
        )
        logger.warning("dead letter %s: %s", letter.id, outcome.error)
        return outcome
    if deleted:
        outcome.status = ReplayStatus.REPLAYED
    elif await dlq.get(letter.id) is None:
        outcome.status = ReplayStatus.REPLAYED  # deleted by someone else meanwhile
    else:
        outcome.status = ReplayStatus.REPLAYED_FAILED_AGAIN
        outcome.error = "the replayed message failed again and was dead-lettered anew (new letter kept)"
    return outcome
