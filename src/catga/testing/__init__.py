"""Testing helpers shipped with catga: real servers and clusters for tests (more to come).

The pytest fixtures live in :mod:`catga.testing.pytest_plugin` (not imported here, so
importing :mod:`catga.testing` does not need pytest).
"""

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
    "NatsCluster",
    "NatsServer",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "ServerStartError",
    "check_loopback_url",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "url_from_env",
)
