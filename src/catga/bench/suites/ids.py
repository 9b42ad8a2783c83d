"""Id generation: catga's Snowflake generator against a peer Snowflake library and UUIDs.

Case ``next_id``: one new id per call, from OS threads (id generation is synchronous; concurrency 1 is a
plain loop). Implementations:

* ``catga``: :func:`catga.ids.new_id` — 63-bit Snowflake, thread-safe, strictly increasing, sequence
  overflow waits for the next millisecond (the default layout gives 2,048 ids per millisecond per
  worker, so about 2M ids/s is the layout's own ceiling).
* ``snowflake-id``: ``next(SnowflakeGenerator(1))`` from the ``snowflake-id`` package, retried while it
  returns None (it does on sequence overflow and on a clock step back). It has no lock: from several
  threads it can hand out duplicates, which this case does not check.
* ``uuid4``: ``uuid.uuid4()`` (random, 128-bit, not time-ordered).
* ``uuid7``: ``uuid6.uuid7()`` (time-ordered UUID, RFC 9562), when the ``uuid6`` package is installed.

Every implementation first makes 20,000 ids in one thread and checks they are distinct (and, for catga,
strictly increasing).

Example::

    catga bench ids --concurrency 1,4,16
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from catga.bench.harness import BenchCase, BenchEnv, BenchError, SyncOp

__all__ = ("SUITE", "cases")

SUITE = "ids"

_CHECK = 20_000


def _checked(impl: str, make: Callable[[], Any], *, ordered: bool = False) -> SyncOp:
    sample = [make() for _ in range(_CHECK)]
    if len(set(sample)) != _CHECK:
        raise BenchError(f"{impl}: duplicate ids in {_CHECK} made by one thread")
    if ordered and any(b <= a for a, b in itertools.pairwise(sample)):
        raise BenchError(f"{impl}: ids are not strictly increasing")

    def op(worker: int) -> None:
        make()

    return op


@asynccontextmanager
async def _catga(env: BenchEnv) -> AsyncIterator[SyncOp]:
    from catga.ids import new_id

    yield _checked("catga", new_id, ordered=True)


@asynccontextmanager
async def _snowflake_id(env: BenchEnv) -> AsyncIterator[SyncOp]:
    try:
        from snowflake import SnowflakeGenerator
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise BenchError('snowflake-id is not installed: pip install "catga[bench]"') from exc
    gen = SnowflakeGenerator(1)

    def make() -> int:
        value: int | None = next(gen)
        while value is None:  # sequence used up in this millisecond (or the clock stepped back)
            value = next(gen)
        return value

    yield _checked("snowflake-id", make)


@asynccontextmanager
async def _uuid4(env: BenchEnv) -> AsyncIterator[SyncOp]:
    yield _checked("uuid4", uuid.uuid4)


@asynccontextmanager
async def _uuid7(env: BenchEnv) -> AsyncIterator[SyncOp]:
    try:
        from uuid6 import uuid7
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise BenchError('uuid6 is not installed: pip install "catga[bench]"') from exc
    yield _checked("uuid7", uuid7)


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases (see the module docstring)."""
    return [
        BenchCase("next_id", "catga", _catga, mode="threads", note="catga.ids.new_id(); OS threads"),
        BenchCase(
            "next_id", "snowflake-id", _snowflake_id, mode="threads", note="next(SnowflakeGenerator); no lock"
        ),
        BenchCase("next_id", "uuid4", _uuid4, mode="threads", note="uuid.uuid4()"),
        BenchCase("next_id", "uuid7", _uuid7, mode="threads", note="uuid6.uuid7()"),
    ]
