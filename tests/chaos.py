"""The fault suite's scale and report: one table row per scenario (``make chaos``).

The fault tests (server kills and restarts, replicas started together, replays) run in ``make test``
in a short form. ``make chaos`` runs the same tests with ``CATGA_CHAOS=full`` (their full sizes) and
``CATGA_CHAOS_REPORT=path``, and prints the rows the tests recorded through the ``chaos`` fixture::

    def test_x(chaos: Chaos) -> None:
        n = chaos.size(short=2_000, full=20_000)
        ...
        chaos.record("NATS leader killed under 16 appenders", messages=n, kills=1, lost=0, twice=0,
                     recovery_s=1.2)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

__all__ = ("Chaos", "ChaosRow", "chaos", "format_table")

FULL = os.environ.get("CATGA_CHAOS", "").lower() == "full"
REPORT = os.environ.get("CATGA_CHAOS_REPORT")


@dataclass
class ChaosRow:
    scenario: str
    messages: int
    kills: int
    lost: int
    twice: int
    recovery_s: float | None


class Chaos:
    """What a fault test needs from the suite: its size, and a place for its figures."""

    full = FULL

    def __init__(self) -> None:
        self.rows: list[ChaosRow] = []

    @staticmethod
    def size(short: int, full: int) -> int:
        """``full`` under ``make chaos``, else ``short``."""
        return full if FULL else short

    def record(
        self,
        scenario: str,
        *,
        messages: int,
        kills: int = 0,
        lost: int = 0,
        twice: int = 0,
        recovery_s: float | None = None,
    ) -> None:
        """Add a row to the report (written only under ``make chaos``)."""
        self.rows.append(ChaosRow(scenario, messages, kills, lost, twice, recovery_s))


@pytest.fixture
def chaos() -> Iterator[Chaos]:
    """The fault suite's size switch and report (see the module docstring)."""
    report = Chaos()
    yield report
    if REPORT and report.rows:
        with Path(REPORT).open("a", encoding="utf-8") as out:
            for row in report.rows:
                out.write(json.dumps(asdict(row)) + "\n")


def format_table(rows: list[ChaosRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| scenario | messages | kills | lost | handled twice | recovery |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.2f} s"
        lines.append(f"| {r.scenario} | {r.messages:,} | {r.kills} | {r.lost} | {r.twice} | {rec} |")
    return "\n".join(lines)


def main(path: str) -> None:
    rows = [ChaosRow(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]
    print(format_table(rows))


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
