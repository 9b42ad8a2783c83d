"""The projection catch-up figure's script measures a real catch-up (kept working, not timed)."""

from __future__ import annotations

from catga.bench.catchup import _Totals, measure
from catga.eventsourcing import MemoryCheckpointStore
from catga.memory import MemoryEventStore


async def test_measure_catches_up_on_every_event() -> None:
    projection = _Totals()
    checkpoints = MemoryCheckpointStore()
    rate = await measure(MemoryEventStore(), projection, checkpoints, 1_050, 100)
    assert rate > 0
    assert sum(projection.totals.values()) == 1_050  # every event handled once
