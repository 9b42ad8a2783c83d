"""Latency phases: where the time of one operation goes, reported next to the operation's latency.

A case whose operation has parts worth timing apart (the steps of a workflow, say) creates a
:class:`Phases` recorder in its factory, records durations into it from its operation (or from code
the operation waits for, in another task or thread), and yields ``Phased(op, phases)`` instead of
the bare operation::

    @asynccontextmanager
    async def make(env: BenchEnv) -> AsyncIterator[Phased]:
        phases = Phases(("send", "reply"))
        send, reply = phases.series("send"), phases.series("reply")

        async def op(worker: int) -> None:
            t0 = perf_counter_ns()
            await client.send(...)
            t1 = perf_counter_ns()
            send(t1 - t0)
            await client.reply(...)
            reply(perf_counter_ns() - t1)

        yield Phased(op, phases)

The harness unwraps the operation (its timing loop is the same as for a bare one), clears the
recorder after the warm-up, and after the measured run stores one :class:`PhaseResult` per phase
(count, P50/P95/P99 and mean) in :attr:`BenchResult.phases <catga.bench.harness.BenchResult>`.
Cases that yield a bare operation pay nothing and report no phases.

The cost per recorded phase is what the case spends on it: typically one ``perf_counter_ns()`` and
one ``array('q').append`` (a bound method from :meth:`Phases.series`, no allocation). Recording is
safe from several tasks and from several threads (each append is one C call under the GIL); the
recorder is not meant for free-threaded builds.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from catga.bench._measure import percentiles

__all__ = ("PhaseResult", "Phased", "Phases")


@dataclass(frozen=True)
class PhaseResult:
    """The latency of one phase over the timed operations of one measured run.

    Attributes:
        name: The phase's name (``"step 1"``).
        count: Number of recorded durations (usually one per timed operation).
        p50_us: Median, in microseconds.
        p95_us: 95th percentile, in microseconds.
        p99_us: 99th percentile, in microseconds.
        mean_us: Mean, in microseconds (means of phases that tile an operation add up to its mean;
            percentiles do not).
    """

    name: str
    count: int
    p50_us: float
    p95_us: float
    p99_us: float
    mean_us: float


class Phases:
    """Records durations (ns) per phase name; the harness resets it and summarises it per run.

    Args:
        names: Phase names to declare up front, in the order reports show them (phases first
            recorded later come after them).
    """

    __slots__ = ("_series",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._series: dict[str, array[int]] = {}
        for name in names:
            self._series.setdefault(name, array("q"))

    def series(self, name: str) -> Callable[[int], None]:
        """The bound ``append`` of phase ``name``'s durations (ns), declared if new.

        Stays valid across :meth:`reset` (which empties the arrays in place): fetch it once at set-up
        and call it on the hot path.
        """
        found = self._series.get(name)
        if found is None:
            found = self._series.setdefault(name, array("q"))
        return found.append

    def record(self, name: str, ns: int) -> None:
        """Record one duration of ``ns`` nanoseconds for phase ``name``."""
        self.series(name)(ns)

    def marks_recorder(self, names: Sequence[str]) -> Callable[[Sequence[int]], None]:
        """A function recording consecutive timestamps as phases: ``names[i]`` lasted
        ``marks[i + 1] - marks[i]``.

        Fetch it once at set-up (it holds the phases' bound appends, valid across :meth:`reset`); a
        call costs about as much as the appends it makes.

        The returned function raises :class:`ValueError` when ``marks`` is not exactly one longer
        than ``names`` (a phase ran twice or not at all), recording nothing.
        """
        appends = tuple(self.series(name) for name in names)
        expected = len(appends) + 1

        def record(marks: Sequence[int]) -> None:
            if len(marks) != expected:
                raise ValueError(
                    f"{expected - 1} phases need {expected} timestamps, got {len(marks)}; "
                    "did a phase run twice or not at all?"
                )
            previous = marks[0]
            for append, mark in zip(appends, marks[1:], strict=True):
                append(mark - previous)
                previous = mark

        return record

    @property
    def names(self) -> tuple[str, ...]:
        """The phase names, in report order."""
        return tuple(self._series)

    def reset(self) -> None:
        """Forget every recorded duration (the harness calls this after the warm-up)."""
        for values in self._series.values():
            del values[:]

    def results(self) -> tuple[PhaseResult, ...]:
        """One :class:`PhaseResult` per phase with at least one duration, in report order."""
        out: list[PhaseResult] = []
        for name, values in self._series.items():
            if not values:
                continue
            p50, p95, p99 = percentiles([values], (50.0, 95.0, 99.0))
            out.append(
                PhaseResult(
                    name=name,
                    count=len(values),
                    p50_us=p50 / 1e3,
                    p95_us=p95 / 1e3,
                    p99_us=p99 / 1e3,
                    mean_us=sum(values) / len(values) / 1e3,
                )
            )
        return tuple(out)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n!r}: {len(v)}" for n, v in self._series.items())
        return f"Phases({{{sizes}}})"


@dataclass(frozen=True)
class Phased:
    """An operation that also reports latency phases: yield it from a case's factory.

    Attributes:
        op: The operation (an async ``Op``, or a blocking ``SyncOp`` for ``mode="threads"``).
        phases: The recorder the operation records into.
    """

    op: Callable[[int], object]
    phases: Phases
