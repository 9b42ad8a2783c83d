"""The bit layout of a Snowflake id: how its 63 bits split into timestamp, worker id and sequence.

Re-exported by :mod:`catga.ids` (import it from there); the generator that fills these fields lives
there too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from catga.errors import ConfigurationError

__all__ = ("DEFAULT_EPOCH_MS", "SnowflakeLayout", "SnowflakeParts", "check_int")

DEFAULT_EPOCH_MS = 1_704_067_200_000
"""2024-01-01T00:00:00Z in Unix milliseconds, the default epoch."""

_ID_BITS = 63
_MS_PER_YEAR = 365.25 * 24 * 3600 * 1000


class SnowflakeParts(NamedTuple):
    """The fields of a parsed id."""

    timestamp_ms: int
    """When the id was generated, in Unix milliseconds."""
    worker_id: int
    sequence: int

    def to_datetime(self) -> datetime:
        """Return the timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)


def check_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool).

    Raises:
        ConfigurationError: naming ``name``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True)
class SnowflakeLayout:
    """How the 63 bits of an id are split, and the epoch timestamps count from.

    Presets (bits timestamp/worker/sequence):

    ==================  ==========  =======  =========  ========
    preset              bits        workers  ids/ms     years
    ==================  ==========  =======  =========  ========
    default             44/8/11     256      2048       557
    high_concurrency    41/8/14     256      16384      69
    large_cluster       42/12/9     4096     512        139
    long_lifespan       46/7/10     128      1024       2229
    ==================  ==========  =======  =========  ========

    Args:
        timestamp_bits: bits for milliseconds since ``epoch_ms``.
        worker_bits: bits for the worker id.
        sequence_bits: bits for the per-millisecond sequence.
        epoch_ms: the epoch in Unix milliseconds; must not be in the future.

    Raises:
        ConfigurationError: a field is not a positive int, the bits do not add up to 63, the epoch
            is negative or in the future, or the timestamp range has already run out.
    """

    timestamp_bits: int = 44
    worker_bits: int = 8
    sequence_bits: int = 11
    epoch_ms: int = DEFAULT_EPOCH_MS

    def __post_init__(self) -> None:
        for name in ("timestamp_bits", "worker_bits", "sequence_bits"):
            if check_int(name, getattr(self, name)) < 1:
                raise ConfigurationError(
                    f"SnowflakeLayout.{name} must be at least 1, got {getattr(self, name)}"
                )
        total = self.timestamp_bits + self.worker_bits + self.sequence_bits
        if total != _ID_BITS:
            raise ConfigurationError(
                f"SnowflakeLayout bits must add up to {_ID_BITS}, got {self.timestamp_bits}+"
                f"{self.worker_bits}+{self.sequence_bits}={total}; adjust one of them by "
                f"{_ID_BITS - total:+d}"
            )
        epoch = check_int("epoch_ms", self.epoch_ms)
        now = time.time_ns() // 1_000_000
        if epoch < 0 or epoch > now:
            raise ConfigurationError(
                f"SnowflakeLayout.epoch_ms={epoch} must be between 0 and now ({now} ms); "
                "pick an epoch in the past, such as the day the system went live"
            )
        if now - epoch > self.max_timestamp:
            raise ConfigurationError(
                f"SnowflakeLayout with {self.timestamp_bits} timestamp bits ran out "
                f"{now - epoch - self.max_timestamp} ms ago for epoch_ms={epoch}; "
                "use more timestamp bits or a later epoch"
            )

    @property
    def max_worker_id(self) -> int:
        """The largest worker id this layout can hold."""
        return (1 << self.worker_bits) - 1

    @property
    def max_sequence(self) -> int:
        """The largest sequence number; ``max_sequence + 1`` ids fit in one millisecond."""
        return (1 << self.sequence_bits) - 1

    @property
    def max_timestamp(self) -> int:
        """The largest timestamp field, in milliseconds after ``epoch_ms``."""
        return (1 << self.timestamp_bits) - 1

    @property
    def lifespan_years(self) -> float:
        """How many (Julian) years after ``epoch_ms`` the layout can produce ids."""
        return (self.max_timestamp + 1) / _MS_PER_YEAR

    @classmethod
    def default(cls) -> SnowflakeLayout:
        """44/8/11: 256 workers, 2048 ids/ms each, ~557 years."""
        return cls()

    @classmethod
    def high_concurrency(cls) -> SnowflakeLayout:
        """41/8/14: 256 workers, 16384 ids/ms each, ~69 years (until ~2093)."""
        return cls(timestamp_bits=41, worker_bits=8, sequence_bits=14)

    @classmethod
    def large_cluster(cls) -> SnowflakeLayout:
        """42/12/9: 4096 workers, 512 ids/ms each, ~139 years."""
        return cls(timestamp_bits=42, worker_bits=12, sequence_bits=9)

    @classmethod
    def long_lifespan(cls) -> SnowflakeLayout:
        """46/7/10: 128 workers, 1024 ids/ms each, ~2229 years."""
        return cls(timestamp_bits=46, worker_bits=7, sequence_bits=10)

    def compose(self, timestamp_ms: int, worker_id: int, sequence: int) -> int:
        """Build the id for the given fields (e.g. the smallest id at a time, for range queries).

        Args:
            timestamp_ms: Unix milliseconds, not before ``epoch_ms``.
            worker_id: 0..``max_worker_id``.
            sequence: 0..``max_sequence``.

        Raises:
            ValueError: a field is out of range.
        """
        tick = timestamp_ms - self.epoch_ms
        if not 0 <= tick <= self.max_timestamp:
            raise ValueError(f"timestamp_ms={timestamp_ms} is outside this layout's range")
        if not 0 <= worker_id <= self.max_worker_id:
            raise ValueError(f"worker_id={worker_id} is outside 0..{self.max_worker_id}")
        if not 0 <= sequence <= self.max_sequence:
            raise ValueError(f"sequence={sequence} is outside 0..{self.max_sequence}")
        shift = self.worker_bits + self.sequence_bits
        return (tick << shift) | (worker_id << self.sequence_bits) | sequence

    def parse(self, snowflake_id: int) -> SnowflakeParts:
        """Split an id made with this layout into its fields.

        Raises:
            ValueError: the id is not a non-negative 63-bit int.
        """
        if not isinstance(snowflake_id, int) or not 0 <= snowflake_id < 1 << _ID_BITS:
            raise ValueError(f"{snowflake_id!r} is not a 63-bit Snowflake id")
        return SnowflakeParts(
            (snowflake_id >> (self.worker_bits + self.sequence_bits)) + self.epoch_ms,
            (snowflake_id >> self.sequence_bits) & self.max_worker_id,
            snowflake_id & self.max_sequence,
        )
