"""Benchmarks: the harness behind ``catga bench`` and the suites it runs.

Write a suite as a module in :mod:`catga.bench.suites` (see :mod:`catga.bench.harness` for the
contract, and :mod:`catga.bench.phases` to time parts of an operation apart), run it with
``catga bench <suite>`` or :func:`run_suites`. Importing this package needs only the standard
library; tables need ``rich`` and charts ``matplotlib`` (``catga[bench]``).
"""

from catga.bench.discovery import Suite, SuiteUnavailableError, available_suites, load_suite
from catga.bench.harness import (
    AnyOp,
    BenchCase,
    BenchConfig,
    BenchEnv,
    BenchError,
    BenchFailure,
    BenchResult,
    Op,
    SyncOp,
    run_case,
)
from catga.bench.phases import Phased, PhaseResult, Phases
from catga.bench.report import BenchReport, ratios
from catga.bench.runner import ProgressSink, SilentProgress, run_suites

__all__ = (
    "AnyOp",
    "BenchCase",
    "BenchConfig",
    "BenchEnv",
    "BenchError",
    "BenchFailure",
    "BenchReport",
    "BenchResult",
    "Op",
    "PhaseResult",
    "Phased",
    "Phases",
    "ProgressSink",
    "SilentProgress",
    "Suite",
    "SuiteUnavailableError",
    "SyncOp",
    "available_suites",
    "load_suite",
    "ratios",
    "run_case",
    "run_suites",
)
