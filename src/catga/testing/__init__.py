"""Testing helpers shipped with catga.

* In-memory doubles for a user's tests: :func:`capture` (what an app sends, publishes and exports),
  :func:`given` (given / when / then for aggregates), :class:`FakeClock` (time that moves when the test
  says, through :mod:`catga.clock`), :class:`MemoryBus` (several apps on one in-memory broker).
* Real servers and clusters: :class:`NatsServer`, :class:`RedisServer`, :class:`NatsCluster`.

The pytest fixtures and markers live in :mod:`catga.testing.pytest_plugin`, which pytest loads by
itself once catga is installed (not imported here, so importing :mod:`catga.testing` does not need
pytest). See ``docs/testing.md``.
"""

from catga.testing.aggregates import AggregateOutcome, AggregateScenario, given
from catga.testing.bus import MemoryBus
from catga.testing.capture import Captured, MessageLog, capture
from catga.testing.clock import FakeClock
from catga.testing.cluster import NatsCluster
from catga.testing.redis_cluster import RedisCluster
from catga.testing.redis_sentinel import RedisSentinel
from catga.testing.servers import (
    NatsServer,
    RedisServer,
    ServerStartError,
    check_loopback_url,
    find_nats_server,
    find_redis_server,
    free_port,
    url_from_env,
)

__all__ = (
    "AggregateOutcome",
    "AggregateScenario",
    "Captured",
    "FakeClock",
    "MemoryBus",
    "MessageLog",
    "NatsCluster",
    "NatsServer",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "ServerStartError",
    "capture",
    "check_loopback_url",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "given",
    "url_from_env",
)
