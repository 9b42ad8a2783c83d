"""A class handler in a subpackage, plus a re-import that must not register twice."""

from __future__ import annotations

import catga
from mediator_scan_pkg.handlers_a import on_happened as reexported  # noqa: F401
from mediator_scan_pkg.messages import SEEN, ScanHappened


@catga.handler(lifetime="singleton")
class HappenedCounter:
    async def handle(self, event: ScanHappened) -> None:
        SEEN.append(f"b:{event.n}")
