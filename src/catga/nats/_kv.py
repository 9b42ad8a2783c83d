"""A small key/value layer on a JetStream stream, for the outbox, inbox, DLQ, lock and cache.

Layout: a stream ``KV_<bucket>`` with subjects ``$KV.<bucket>.>`` and one message kept per subject
(``max_msgs_per_subject = 1``), direct get and per-message TTL enabled -- the layout of a NATS KV
bucket, so ``nats kv get <bucket> <token>`` shows an entry. Keys are catga identifiers mapped to one
token by :func:`~catga.nats._subjects.subject_token`. The *revision* of an entry is its stream sequence.

Why not nats-py's ``KeyValue``: it has no TTL on ``update``, no sub-second expiry (``Nats-TTL`` is whole
seconds), validates keys more strictly than catga identifiers, and each call goes through nats-py's
slower publish/request path. Here:

* ``create`` / ``update`` are publishes with ``Nats-Expected-Last-Subject-Sequence`` (0 = must not
  exist), checked by the server -- atomic compare-and-set;
* a delete removes the entry's message by sequence (``STREAM.MSG.DELETE``), which succeeds only while
  that revision is still the current one -- an atomic compare-and-delete that leaves no tombstone, so a
  deleted key can be created again with "must not exist";
* expiry: stores put an expiry time inside the value (checked on read, so sub-second TTLs work) and
  may add ``Nats-TTL`` (whole seconds, rounded up) so the server drops the entry later.

**Reads see the bucket object's own writes, on replicated buckets too.** A direct get is answered by
any replica of the stream, and a follower may not have applied what the leader acknowledged yet, so a
plain direct get can miss a write its caller has just made (NATS documents it; nothing says which
replica answers). Each :class:`KvBucket` keeps :attr:`KvBucket.seen`, the highest stream sequence it
wrote (publish acks) or read -- one int. On a bucket with ``replicas > 1``, :meth:`KvBucket.get` and
``messages(..., fresh=True)`` read with a multi-last direct get, whose reply says how far the answering
replica is (:func:`~catga.nats._jsapi.direct_last_of`); a reply from a replica behind ``seen`` is
dropped and the read tried again, backing off, for up to the bucket's timeout (then a
:class:`~catga.errors.BackendError` that says so); "no such key" is confirmed by the stream leader
(a not-found reply does not say how far its replica is). So a bucket object's reads are monotonic and
see its writes. The server-side form of that check, ``min_last_seq`` on direct gets (ADR-53), was
taken out of nats-server before 2.12.0 and is ignored by the servers catga supports. Deletes
(:meth:`KvBucket.delete`) do not move the stream's last sequence: a follower may still show an entry
this object deleted. One-replica buckets read as before (their one replica is the leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncGenerator
from typing import ClassVar, TypedDict

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from catga.errors import BackendError, BackendUnavailableError, ConfigurationError
from catga.nats._base import NatsStoreBase, check_name
from catga.nats._errors import translate_errors
from catga.nats._jsapi import (
    StreamMessage,
    decode_ack,
    delete_message,
    direct_last,
    direct_last_of,
    iter_direct,
    leader_last,
)
from catga.nats._subjects import key_token, subject_token, token_to_identifier
from catga.nats.connection import STORES_SERVER, LazyInit, NatsConnection, check_replicas

__all__ = ("KvBucket", "KvEntry", "KvOptions", "KvStore")

_CHECK = ("subjects", "max_msgs_per_subject", "allow_direct", "allow_msg_ttl", "storage")


class KvEntry:
    """One entry: its key, value, revision and headers."""

    __slots__ = ("headers", "key", "revision", "value")

    def __init__(self, key: str, value: bytes, revision: int, headers: dict[str, str]) -> None:
        self.key = key
        self.value = value
        self.revision = revision
        self.headers = headers


class KvBucket:
    """Key/value operations on one bucket over the lean connection.

    Args:
        conn: the connection.
        bucket: the bucket name (``[A-Za-z0-9_-]``).
        kind: what keys are, for error messages (``"lock key"``...).
        identifiers: keys must pass :func:`~catga.protocols.validate_identifier` (else any non-empty
            string is accepted and escaped).
        atomic: enable atomic batch publish on the stream (for :meth:`create_many`).
        storage: ``"file"`` or ``"memory"``.
        replicas: copies of the bucket's stream kept by a JetStream cluster (1-5; 3 on a 3-node
            cluster, so the bucket survives the loss of a node).
        timeout: seconds per call.
    """

    def __init__(
        self,
        conn: NatsConnection,
        bucket: str,
        *,
        kind: str,
        identifiers: bool = True,
        atomic: bool = False,
        storage: str = "file",
        replicas: int = 1,
        timeout: float,
    ) -> None:
        check_name(bucket, "bucket name")
        check_replicas(replicas)
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', got {storage!r}")
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.kind = kind
        self._conn = conn
        self._wire = conn.wire
        self._timeout = timeout
        self._prefix = f"$KV.{bucket}."
        self._direct = f"{conn.api_prefix}.DIRECT.GET.{self.stream}".encode()
        self._msg_get = f"{conn.api_prefix}.STREAM.MSG.GET.{self.stream}".encode()
        #: Reads check that the replica answering holds every write this object made or saw.
        self.replicated = replicas > 1
        #: The highest stream sequence this object wrote or read (see the module docs).
        self.seen = 0
        self._config = StreamConfig(
            name=self.stream,
            subjects=[f"$KV.{bucket}.>"],
            storage=StorageType(storage),
            num_replicas=replicas,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            allow_msg_ttl=True,
            deny_delete=False,
            allow_atomic=True if atomic else None,
        )
        self._identifiers = identifiers
        self._check = (*_CHECK, "allow_atomic") if atomic else _CHECK
        self.init = LazyInit(self._create)

    async def _create(self) -> None:
        await self._conn.ensure_stream(self._config, self._check, timeout=self._timeout)
        if not self._wire.connected:
            await self._wire.connect()

    async def ready(self) -> None:
        """Create the bucket on first use and make sure the lean connection is up."""
        if not self.init.ready:
            await self.init()
        if not self._wire.connected:
            await self._wire.connect()

    async def exists(self) -> bool:
        """True if the bucket's stream exists; never creates it (reads of a read-only tool).

        Raises:
            BackendUnavailableError, BackendTimeoutError: the server failed.
        """
        if self.init.ready:
            return True
        with translate_errors(f"look up bucket {self.bucket!r}", self._timeout):
            try:
                await self._conn.js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                return False
        return True

    @property
    def prefix(self) -> str:
        """The subject prefix of the bucket's keys, ``$KV.<bucket>.``."""
        return self._prefix

    def subject(self, key: str) -> bytes:
        """The subject of ``key`` (validated).

        Raises:
            InvalidIdentifierError: ``key`` is not a valid identifier.
        """
        token = subject_token(key, self.kind) if self._identifiers else key_token(key, self.kind)
        return (self._prefix + token).encode()

    async def get(self, key: str) -> KvEntry | None:
        """The entry of ``key``, or None."""
        return await self.get_subject(self.subject(key), key)

    async def get_subject(self, subject: bytes, key: str) -> KvEntry | None:
        """The entry on ``subject`` (a key's :meth:`subject`, possibly with more tokens after it), or
        None; ``key`` names it in errors and in the entry."""
        await self.ready()
        operation = f"get {self.kind} {key!r}"
        try:
            if self.replicated:
                message = await self._fresh_last(subject, operation)
            else:
                message = await direct_last(
                    self._wire, self._direct, subject, timeout=self._timeout, operation=operation
                )
        except BackendUnavailableError:
            self.init.reset()  # the bucket may have been deleted: check it again on the next call
            raise
        if message is None:
            return None
        if message.seq > self.seen:
            self.seen = message.seq
        return KvEntry(key, message.data, message.seq, message.headers)

    async def _fresh_last(self, subject: bytes, operation: str) -> StreamMessage | None:
        messages = await self.fresh(subject.decode(), operation)
        if messages is None:  # too many subjects for one reply: the leader has them all
            return await leader_last(
                self._wire, self._msg_get, subject, timeout=self._timeout, operation=operation
            )
        return messages[-1] if messages else None

    async def fresh(self, subject: str, operation: str) -> list[StreamMessage] | None:
        """The last message of every subject matching ``subject``, in sequence order, from a replica
        that holds every write this object made or saw (see the module docs); raises :attr:`seen` to that
        replica's last sequence.

        Returns:
            None when they do not fit one reply (more than 1024 subjects or too many bytes).

        Raises:
            BackendError: for the bucket's timeout, only replicas behind :attr:`seen` answered.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        stale = 0
        while True:
            read = await direct_last_of(
                self._wire, self._direct, subject, timeout=self._timeout, operation=operation
            )
            if read is None:
                return None
            messages, up_to = read
            if messages:
                if up_to >= self.seen:
                    self.seen = up_to
                    return messages
            elif self.seen == 0:
                return []
            else:  # "not found" does not say how far that replica is: ask the leader
                last = await leader_last(
                    self._wire, self._msg_get, subject.encode(), timeout=self._timeout, operation=operation
                )
                if last is None:
                    return []
                self.seen = max(self.seen, last.seq)
            stale += 1
            pause = min(0.001 * 2**stale, 0.05)  # a follower applies within milliseconds
            if loop.time() + pause > deadline:
                raise BackendError(
                    f"JetStream {operation}: for {self._timeout:g} s ({stale} replies) only replicas of "
                    f"stream {self.stream!r} answered that did not hold sequence {self.seen} yet, which "
                    "this store object wrote or read (replicas behind their leader: a node catching up "
                    "or overloaded); try again",
                    backend="nats",
                )
            await asyncio.sleep(pause)

    async def write_batch(self, items: list[tuple[bytes, bytes, int]], what: str) -> bool:
        """Write ``(subject, value, expected revision)`` items in one atomic batch (the bucket must be
        ``atomic``): all land, or none when any subject's revision is not the expected one (0: absent).

        Returns:
            False when a revision did not match (nothing stored).
        """
        await self.ready()
        batch_id = secrets.token_hex(11).encode()
        last = len(items)
        for index, (subject, value, revision) in enumerate(items, start=1):
            block = b"NATS/1.0\r\nNats-Batch-Id: %b\r\nNats-Batch-Sequence: %d\r\n" % (batch_id, index)
            block += b"Nats-Expected-Last-Subject-Sequence: %d\r\n" % revision
            if index < last:
                self._wire.publish(subject, value, block + b"\r\n")
                continue
            reply = await self._wire.send(
                subject, value, block + b"Nats-Batch-Commit: 1\r\n\r\n", self._timeout
            )
            ack = decode_ack(reply, what)
            if ack.error is None and ack.seq > self.seen:
                self.seen = ack.seq
            return ack.error is None
        return True

    async def write_subject(
        self, subject: bytes, value: bytes, *, last: int, last_subject: bytes | None = None, what: str
    ) -> int | None:
        """Store ``value`` on ``subject`` (a key's :meth:`subject`, possibly with more tokens after it)
        only if the last revision on ``last_subject`` (default ``subject``; wildcards allowed: then the
        last of every subject it matches) is ``last`` (0: none).

        Returns:
            The new revision, or None when ``last`` did not match.
        """
        await self.ready()
        block = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\n" % last
        if last_subject is not None:
            block += b"Nats-Expected-Last-Subject-Sequence-Subject: %b\r\n" % last_subject
        return await self._publish(subject, value, block + b"\r\n", what)

    async def write(
        self,
        key: str,
        value: bytes,
        *,
        last: int | None,
        ttl: float | None = None,
        headers: bytes = b"",
    ) -> int | None:
        """Store ``value``; with ``last``, only if the current revision is ``last`` (0 = absent).

        Args:
            key: the key.
            value: the bytes to store.
            last: expected current revision (0: the key must not exist); None: unconditional.
            ttl: seconds after which the server may drop the entry (rounded up to whole seconds).
            headers: extra header lines (``b"Name: value\\r\\n"``...).

        Returns:
            The new revision, or None when ``last`` did not match.
        """
        subject = self.subject(key)
        await self.ready()
        lines = headers
        if last is not None:
            lines += b"Nats-Expected-Last-Subject-Sequence: %d\r\n" % last
        if ttl is not None:
            lines += b"Nats-TTL: %d\r\n" % max(1, math.ceil(ttl))
        block = b"NATS/1.0\r\n" + lines + b"\r\n" if lines else None
        return await self._publish(subject, value, block, f"write {self.kind} {key!r}")

    async def _publish(self, subject: bytes, value: bytes, block: bytes | None, what: str) -> int | None:
        """Publish with the header ``block`` (None: none); the new revision, raising :attr:`seen` to
        it, or None when the server refused an expected-sequence condition."""
        try:
            reply = await self._wire.send(subject, value, block, self._timeout)
            ack = decode_ack(reply, what)
        except BackendUnavailableError:
            self.init.reset()
            raise
        if ack.error is not None:
            return None
        if ack.seq > self.seen:
            self.seen = ack.seq
        return ack.seq

    async def create_many(self, items: list[tuple[str, bytes]]) -> bool:
        """Create all keys in one atomic batch (each must not exist); False stores nothing.

        At most 1000 items (JetStream's atomic batch limit). Keys must be distinct.
        """
        subjects = [self.subject(key) for key, _ in items]
        if not items:
            return True
        await self.ready()
        if len(items) == 1:
            return await self.write(items[0][0], items[0][1], last=0) is not None
        batch_id = secrets.token_hex(11).encode()
        blocks = [
            b"NATS/1.0\r\nNats-Batch-Id: %b\r\nNats-Batch-Sequence: %d\r\n"
            b"Nats-Expected-Last-Subject-Sequence: 0\r\n" % (batch_id, index)
            for index in range(1, len(items) + 1)
        ]
        for subject, (_, value), block in zip(subjects[:-1], items[:-1], blocks[:-1], strict=True):
            self._wire.publish(subject, value, block + b"\r\n")
        commit = blocks[-1] + b"Nats-Batch-Commit: 1\r\n\r\n"
        reply = await self._wire.send(subjects[-1], items[-1][1], commit, self._timeout)
        ack = decode_ack(reply, f"create {len(items)} {self.kind}s")
        if ack.error is None and ack.seq > self.seen:
            self.seen = ack.seq
        return ack.error is None

    async def delete(self, revision: int) -> bool:
        """Delete the entry at ``revision``; False if that revision is gone (replaced or deleted)."""
        await self.ready()
        return await delete_message(
            self._wire, self._conn.api_prefix, self.stream, revision, timeout=self._timeout
        )

    async def scan(self, tail: str = ">") -> AsyncGenerator[KvEntry, None]:
        """Every entry, in revision order (oldest write first); ``tail`` filters the subjects after
        the bucket's prefix (``"*"``: one-token keys only; ``"<token>.*"``...)."""
        await self.ready()
        start = len(self._prefix)
        messages = iter_direct(
            self._wire,
            self._direct,
            start=1,
            subject=self._prefix + tail,
            timeout=self._timeout,
            operation=f"list bucket {self.bucket!r}",
        )
        message: StreamMessage
        async with contextlib.aclosing(messages):
            async for message in messages:
                key = token_to_identifier(message.subject[start:])
                yield KvEntry(key, message.data, message.seq, message.headers)

    async def messages(
        self, subject: str, start: int = 1, *, fresh: bool = False
    ) -> AsyncGenerator[StreamMessage, None]:
        """The entries on ``subject`` (a filter, wildcards allowed) from revision ``start`` on, in
        revision order, as stream messages (their subjects unparsed).

        Args:
            fresh: on a replicated bucket, read them from a replica that holds every write this object
                made or saw (:meth:`fresh`; all the entries must fit one reply, else they are read as
                without it).
        """
        await self.ready()
        if fresh and self.replicated and start <= 1:
            found = await self.fresh(subject, f"list bucket {self.bucket!r}")
            if found is not None:
                for message in found:
                    yield message
                return
        messages = iter_direct(
            self._wire,
            self._direct,
            start=start,
            subject=subject,
            timeout=self._timeout,
            operation=f"list bucket {self.bucket!r}",
        )
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield message

    async def count(self) -> int:
        """Number of entries (one message per key, no tombstones)."""
        await self.ready()
        with translate_errors(f"count bucket {self.bucket!r}", self._timeout):
            info = await self._conn.js.stream_info(self.stream)
        return int(info.state.messages)


class KvOptions(TypedDict, total=False):
    """The keyword options of every :class:`KvStore` (see its Args)."""

    bucket: str | None
    storage: str
    replicas: int
    timeout: float | None


class KvStore(NatsStoreBase):
    """Base of the NATS stores kept in one KV-layout bucket (outbox, inbox, DLQ, lock, cache).

    Subclasses set :attr:`default_bucket` and ``_kind`` (what keys are, for error messages), and
    ``_identifiers`` / ``_atomic`` as for :class:`KvBucket`.

    Args:
        source: a :class:`~catga.nats.NatsConnection` or a connected nats-py client.
        bucket: the bucket name (stream ``KV_<bucket>``); None: the store's :attr:`default_bucket`.
        storage: ``"file"`` or ``"memory"``.
        replicas: copies of the bucket's stream kept by a JetStream cluster (1-5; use 3 on a 3-node
            cluster, so the store survives the loss of a node).
        timeout: seconds per network call (default: the connection's).
    """

    #: The bucket used when none is given.
    default_bucket: ClassVar[str]
    _kind: ClassVar[str]
    _identifiers: ClassVar[bool] = True
    _atomic: ClassVar[bool] = False
    _needs = (STORES_SERVER, "per-message TTL")

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        bucket: str | None = None,
        storage: str = "file",
        replicas: int = 1,
        timeout: float | None = None,
    ) -> None:
        check_replicas(replicas)  # before attaching to the connection
        super().__init__(source, timeout=timeout)
        self._bucket = KvBucket(
            self._conn,
            self.default_bucket if bucket is None else bucket,
            kind=self._kind,
            identifiers=self._identifiers,
            atomic=self._atomic,
            storage=storage,
            replicas=replicas,
            timeout=self._timeout,
        )

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket.bucket
