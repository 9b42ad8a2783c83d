"""Benchmark suites run by ``catga bench``.

Each module here defining ``SUITE = "<name>"`` and ``cases(env) -> list[BenchCase]`` is a suite (see
:mod:`catga.bench.harness`); modules starting with ``_`` are shared helpers. Suites are imported only
when run, so one with a missing optional dependency fails alone, with an install hint.
"""

__all__: tuple[str, ...] = ()
