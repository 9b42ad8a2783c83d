"""The pub/sub side of :class:`~catga.redis.RedisTransport`: at-most-once subscriptions without a group.

One redis-py pub/sub connection per transport carries every channel; a reader task dispatches each
message to the subscriptions of its channel and resolves ``SUBSCRIBE`` confirmations, so ``add`` returns
only once the server delivers to us. redis-py reconnects and re-subscribes after a connection loss;
messages published meanwhile are lost (at-most-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from catga.errors import BackendUnavailableError
from catga.redis._errors import redis_errors
from catga.redis.connection import RedisSettings

if TYPE_CHECKING:
    from catga.redis._consumer import RedisSubscription

__all__ = ("PubSubHub",)

logger = logging.getLogger("catga.redis.transport")


class PubSubHub:
    """Channels → subscriptions on one pub/sub connection (opened on first use).

    Args:
        settings: where to connect (the transport client's settings; TLS options come from its URL).
        timeout: seconds allowed for ``SUBSCRIBE`` and its confirmation.
    """

    def __init__(self, settings: RedisSettings, timeout: float) -> None:
        self.timeout = timeout
        self._client = _pubsub_client(settings, timeout)
        self._ps: Any = self._client.pubsub()
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[str, tuple[RedisSubscription, ...]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def add(self, channel: str, sub: RedisSubscription) -> None:
        """Deliver the messages of ``channel`` to ``sub`` too; return once Redis confirmed it."""
        async with self._lock:
            subs = self._channels.get(channel, ())
            self._channels[channel] = (*subs, sub)
            sub._channel = channel
            ready = self._ready.get(channel)
            if ready is None:
                ready = self._ready[channel] = asyncio.get_running_loop().create_future()
                with redis_errors(f"SUBSCRIBE {channel}", self.timeout):
                    await asyncio.wait_for(self._ps.subscribe(channel), self.timeout)
                if self._task is None:
                    self._task = asyncio.ensure_future(self._loop())
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.timeout)
        except TimeoutError:
            raise BackendUnavailableError(
                f"Redis did not confirm SUBSCRIBE {channel} within {self.timeout} s", backend="redis"
            ) from None

    async def remove(self, channel: str, sub: RedisSubscription) -> None:
        """Stop delivering ``channel`` to ``sub``; unsubscribe when nobody listens any more."""
        async with self._lock:
            rest = tuple(s for s in self._channels.get(channel, ()) if s is not sub)
            if rest:
                self._channels[channel] = rest
                return
            self._channels.pop(channel, None)
            self._ready.pop(channel, None)
            if not self._closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._ps.unsubscribe(channel), self.timeout)

    async def _loop(self) -> None:
        pause = 0.05
        while True:
            try:
                with redis_errors("reading pub/sub messages", self.timeout):
                    msg = await self._ps.get_message(timeout=1.0)
            except Exception as exc:
                logger.warning("pub/sub connection failed (%s); reconnecting in %.2f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            if msg is None:
                continue
            kind = msg["type"]
            channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else str(msg["channel"])
            if kind == b"message" or kind == "message":
                for sub in self._channels.get(channel, ()):
                    sub._on_frame(msg["data"])
            elif kind == b"subscribe" or kind == "subscribe":
                ready = self._ready.get(channel)
                if ready is not None and not ready.done():
                    ready.set_result(None)

    async def aclose(self) -> None:
        """Stop reading and close the connection. Idempotent."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ps.aclose(), self.timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.aclose(), self.timeout)


def _pubsub_client(settings: RedisSettings, timeout: float) -> aioredis.Redis:
    """A redis-py asyncio client for pub/sub on the same server (TLS settings come from the URL)."""
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": timeout,
        "client_name": settings.client_name,
    }
    if settings.ssl_context is not None:
        return aioredis.Redis.from_url(settings.url, **common)
    if settings.unix_path is not None:
        return aioredis.Redis(
            unix_socket_path=settings.unix_path,
            db=settings.db,
            username=settings.username,
            password=settings.password,
            **common,
        )
    return aioredis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        **common,
    )
