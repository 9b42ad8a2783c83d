"""The socket side of catga's lean NATS connection (:class:`~catga.nats._wire.LeanConnection`).

:class:`WireProtocol` is an :class:`asyncio.Protocol` for one socket: it parses the server's ops
(``MSG``/``HMSG``/``PING``/``PONG``/``INFO``/``-ERR``) synchronously in ``data_received`` -- the hot
path: no reader task, no queue -- resolves the future of a pending request by its reply token, hands a
message on another subscription to that subscription's callback, and coalesces writes (see the
``_wire`` module docs). Also here: the ``NATS/1.0`` header block, both ways.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from catga.errors import BackendError, ConfigurationError, PayloadTooLargeError, SerializationError
from catga.nats._errors import unavailable_error

__all__ = (
    "WRITE_BATCH",
    "Listener",
    "Reply",
    "WireProtocol",
    "header_block",
    "parse_headers",
    "reply_status",
    "too_large",
)

_log = logging.getLogger("catga.nats")

#: A reply: (raw header block or None, payload).
Reply = tuple[bytes | None, bytes]
#: A subscription callback: (subject, reply subject or None, raw header block or None, payload).
Listener = Callable[[bytes, bytes | None, bytes | None, bytes], None]

#: Requests written in one ``send`` system call at most (see the ``_wire`` module docs).
WRITE_BATCH = 4
#: The sid of the reply wildcard subscription.
_SID = b"1"


def header_block(headers: Mapping[str, str]) -> bytes:
    """Render wire headers as a ``NATS/1.0`` header block.

    Raises:
        SerializationError: a name or value contains CR or LF (it would forge other headers).
    """
    text = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if text.count("\n") != len(headers) or text.count("\r") != len(headers):
        raise SerializationError(f"header names and values must not contain CR or LF: {dict(headers)!r}")
    return b"NATS/1.0\r\n" + text.encode() + b"\r\n"


def reply_status(headers: bytes | None) -> int:
    """The inline status of a reply (``NATS/1.0 404 ...`` -> 404), or 0 for a normal message."""
    if headers is None or len(headers) < 12 or headers[8:9] != b" ":
        return 0
    try:
        return int(headers[9:12])
    except ValueError:
        return 0


def parse_headers(headers: bytes | None) -> dict[str, str]:
    """Parse a ``NATS/1.0`` header block into a dict (the status line is skipped)."""
    out: dict[str, str] = {}
    if not headers:
        return out
    for line in headers.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep:
            out[key.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return out


def too_large(size: int, limit: int, subject: bytes) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        size,
        limit,
        destination=subject.decode(errors="replace"),
        backend="nats",
        what="NATS message (headers included)",
        limit_name="the server's max_payload",
    )


class WireProtocol(asyncio.Protocol):
    """One socket: parses server ops and resolves pending requests."""

    def __init__(self, prefix: bytes, listeners: dict[bytes, Listener] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.prefix = prefix
        self.listeners: dict[bytes, Listener] = {} if listeners is None else listeners  # sid -> callback
        self.prefix_len = len(prefix)
        # token -> (future, deadline, collector list or None, subject, timeout)
        self.pending: dict[bytes, tuple[asyncio.Future[Any], float, list[Reply] | None, bytes, float]] = {}
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.create_future = loop.create_future
        self.transport_write: Callable[[bytes], None] = self._not_connected
        self.out: list[bytes] = []  # requests queued by write() for the end of this loop iteration
        self.flush_scheduled = False
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.pong: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.received = 0  # data_received calls, sampled by the sweeper to tell a dead socket
        self.on_lost: Callable[[WireProtocol, Exception | None], None] | None = None
        self.on_info: Callable[[dict[str, Any]], None] | None = None
        self.paused: asyncio.Future[None] | None = None

    @staticmethod
    def _not_connected(data: bytes) -> None:
        raise unavailable_error("request", "not connected")

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(transport)  # type: ignore[arg-type]

    def set_transport(self, transport: asyncio.Transport) -> None:
        """Use ``transport`` (the socket, or its TLS wrapper after ``start_tls``)."""
        self.transport = transport
        self.transport_write = transport.write

    def write(self, data: bytes) -> None:
        """Send ``data``: at once when nothing else is in flight, else coalesced (see the module doc)."""
        out = self.out
        if not out:
            if len(self.pending) <= 1:  # alone (the request just registered, or a plain publish)
                self.transport_write(data)
                return
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
        out.append(data)
        if len(out) >= WRITE_BATCH:
            self.transport_write(b"".join(out))
            out.clear()

    def write_soon(self, data: bytes) -> None:
        """Queue ``data`` for the end of this loop iteration (acks: nobody waits on them)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        """Write what :meth:`write` queued (called at the end of the loop iteration)."""
        self.flush_scheduled = False
        out = self.out
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            self.transport_write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def pause_writing(self) -> None:
        if self.paused is None:
            self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.paused = self.paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        error = unavailable_error(
            "request", f"the connection was lost ({exc or 'closed'}); the outcome of the request is unknown"
        )
        for handshake in (self.info, self.pong):
            if not handshake.done():
                handshake.set_exception(error)
        pending, self.pending = self.pending, {}
        for fut, *_ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if self.on_lost is not None:
            self.on_lost(self, exc)

    def data_received(self, data: bytes) -> None:  # the hot path
        self.received += 1
        buf = self.buf
        if buf:  # a partial op is waiting: continue from it
            buf += data
            data = bytes(buf)
            buf.clear()
        n = len(data)
        pos = 0
        pending = self.pending
        plen = self.prefix_len
        while pos < n:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            op = data[pos]
            if op == 72 or op == 77:  # HMSG / MSG
                parts = data[pos:eol].split()
                start = eol + 2
                end = start + int(parts[-1])
                if end + 2 > n:
                    break  # wait for the rest of the payload
                pos = end + 2
                if parts[2] != _SID:  # a subscription of its own (a pull consumer's inbox)
                    self._deliver(parts, op == 72, data, start, end)
                    continue
                token = parts[1][plen:]
                entry = pending.pop(token, None)
                if entry is None:
                    continue
                if op == 72:
                    split = start + int(parts[-2])
                    hdr: bytes | None = data[start:split]
                    payload = data[split:end]
                else:
                    hdr = None
                    payload = data[start:end]
                fut, _, collector, _, _ = entry
                if collector is None:
                    if not fut.done():  # not cancelled by its waiter
                        fut.set_result((hdr, payload))
                elif hdr is not None and not payload and hdr[8:9] == b" ":  # status: end of batch
                    collector.append((hdr, payload))
                    if not fut.done():
                        fut.set_result(collector)
                else:
                    collector.append((hdr, payload))
                    pending[token] = entry
                continue
            line = data[pos:eol]
            pos = eol + 2
            self._control(line)
        if pos < n:
            buf += data[pos:]

    def _deliver(self, parts: list[bytes], has_headers: bool, data: bytes, start: int, end: int) -> None:
        listener = self.listeners.get(parts[2])
        if listener is None:
            return  # unsubscribed meanwhile
        if has_headers:
            split = start + int(parts[-2])
            hdr: bytes | None = data[start:split]
            payload = data[split:end]
            reply = parts[3] if len(parts) == 6 else None
        else:
            hdr = None
            payload = data[start:end]
            reply = parts[3] if len(parts) == 5 else None
        try:
            listener(parts[1], reply, hdr, payload)
        except Exception:  # a callback's bug must not stop the parser
            _log.exception("a subscription callback on catga's lean NATS connection failed")

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            if self.transport is not None:
                self.transport.write(b"PONG\r\n")
        elif line == b"PONG":
            if not self.pong.done():
                self.pong.set_result(None)
        elif line.startswith(b"INFO"):
            try:
                info = json.loads(line[5:])
            except ValueError:
                info = {}
            if not self.info.done():
                self.info.set_result(info)
            elif self.on_info is not None:
                self.on_info(info)
        elif line.startswith(b"-ERR"):
            message = line[5:].strip().strip(b"'").decode("utf-8", "replace")
            if not self.pong.done():
                exc: Exception
                if "authoriz" in message.lower() or "authentication" in message.lower():
                    exc = ConfigurationError(
                        f"NATS refused the credentials of catga's lean connection: {message}; check "
                        "user/password, token, nkeys or creds"
                    )
                else:
                    exc = BackendError(f"NATS rejected the connection: {message}", backend="nats")
                self.pong.set_exception(exc)
            else:
                _log.warning("nats-server reported an error on catga's lean connection: %s", message)
        # +OK and unknown ops are ignored
