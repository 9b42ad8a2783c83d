"""Run threads that lose the GIL as often as possible, to expose races in lock-free code paths."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def run_preempted(work: Callable[[int], None], threads: int) -> None:
    """Run ``work(index)`` in ``threads`` threads started together, with a 1 µs GIL switch interval.

    The interval is restored afterwards. An exception in a thread is reported by pytest's
    unhandled-thread-exception check (warnings are errors in this suite).
    """
    start = threading.Barrier(threads)

    def run(index: int) -> None:
        start.wait()
        work(index)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(before)
