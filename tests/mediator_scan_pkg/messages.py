"""Messages of the scanned package."""

from __future__ import annotations

from dataclasses import dataclass

from catga import Command, Event


@dataclass(frozen=True)
class ScanPing(Command[str]):
    text: str


@dataclass(frozen=True)
class ScanHappened(Event):
    n: int


SEEN: list[str] = []
