"""Function handlers found by scanning."""

from __future__ import annotations

import catga
from mediator_scan_pkg.messages import SEEN, ScanHappened, ScanPing


@catga.handler
async def ping(cmd: ScanPing, ctx: catga.Context) -> str:
    return f"pong:{cmd.text}"


@catga.handler
async def on_happened(event: ScanHappened) -> None:
    SEEN.append(f"a:{event.n}")


async def not_marked(event: ScanHappened) -> None:  # not registered: no mark
    SEEN.append("unmarked")
