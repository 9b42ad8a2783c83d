"""Request/reply on core NATS for :class:`~catga.nats.NatsTransport` (``request`` and ``serve``).

::

    request   <prefix>.rpc.<destination>, reply to a private inbox of the caller (nats-py's request)
    serve     a core subscription in queue group ``group`` (``""``: every server answers); the reply
              goes to the request's reply subject

Requests are at-most-once: a request nobody serves (NATS answers "no responders"), or whose server
dies, ends in :class:`~catga.errors.OperationTimeoutError`. This module never imports the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from catga._transport import answer, drain
from catga.errors import BackendTimeoutError, OperationTimeoutError
from catga.nats._consumer import settle
from catga.nats._errors import translate_errors
from catga.protocols import RawHandler

__all__ = ("NatsRpcEndpoint", "interest_barrier", "request")

logger = logging.getLogger("catga.nats.transport")


async def interest_barrier(client: Client, timeout: float) -> None:
    """Return once the server has processed every SUB this client sent: subscribe() is ready on return.

    One ``flush()`` is not enough: nats-py writes its PING straight to the socket, ahead of commands
    still queued for its flusher task (the SUB), so the PONG can come back before the server saw the
    SUB (measured: ~1% of requests right after ``serve()`` got "no responders"). The second PING is
    written after the first PONG arrived, by when the flusher has written the SUB.
    """
    seconds = max(1, round(timeout))
    await client.flush(timeout=seconds)
    await client.flush(timeout=seconds)


async def request(
    client: Client,
    subject: str,
    destination: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    timeout: float,
) -> tuple[bytes, dict[str, str]]:
    """Send ``body`` to a server of ``subject`` and return its reply ``(body, headers)``.

    Raises:
        OperationTimeoutError: no reply within ``timeout`` seconds (including: nobody serves it).
        BackendUnavailableError: the connection is down.
    """
    try:
        with translate_errors(f"request to {destination!r}", timeout):
            try:
                reply = await client.request(
                    subject, body, timeout=timeout, headers=dict(headers) if headers else None
                )
            except nats.errors.NoRespondersError as exc:
                logger.debug("no server for %s: %r", subject, exc)
                raise OperationTimeoutError(
                    f"request to {destination!r} (nobody serves it)", timeout
                ) from exc
    except BackendTimeoutError as exc:
        raise OperationTimeoutError(f"request to {destination!r}", timeout) from exc.__cause__
    return reply.data, dict(reply.headers) if reply.headers else {}


class NatsRpcEndpoint:
    """A live :meth:`NatsTransport.serve <catga.nats.NatsTransport.serve>`: a core NATS queue
    subscription answering requests with a bytes handler; ``aclose()`` stops it after the requests in
    flight were answered (up to ``drain_timeout``).

    Attributes:
        destination: the destination served.
    """

    def __init__(
        self,
        client: Client,
        destination: str,
        handler: RawHandler,
        max_in_flight: int,
        *,
        timeout: float,
        drain_timeout: float,
        forget: Callable[[NatsRpcEndpoint], None],
    ) -> None:
        self.client = client
        self.destination = destination
        self.handler = handler
        self.nsub: Any = None
        self._timeout = timeout
        self._drain_timeout = drain_timeout
        self._forget = forget
        self._sem = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, subject: str, group: str | None) -> None:
        """Subscribe to ``subject`` in queue group ``group`` and return once the server knows it."""
        with translate_errors(f"serving {subject}", self._timeout):
            self.nsub = await self.client.subscribe(subject, queue=group or "", cb=self.on_msg)
            await interest_barrier(self.client, self._timeout)

    async def on_msg(self, msg: Msg) -> None:
        await self._sem.acquire()
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _answer(self, msg: Msg) -> None:
        headers = dict(msg.headers) if msg.headers else {}
        body, out = await answer(self.handler, msg.data, headers, self.destination, logger)
        if msg.reply:
            await settle(
                self.client.publish(msg.reply, body, headers=out or None),
                f"replying on {self.destination!r}",
            )

    async def aclose(self) -> None:
        """Unsubscribe, then let the requests in flight be answered. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        if self.nsub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(self.nsub.unsubscribe(), self._timeout)
        await drain(set(self._tasks), self._drain_timeout)
