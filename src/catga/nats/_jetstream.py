"""The JetStream consumers of :class:`~catga.nats.NatsTransport`: their names, creation and lookup.

One transport creates per destination a consumer of its events stream (one per subscription group, a
private one per ``group=None`` subscription) and one of its commands stream (shared by every
subscriber). Names are readable and collision-free (:func:`consumer_name`); a shared consumer that
exists already with settings that cannot change is used as it is (:func:`add_consumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re

import nats.js.errors
from nats.js import JetStreamContext, api

from catga.errors import ConfigurationError
from catga.nats._errors import translate_errors

__all__ = ("add_consumer", "consumer_name", "delete_consumer", "has_consumer", "subject_matches")

logger = logging.getLogger("catga.nats.transport")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the NATS subject filter ``pattern`` (``*`` one token, ``>`` the rest) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def consumer_name(kind: str, destination: str, group: str | None) -> str:
    """A readable, collision-free JetStream consumer name for ``(kind, destination, group)``."""
    raw = f"{kind}\0{destination}\0{group or ''}"
    digest = hashlib.blake2b(raw.encode(), digest_size=6).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", destination)[:40]
    if group:
        readable += "_" + re.sub(r"[^A-Za-z0-9_-]", "_", group)[:24]
    return f"{kind}_{readable}_{digest}"


async def add_consumer(
    js: JetStreamContext, stream: str, config: api.ConsumerConfig, *, prefix: str, timeout: float
) -> None:
    """Create the consumer ``config`` on ``stream``; one that exists with settings that cannot change
    is used as it is (logged).

    Raises:
        ConfigurationError: the server refused the consumer and none of that name exists (the stream
            is not catga's, for ``prefix``).
        BackendError: the server failed or did not answer within ``timeout``.
    """
    name = config.name
    with translate_errors(f"creating JetStream consumer {name!r} on {stream!r}", timeout):
        try:
            await js.add_consumer(stream, config)
        except nats.js.errors.BadRequestError as exc:
            # A shared consumer that exists with settings that cannot change: bind to it as it is.
            try:
                await js.consumer_info(stream, name or "")
            except nats.js.errors.NotFoundError:
                raise ConfigurationError(
                    f"cannot create JetStream consumer {name!r} on stream {stream!r}: "
                    f"{exc.description}; check the stream is catga's (prefix={prefix!r})"
                ) from exc
            logger.warning("using existing JetStream consumer %s on %s as is: %s", name, stream, exc)


async def delete_consumer(js: JetStreamContext, stream: str, name: str, timeout: float) -> None:
    """Delete a JetStream consumer (private ones, on close); a missing one is fine."""
    with (
        translate_errors(f"deleting JetStream consumer {name!r}", timeout),
        contextlib.suppress(nats.js.errors.NotFoundError),
    ):
        await asyncio.wait_for(js.delete_consumer(stream, name), timeout)


async def has_consumer(js: JetStreamContext, stream: str, subject: str, timeout: float) -> bool:
    """Whether a consumer of ``stream`` reads ``subject`` (lists every consumer: for slow paths)."""
    offset = 0
    with translate_errors(f"listing the consumers of stream {stream!r}", timeout):
        while True:
            page = await js.consumers_info(stream, offset=offset)
            for info in page:
                config = info.config
                filters = list(config.filter_subjects or ())
                if config.filter_subject:
                    filters.append(config.filter_subject)
                if not filters or any(subject_matches(f, subject) for f in filters):
                    return True
            if not page:
                return False
            offset += len(page)
