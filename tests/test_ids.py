"""Tests for catga.ids: layouts, generation order and uniqueness, clock policy, worker ids."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

import catga.ids as ids_module
from catga.errors import CatgaError, ConfigurationError
from catga.ids import (
    DEFAULT_EPOCH_MS,
    WORKER_ID_ENV,
    ClockMovedBackwardsError,
    ClockStalledError,
    SnowflakeIdGenerator,
    SnowflakeLayout,
    SnowflakeParts,
    default_generator,
    new_id,
)
from preempt import run_preempted

T0 = 1_750_000_000_000  # a fixed Unix ms time after the default epoch


class FakeClock:
    """A clock in Unix ms whose time moves only when told to, or when ``sleep`` is called."""

    def __init__(self, ms: int = T0, *, sleep_advances: bool = True) -> None:
        self.us = ms * 1000
        self.sleep_advances = sleep_advances
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.us // 1000

    def set(self, ms: int) -> None:
        self.us = ms * 1000

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.sleep_advances:
            self.us += max(1, round(seconds * 1_000_000))


def make(clock: FakeClock, worker_id: int = 1, **kwargs: object) -> SnowflakeIdGenerator:
    return SnowflakeIdGenerator(worker_id, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def assert_strictly_increasing(values: list[int]) -> None:
    bad = [i for i in range(1, len(values)) if values[i] <= values[i - 1]]
    assert not bad, f"not strictly increasing at {bad[:5]}"


# --- layouts -------------------------------------------------------------------------------------


def test_public_names_match_all() -> None:
    public = {n for n in vars(ids_module) if not n.startswith("_")}
    exported = set(ids_module.__all__)
    assert exported <= public
    assert isinstance(ids_module.__all__, tuple)
    defined_here = {
        n
        for n in public
        if getattr(getattr(ids_module, n), "__module__", None) == "catga.ids"
        and not isinstance(getattr(ids_module, n), type(ids_module))
    }
    assert defined_here <= exported, defined_here - exported


def test_default_layout_fields() -> None:
    layout = SnowflakeLayout()
    assert (layout.timestamp_bits, layout.worker_bits, layout.sequence_bits) == (44, 8, 11)
    assert layout.epoch_ms == DEFAULT_EPOCH_MS
    assert datetime.fromtimestamp(DEFAULT_EPOCH_MS / 1000, tz=UTC) == datetime(2024, 1, 1, tzinfo=UTC)
    assert layout.max_worker_id == 255
    assert layout.max_sequence == 2047
    assert layout.max_timestamp == 2**44 - 1
    assert 557 < layout.lifespan_years < 558
    assert SnowflakeLayout.default() == layout


@pytest.mark.parametrize(
    ("preset", "bits", "workers", "per_ms", "min_years"),
    [
        ("default", (44, 8, 11), 256, 2048, 557),
        ("high_concurrency", (41, 8, 14), 256, 16384, 69),
        ("large_cluster", (42, 12, 9), 4096, 512, 139),
        ("long_lifespan", (46, 7, 10), 128, 1024, 2229),
    ],
)
def test_presets(preset: str, bits: tuple[int, int, int], workers: int, per_ms: int, min_years: int) -> None:
    layout: SnowflakeLayout = getattr(SnowflakeLayout, preset)()
    assert (layout.timestamp_bits, layout.worker_bits, layout.sequence_bits) == bits
    assert sum(bits) == 63
    assert layout.max_worker_id + 1 == workers
    assert layout.max_sequence + 1 == per_ms
    assert min_years < layout.lifespan_years < min_years + 1
    # the largest id of the layout still fits in 63 bits and parses back
    top = layout.compose(layout.epoch_ms + layout.max_timestamp, layout.max_worker_id, layout.max_sequence)
    assert top == 2**63 - 1
    assert layout.parse(top) == (
        layout.epoch_ms + layout.max_timestamp,
        layout.max_worker_id,
        layout.max_sequence,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timestamp_bits": 43}, r"add up to 63, got 43\+8\+11=62"),
        ({"timestamp_bits": 45}, r"add up to 63"),
        ({"timestamp_bits": 0, "worker_bits": 19, "sequence_bits": 44}, r"timestamp_bits must be"),
        ({"worker_bits": 0, "sequence_bits": 19}, r"worker_bits must be at least 1, got 0"),
        ({"sequence_bits": 0, "worker_bits": 19}, r"sequence_bits must be at least 1"),
        ({"worker_bits": -1, "sequence_bits": 20}, r"worker_bits must be at least 1, got -1"),
        ({"worker_bits": 8.0}, r"worker_bits must be an int"),
        ({"worker_bits": True}, r"worker_bits must be an int"),
        ({"epoch_ms": -1}, r"epoch_ms=-1 must be between 0 and now"),
        ({"epoch_ms": "2024"}, r"epoch_ms must be an int"),
        ({"timestamp_bits": 20, "worker_bits": 20, "sequence_bits": 23}, r"ran out .* ms ago"),
    ],
)
def test_layout_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SnowflakeLayout(**kwargs)  # type: ignore[arg-type]


def test_layout_epoch_in_future_rejected() -> None:
    future = time.time_ns() // 1_000_000 + 86_400_000
    with pytest.raises(ConfigurationError, match="pick an epoch in the past"):
        SnowflakeLayout(epoch_ms=future)


def test_layout_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="add up to 63"):
        SnowflakeLayout(sequence_bits=12)


def test_compose_rejects_out_of_range_fields() -> None:
    layout = SnowflakeLayout()
    with pytest.raises(ValueError, match="worker_id=256"):
        layout.compose(T0, 256, 0)
    with pytest.raises(ValueError, match="sequence=2048"):
        layout.compose(T0, 0, 2048)
    with pytest.raises(ValueError, match="timestamp_ms"):
        layout.compose(layout.epoch_ms - 1, 0, 0)


@pytest.mark.parametrize("bad", [-1, 2**63, "12", 1.5])
def test_parse_rejects_non_ids(bad: object) -> None:
    with pytest.raises(ValueError, match="not a 63-bit Snowflake id"):
        SnowflakeLayout().parse(bad)  # type: ignore[arg-type]


# --- generation ----------------------------------------------------------------------------------


def test_parse_round_trip_with_fake_clock() -> None:
    clock = FakeClock()
    gen = make(clock, worker_id=42)
    first, second = gen.next_id(), gen.next_id()
    clock.set(T0 + 7)
    third = gen.next_id()
    assert gen.parse(first) == SnowflakeParts(T0, 42, 0)
    assert gen.parse(second) == SnowflakeParts(T0, 42, 1)
    assert gen.parse(third) == SnowflakeParts(T0 + 7, 42, 0)
    assert gen.layout.compose(T0 + 7, 42, 0) == third
    assert gen.parse(third).to_datetime() == datetime.fromtimestamp((T0 + 7) / 1000, tz=UTC)
    assert first >> 19 == T0 - DEFAULT_EPOCH_MS  # timestamp is the top field


@pytest.mark.parametrize(
    "layout",
    [
        SnowflakeLayout.default(),
        SnowflakeLayout.high_concurrency(),
        SnowflakeLayout.large_cluster(),
        SnowflakeLayout.long_lifespan(),
    ],
)
def test_parse_round_trip_real_clock(layout: SnowflakeLayout) -> None:
    gen = SnowflakeIdGenerator(layout.max_worker_id, layout=layout)
    before = time.time_ns() // 1_000_000
    value = gen.next_id()
    after = time.time_ns() // 1_000_000
    parts = gen.parse(value)
    assert before <= parts.timestamp_ms <= after
    assert parts.worker_id == layout.max_worker_id
    assert 0 <= value < 2**63
    assert layout.compose(*parts) == value


def test_next_id_str() -> None:
    clock = FakeClock()
    gen = make(clock)
    text = gen.next_id_str()
    assert text.isdigit()
    assert gen.parse(int(text)) == SnowflakeParts(T0, 1, 0)


def test_unique_and_ordered_across_threads() -> None:
    gen = SnowflakeIdGenerator(3)
    per_thread = 20_000
    results: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(out: list[int]) -> None:
        start.wait()
        nxt = gen.next_id
        for _ in range(per_thread):
            out.append(nxt())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert len(out) == per_thread
        assert_strictly_increasing(out)
    everything = [i for out in results for i in out]
    assert len(set(everything)) == 8 * per_thread
    assert {gen.parse(i).worker_id for i in everything} == {3}
    assert gen.next_id() > max(everything)


def test_next_ids_unique_across_threads() -> None:
    gen = SnowflakeIdGenerator(1)
    results: list[list[int]] = [[] for _ in range(4)]

    def work(out: list[int]) -> None:
        for _ in range(50):
            out.extend(gen.next_ids(97))
            out.append(gen.next_id())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert_strictly_increasing(out)
    everything = [i for out in results for i in out]
    assert len(set(everything)) == len(everything) == 4 * 50 * 98


async def test_unique_and_ordered_across_tasks() -> None:
    gen = SnowflakeIdGenerator(2)
    in_order: list[int] = []

    async def work() -> list[int]:
        mine: list[int] = []
        for i in range(400):
            value = gen.next_id()
            in_order.append(value)
            mine.append(value)
            if i % 3 == 0:
                await asyncio.sleep(0)
        return mine

    per_task = await asyncio.gather(*(work() for _ in range(50)))
    for mine in per_task:
        assert_strictly_increasing(mine)
    assert_strictly_increasing(in_order)  # the global generation order, across tasks
    assert len(set(in_order)) == 50 * 400


def test_next_ids_contiguous_within_a_millisecond() -> None:
    clock = FakeClock()
    gen = make(clock)
    head = gen.next_id()
    batch = gen.next_ids(100)
    assert batch == list(range(head + 1, head + 101))
    assert gen.next_id() == head + 101
    assert gen.next_ids(0) == []
    assert clock.sleeps == []


def test_next_ids_larger_than_sequence_spans_milliseconds() -> None:
    clock = FakeClock()
    gen = make(clock, worker_id=5)
    per_ms = gen.layout.max_sequence + 1
    gen.next_ids(10)
    n = 3 * per_ms + 123
    batch = gen.next_ids(n)
    assert len(batch) == n
    assert_strictly_increasing(batch)
    parts = [gen.parse(i) for i in batch]
    stamps = sorted({p.timestamp_ms for p in parts})
    assert len(stamps) == 4 and stamps[0] == T0
    assert all(p.worker_id == 5 for p in parts)
    # each millisecond's slice is contiguous and its sequence fills up before moving on
    for stamp in stamps:
        seqs = [p.sequence for p in parts if p.timestamp_ms == stamp]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert next(p.sequence for p in parts if p.timestamp_ms == T0) == 10
    assert max(p.sequence for p in parts if p.timestamp_ms == stamps[1]) == gen.layout.max_sequence
    assert clock.sleeps  # it waited for the following milliseconds
    assert gen.next_id() > batch[-1]


def test_next_ids_rejects_negative() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        SnowflakeIdGenerator(0).next_ids(-1)


def test_sequence_overflow_waits_for_next_millisecond() -> None:
    clock = FakeClock()
    gen = make(clock)
    per_ms = gen.layout.max_sequence + 1
    first_ms = [gen.next_id() for _ in range(per_ms)]
    assert clock.sleeps == []
    assert gen.parse(first_ms[-1]) == SnowflakeParts(T0, 1, per_ms - 1)
    following = gen.next_id()
    assert clock.sleeps, "expected a wait for the next millisecond"
    assert gen.parse(following) == SnowflakeParts(T0 + 1, 1, 0)
    assert following > first_ms[-1]


def test_stalled_clock_raises_instead_of_hanging() -> None:
    clock = FakeClock(sleep_advances=False)
    gen = make(clock)
    gen.next_ids(gen.layout.max_sequence + 1)
    with pytest.raises(ClockStalledError, match="has not advanced") as info:
        gen.next_id()
    assert info.value.last_ms == T0
    assert isinstance(info.value, CatgaError)
    assert sum(clock.sleeps) >= 1.0


def test_clock_backwards_within_bound_waits_then_continues() -> None:
    clock = FakeClock()
    gen = make(clock, max_backwards_ms=5)
    before = [gen.next_id() for _ in range(3)]
    clock.set(T0 - 4)
    after = gen.next_id()
    assert after > before[-1]
    assert gen.parse(after).timestamp_ms >= T0
    assert sum(clock.sleeps) == pytest.approx(0.004)
    assert len({*before, after}) == 4


def test_clock_backwards_polls_until_the_clock_catches_up() -> None:
    clock = FakeClock()
    requested: list[float] = []

    def slow_sleep(seconds: float) -> None:  # the clock gains only 1 ms per sleep
        requested.append(seconds)
        clock.us += 1000

    gen = SnowflakeIdGenerator(1, clock=clock, sleep=slow_sleep, max_backwards_ms=5)
    last = gen.next_id()
    clock.set(T0 - 2)
    value = gen.next_id()
    assert value == last + 1  # same millisecond as before, next sequence number
    assert requested == [pytest.approx(0.002), pytest.approx(0.001)]


def test_clock_backwards_beyond_bound_raises() -> None:
    clock = FakeClock()
    gen = make(clock, max_backwards_ms=5)
    last = gen.next_id()
    clock.set(T0 - 10)
    with pytest.raises(ClockMovedBackwardsError, match="moved backwards by 10 ms") as info:
        gen.next_id()
    err = info.value
    assert (err.last_ms, err.now_ms, err.max_backwards_ms) == (T0, T0 - 10, 5)
    assert isinstance(err, CatgaError)
    assert clock.sleeps == []  # waiting could not help, so it did not wait
    with pytest.raises(ClockMovedBackwardsError):
        gen.next_ids(3)
    clock.set(T0)  # once the clock is back, generation continues without repeating
    assert gen.next_id() == last + 1


def test_clock_backwards_that_does_not_recover_raises_after_the_bound() -> None:
    clock = FakeClock(sleep_advances=False)
    gen = make(clock, max_backwards_ms=5)
    gen.next_id()
    clock.set(T0 - 2)
    with pytest.raises(ClockMovedBackwardsError):
        gen.next_id()
    assert 0 < sum(clock.sleeps) <= 0.005


def test_zero_backwards_bound_raises_at_once() -> None:
    clock = FakeClock()
    gen = make(clock, max_backwards_ms=0)
    gen.next_id()
    clock.set(T0 - 1)
    with pytest.raises(ClockMovedBackwardsError):
        gen.next_id()
    assert clock.sleeps == []


def test_clock_outside_layout_range() -> None:
    clock = FakeClock(DEFAULT_EPOCH_MS - 5)
    gen = make(clock)
    with pytest.raises(ConfigurationError, match="before the layout epoch"):
        gen.next_id()
    clock.set(DEFAULT_EPOCH_MS + SnowflakeLayout().max_timestamp + 1)
    with pytest.raises(ConfigurationError, match="past the end of the layout"):
        gen.next_id()
    clock.set(T0)
    assert gen.parse(gen.next_id()).timestamp_ms == T0


def test_invalid_max_backwards() -> None:
    with pytest.raises(ConfigurationError, match="max_backwards_ms must be >= 0"):
        SnowflakeIdGenerator(0, max_backwards_ms=-1)


# --- worker ids ----------------------------------------------------------------------------------


def test_worker_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_ID_ENV, "7")
    gen = SnowflakeIdGenerator()
    assert gen.worker_id == 7
    assert gen.parse(gen.next_id()).worker_id == 7
    assert SnowflakeIdGenerator(9).worker_id == 9  # an explicit id wins


def test_worker_id_defaults_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_ID_ENV, raising=False)
    assert SnowflakeIdGenerator().worker_id == 0


def test_worker_id_env_not_an_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_ID_ENV, "node-1")
    with pytest.raises(ConfigurationError, match="CATGA_WORKER_ID='node-1' is not an integer"):
        SnowflakeIdGenerator()


def test_worker_id_env_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_ID_ENV, "256")
    with pytest.raises(ConfigurationError, match=r"worker_id 256 is out of range.*0\.\.255"):
        SnowflakeIdGenerator()


@pytest.mark.parametrize("bad", [-1, 256, 10_000])
def test_worker_id_out_of_range(bad: int) -> None:
    with pytest.raises(ConfigurationError, match=r"0\.\.255"):
        SnowflakeIdGenerator(bad)


def test_worker_id_range_follows_layout() -> None:
    assert SnowflakeIdGenerator(4095, layout=SnowflakeLayout.large_cluster()).worker_id == 4095
    with pytest.raises(ConfigurationError, match=r"0\.\.127"):
        SnowflakeIdGenerator(128, layout=SnowflakeLayout.long_lifespan())
    with pytest.raises(ConfigurationError, match="worker_id must be an int"):
        SnowflakeIdGenerator(True)


# --- default generator ---------------------------------------------------------------------------


def test_new_id_uses_the_default_generator() -> None:
    gen = default_generator()
    assert default_generator() is gen
    assert new_id.__self__ is gen  # type: ignore[attr-defined]  # a bound method: no extra frame
    values = [new_id() for _ in range(1000)]
    assert_strictly_increasing(values)
    assert gen.next_id() > values[-1]
    assert gen.parse(values[0]).worker_id == gen.worker_id
    assert gen.layout == SnowflakeLayout.default()


def test_default_generator_reads_env_lazily() -> None:
    code = (
        "import os\n"
        "from catga.ids import new_id, default_generator\n"
        f"os.environ[{WORKER_ID_ENV!r}] = '9'\n"
        "print(default_generator().parse(new_id()).worker_id, default_generator().worker_id)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != WORKER_ID_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["9", "9"]


def test_default_generator_bad_env_fails_on_first_id_not_import() -> None:
    code = (
        "import catga.ids\n"
        "try:\n"
        "    catga.ids.new_id()\n"
        "except catga.errors.ConfigurationError as exc:\n"
        "    print('ConfigurationError', exc)\n"
    )
    env = dict(os.environ, **{WORKER_ID_ENV: "999"})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("ConfigurationError worker_id 999 is out of range")


def test_threads_preempted_mid_call_never_repeat_or_go_back() -> None:
    # A tiny switch interval makes threads lose the GIL between reading the window and taking from
    # its counter, and between reading the clock and taking the lock: the races of the lock-free path.
    gen = SnowflakeIdGenerator(4)
    results: list[list[int]] = [[] for _ in range(6)]

    def work(w: int) -> None:
        out = results[w]
        for i in range(6_000):
            if w % 2 and i % 50 == 0:
                out.extend(gen.next_ids(40))
            else:
                out.append(gen.next_id())

    run_preempted(work, 6)
    for out in results:
        assert_strictly_increasing(out)
    everything = [i for out in results for i in out]
    assert len(set(everything)) == len(everything)
    assert gen.next_id() > max(everything)


def test_a_default_generator_adopting_a_leased_id_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_ID_ENV, "7")
    gen = ids_module._DefaultGenerator()
    refused: list[int] = []

    def guard() -> None:
        if refused:
            raise RuntimeError("lease gone")

    gen._adopt(3, guard)
    first = gen.next_id()
    assert gen.worker_id == 3 and gen.parse(first).worker_id == 3
    refused.append(1)
    time.sleep(0.002)  # the next millisecond opens a new window: the guard runs and refuses
    with pytest.raises(RuntimeError, match="lease gone"):
        gen.next_id()


def test_switching_worker_id_mid_millisecond_keeps_ids_increasing() -> None:
    clock = FakeClock()
    gen = make(clock, worker_id=200)
    before = [gen.next_id() for _ in range(3)]
    gen._adopt(5, None)  # a smaller worker id in the same millisecond would give smaller ids
    after = gen.next_id()
    assert after > before[-1]
    assert gen.parse(after) == SnowflakeParts(T0 + 1, 5, 0)
    assert clock.sleeps  # it waited for the next millisecond


def test_invalidating_the_window_sends_the_next_id_through_the_guard_at_once() -> None:
    clock = FakeClock()
    gen = make(clock, worker_id=3)
    refused: list[bool] = []

    def guard() -> None:
        if refused:
            raise RuntimeError("refused")

    gen._adopt(3, guard)
    gen.next_id()
    gen.next_id()  # same millisecond: the lock-free path, no guard
    refused.append(True)
    gen.next_id()  # still the same window: not checked yet
    gen._invalidate()
    with pytest.raises(RuntimeError, match="refused"):
        gen.next_id()  # same millisecond, but the window is gone
