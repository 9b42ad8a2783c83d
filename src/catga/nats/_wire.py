"""A lean NATS protocol connection for JetStream hot paths (publish with ack, direct get).

Why a second connection: nats-py's generic path spends most of a JetStream publish's client CPU on
a flusher task hop, a subscription queue and task per reply, dict and JSON handling, which caps an
optimistic-concurrency append on a small machine (figures in ``docs/benchmarks.md``, *Design
figures*). This connection is the probe's
"raw" design (see ``docs/nats.md``, *Performance*):

* one wildcard reply subscription ``<inbox>.<random>.*``; every request publishes with a unique reply
  token and its reply is matched to a future by that token -- no per-request subscription;
* writes are coalesced, a little: a request with nothing else in flight is written at once; otherwise it
  joins a queue that is written when it holds :data:`~catga.nats._protocol.WRITE_BATCH` (4) requests or
  at the end of the event-loop iteration, whichever comes first. Per append this cuts the client's
  system time and the server's reads, while the cap keeps several groups in flight so that client and
  server work at the same time: writing all of an iteration's requests at once (as nats-py's flusher
  does) makes them take turns, and one ``send`` per request (write-through) costs more CPU than the work
  itself on a small machine (``docs/nats.md``, *Performance*). No flusher task: the end-of-iteration
  flush is a ``call_soon``;
* replies are parsed synchronously in ``data_received`` (an :class:`asyncio.Protocol`, no reader task,
  no queue), and the waiting future is resolved directly (:mod:`catga.nats._protocol`).

It speaks only what the hot paths need: ``CONNECT`` (with the nats-py client's credentials, TLS and
nkeys/JWT callbacks), ``SUB`` of the reply wildcard and of the transport's pull-consumer inboxes
(:meth:`LeanConnection.subscribe`, routed by sid to a callback), ``PUB``/``HPUB`` with or without a
reply subject, ``PING``/``PONG``, and ``MSG``/``HMSG``. Everything else (stream and consumer
management) stays on nats-py.

Robustness:
    * every request has a deadline; a timer sweeps expired requests every 50 ms and fails them with
      :class:`~catga.errors.BackendTimeoutError`. If nothing at all was received from the server during
      a timed-out request, the socket is considered dead and is aborted.
    * when the socket closes, every in-flight request fails with
      :class:`~catga.errors.BackendUnavailableError` ("outcome unknown" -- an append may or may not
      have been stored; an optimistic-concurrency retry tells which). The next request reconnects
      (trying the nats-py client's current server first, then its server pool).
    * a request larger than the server's ``max_payload`` is refused before sending (the server would
      otherwise close the connection).

Credentials, and why nats-py is pinned:
    The ``CONNECT`` must authenticate exactly as the nats-py client it rides on (user/password, token,
    URL credentials, an nkeys seed, a ``.creds`` file with a JWT, and the inbox prefix a server's
    permissions may require). nats-py keeps the nkeys/JWT pieces in private attributes
    (:data:`NATS_PY_PRIVATE`: ``_signature_cb``, ``_user_jwt_cb``, ``_public_nkey``, ``_inbox_prefix``),
    set by ``Client.connect()`` from its ``nkeys_seed``/``user_credentials``/``inbox_prefix`` options.
    Re-implementing that (reading creds files, nkeys signing) would duplicate security-sensitive code
    and add the ``nkeys`` dependency for a handful of lines; so the access is kept and made explicit:
    ``catga[nats]`` pins nats-py below the next minor version (``<2.17``, 2.16 tested), a missing
    attribute raises :class:`~catga.errors.ConfigurationError` naming it (never a silent
    unauthenticated ``CONNECT``), and ``tests/nats/test_wire_credentials.py`` builds nats-py clients
    with each kind of credentials and checks that our ``CONNECT`` fields equal nats-py's own -- it fails
    when an attribute disappears or changes meaning, which is the signal to raise the pin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import ParseResult

from catga._lifecycle import close_transport
from catga.errors import BackendError, ConfigurationError
from catga.nats._errors import timeout_error, unavailable_error
from catga.nats._protocol import _SID, Listener, Reply, WireProtocol, parse_headers, reply_status, too_large

__all__ = ("NATS_PY_PRIVATE", "LeanConnection", "Listener", "Reply", "parse_headers", "reply_status")

#: The private attributes of a nats-py ``Client`` read here (see the module docstring).
NATS_PY_PRIVATE = ("_inbox_prefix", "_signature_cb", "_user_jwt_cb", "_public_nkey")

_log = logging.getLogger("catga.nats")

_SWEEP_INTERVAL = 0.05
_DEFAULT_MAX_PAYLOAD = 1024 * 1024


def _private(client: Any, name: str) -> Any:
    """A private attribute of the nats-py client (see the module docstring); refuse when it is gone."""
    try:
        return getattr(client, name)
    except AttributeError:
        try:
            from importlib.metadata import version

            installed = version("nats-py")
        except Exception:  # pragma: no cover - not installed as a distribution
            installed = "?"
        raise ConfigurationError(
            f"nats-py {installed} has no attribute {name!r}, which catga's lean NATS connection reads to "
            "authenticate like nats-py; install a supported nats-py (pip install 'catga[nats]' pins it)"
        ) from None


class LeanConnection:
    """A lean request/reply connection riding on a nats-py client's configuration.

    Args:
        client: the nats-py client whose servers, credentials and TLS settings are reused.
        name: the connection name shown by the server.
        connect_timeout: seconds allowed for connecting (TCP, TLS, CONNECT/PONG).

    Not thread-safe: use it from the event loop it was connected on.
    """

    def __init__(self, client: Any, *, name: str = "catga-lean", connect_timeout: float = 5.0) -> None:
        self._nc = client
        self._name = name
        self.connect_timeout = connect_timeout
        self.connected = False
        self.max_payload = _DEFAULT_MAX_PAYLOAD
        self._proto: WireProtocol | None = None
        self._lock: asyncio.Lock | None = None
        self._counter = 0
        self._timer: asyncio.TimerHandle | None = None
        self._now = 0.0  # the sweeper's clock
        self._received = 0  # proto.received at the last sweep
        self._last_rx = 0.0  # when the sweeper last saw data arrive
        self._closed = False
        self._refusal: Callable[[], Exception] | None = None  # what a closed connection raises
        self._listeners: dict[bytes, Listener] = {}  # sid -> callback, shared with every socket
        self._subjects: dict[bytes, bytes] = {}  # sid -> subject (subscribed again after a reconnect)
        self._next_sid = 1
        inbox = _private(client, "_inbox_prefix")
        inbox_str = bytes(inbox).decode() if inbox else "_INBOX"
        self.prefix = f"{inbox_str}.{secrets.token_hex(11)}.".encode()

    # -- connecting ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect if not connected (lazy; concurrent callers wait for one attempt).

        Raises:
            BackendUnavailableError: no server could be reached.
            ConfigurationError: the server refused the credentials or lacks header support.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected:
                return
            if self._closed:
                if self._refusal is not None:
                    raise self._refusal()
                raise unavailable_error("request", "the connection was closed by aclose()")
            last: BaseException | None = None
            for uri in self._candidates():
                if self._closed:
                    raise unavailable_error("connect", "the connection was closed by aclose()")
                try:
                    await asyncio.wait_for(self._connect_to(uri), self.connect_timeout)
                    return
                except ConfigurationError:
                    raise
                except (OSError, TimeoutError, BackendError, ssl.SSLError) as exc:
                    last = exc
            raise unavailable_error(
                "connect", f"no server answered ({type(last).__name__}: {last})"
            ) from last

    def _candidates(self) -> list[ParseResult]:
        seen: set[str] = set()
        out: list[ParseResult] = []
        current = self._nc.connected_url
        for uri in [current, *self._nc.servers]:
            if uri is not None and uri.netloc not in seen:
                seen.add(uri.netloc)
                out.append(uri)
        if not out:
            raise unavailable_error("connect", "the nats-py client has no servers configured")
        return out

    def _tls(self, uri: ParseResult, info: dict[str, Any] | None) -> ssl.SSLContext | None:
        options = self._nc.options
        wanted = (
            uri.scheme == "tls"
            or options.get("tls") is not None
            or (info is not None and bool(info.get("tls_required")))
        )
        context: ssl.SSLContext | None = self._nc.ssl_context if wanted else None
        return context

    async def _connect_to(self, uri: ParseResult) -> None:
        loop = asyncio.get_running_loop()
        proto = WireProtocol(self.prefix, self._listeners)
        options = self._nc.options
        hostname = options.get("tls_hostname") or uri.hostname
        first = bool(options.get("tls_handshake_first"))
        host, port = uri.hostname or "127.0.0.1", uri.port or 4222
        if first:
            first_ctx = self._tls(uri, None) or ssl.create_default_context()
            transport, _ = await loop.create_connection(
                lambda: proto, host, port, ssl=first_ctx, server_hostname=hostname
            )
        else:
            transport, _ = await loop.create_connection(lambda: proto, host, port)
        try:
            info = await proto.info
            if not info.get("headers", False):
                raise ConfigurationError(
                    f"nats-server at {uri.netloc} does not support headers; catga needs nats-server 2.2+"
                )
            if not first:
                ctx = self._tls(uri, info)
                if ctx is not None:
                    upgraded = await loop.start_tls(transport, proto, ctx, server_hostname=hostname)
                    if upgraded is None:  # pragma: no cover - closed during the handshake
                        raise unavailable_error("connect", "the TLS handshake was aborted")
                    transport = upgraded
                    proto.set_transport(upgraded)
            connect = json.dumps(self._connect_fields(uri, info), separators=(",", ":")).encode()
            subs = [b"SUB " + self.prefix + b"* " + _SID + b"\r\n"]
            subs += [b"SUB %b %b\r\n" % (subject, sid) for sid, subject in self._subjects.items()]
            transport.write(b"CONNECT " + connect + b"\r\n" + b"".join(subs) + b"PING\r\n")
            await proto.pong
            if proto.closed:  # lost right after the handshake: never hand out a closed socket
                raise unavailable_error("connect", "the connection closed during the handshake")
            if self._closed:  # aclose() ran meanwhile: nobody would ever close this socket
                raise unavailable_error("connect", "the connection was closed by aclose()")
        except BaseException:
            transport.abort()
            raise
        self.max_payload = int(info.get("max_payload", _DEFAULT_MAX_PAYLOAD))
        self._received = proto.received
        self._last_rx = self._now = loop.time()
        proto.on_lost = self._lost
        proto.on_info = self._info
        self._proto = proto
        self.connected = True

    def _connect_fields(self, uri: ParseResult, info: dict[str, Any]) -> dict[str, Any]:
        """The CONNECT options, with the same authentication nats-py would send."""
        nc = self._nc
        options = nc.options
        fields: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "lang": "python3",
            "version": "catga",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "echo": False,
            "name": self._name,
        }

        def value(v: Any) -> Any:
            return v() if callable(v) else v

        nonce = info.get("nonce")
        signature_cb = _private(nc, "_signature_cb")
        jwt_cb = _private(nc, "_user_jwt_cb")
        public_nkey = _private(nc, "_public_nkey")
        if nonce and signature_cb is not None:  # nkeys seed or creds file (JWT)
            fields["sig"] = signature_cb(nonce).decode()
            if jwt_cb is not None:
                fields["jwt"] = jwt_cb().decode()
            elif public_nkey is not None:
                fields["nkey"] = public_nkey
            if options.get("token") is not None:
                fields["auth_token"] = value(options["token"])
        elif options.get("user") is not None and options.get("password") is not None:
            fields["user"] = value(options["user"])
            fields["pass"] = value(options["password"])
        elif options.get("token") is not None:
            fields["auth_token"] = value(options["token"])
        elif uri.username is not None:
            if uri.password is None:
                fields["auth_token"] = uri.username
            else:
                fields["user"] = uri.username
                fields["pass"] = uri.password
        return fields

    def _info(self, info: dict[str, Any]) -> None:
        if "max_payload" in info:
            self.max_payload = int(info["max_payload"])

    def _lost(self, proto: WireProtocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self.connected = False
            self._proto = None
            if exc is not None:
                _log.warning("catga's lean NATS connection was lost: %s; reconnecting on next use", exc)

    # -- requests --------------------------------------------------------------------------
    def send(
        self,
        subject: bytes,
        payload: bytes,
        headers: bytes | None,
        timeout: float,
        many: bool = False,
    ) -> asyncio.Future[Any]:
        """Publish with a unique reply subject and return the future of its reply.

        Must be called while :attr:`connected`. With ``many`` the future resolves to the list of replies
        up to and including the first status message (batch direct get); otherwise to the first reply.

        Raises:
            BackendUnavailableError: not connected.
            PayloadTooLargeError: the message (headers included) exceeds the server's ``max_payload``.
        """
        proto = self._proto  # set only while connected (cleared by _lost when the socket closes)
        if proto is None:
            raise unavailable_error("request", "not connected")
        self._counter = counter = self._counter + 1
        token = b"%d" % counter
        if headers is None:
            size = len(payload)
            data = b"PUB %b %b%b %d\r\n%b\r\n" % (subject, self.prefix, token, size, payload)
        else:
            header_size = len(headers)
            size = header_size + len(payload)
            data = b"HPUB %b %b%b %d %d\r\n%b%b\r\n" % (
                subject,
                self.prefix,
                token,
                header_size,
                size,
                headers,
                payload,
            )
        if size > self.max_payload:
            raise too_large(size, self.max_payload, subject)
        fut: asyncio.Future[Any] = proto.create_future()
        if self._timer is None:  # idle until now: refresh the coarse clock and start sweeping
            self._start_sweeping(proto)
        # deadlines use the sweeper's clock (at most one sweep interval old): no clock read per request
        proto.pending[token] = (fut, self._now + timeout, [] if many else None, subject, timeout)
        proto.write(data)
        return fut

    def _start_sweeping(self, proto: WireProtocol) -> None:
        self._now = self._last_rx = proto.loop.time()
        self._received = proto.received
        self._timer = proto.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def publish(
        self, subject: bytes, payload: bytes, headers: bytes | None, reply: bytes = b"", *, soon: bool = False
    ) -> None:
        """Publish, with ``reply`` as the reply subject if given (must be :attr:`connected`).

        With ``soon`` the message is written at the end of the event-loop iteration together with
        whatever else is queued (for acknowledgements: one system call for many).
        """
        proto = self._proto
        if proto is None:
            raise unavailable_error("publish", "not connected")
        if reply:
            subject = subject + b" " + reply
        if headers is None:
            size = len(payload)
            data = b"PUB %b %d\r\n%b\r\n" % (subject, size, payload)
        else:
            size = len(headers) + len(payload)
            data = b"HPUB %b %d %d\r\n%b%b\r\n" % (subject, len(headers), size, headers, payload)
        if size > self.max_payload:
            raise too_large(size, self.max_payload, subject)
        if soon:
            proto.write_soon(data)
        else:
            proto.write(data)

    def subscribe(self, subject: bytes, listener: Listener) -> bytes:
        """Call ``listener`` for every message on ``subject`` (wildcards allowed); return its sid.

        The subscription lives on this object: it is made again on every new socket. Callbacks run
        inside the parser (keep them short; start a task for real work).
        """
        self._next_sid += 1
        sid = b"%d" % self._next_sid
        self._listeners[sid] = listener
        self._subjects[sid] = subject
        proto = self._proto
        if proto is not None:
            proto.write(b"SUB %b %b\r\n" % (subject, sid))
        return sid

    def unsubscribe(self, sid: bytes) -> None:
        """Stop the subscription ``sid`` (messages already parsed are not delivered)."""
        self._listeners.pop(sid, None)
        if self._subjects.pop(sid, None) is not None and self._proto is not None:
            self._proto.write(b"UNSUB %b\r\n" % sid)

    async def request(
        self, subject: bytes, payload: bytes = b"", headers: bytes | None = None, *, timeout: float
    ) -> Reply:
        """Send one request and wait for its first reply (connecting first if needed)."""
        if not self.connected:
            await self.connect()
        if self._proto is not None and self._proto.paused is not None:
            await self._proto.paused
        reply: Reply = await self.send(subject, payload, headers, timeout)
        return reply

    async def request_many(self, subject: bytes, payload: bytes, *, timeout: float) -> list[Reply]:
        """Send one request and collect replies until a status message (e.g. ``204 EOB``, ``404``)."""
        if not self.connected:
            await self.connect()
        replies: list[Reply] = await self.send(subject, payload, None, timeout, many=True)
        return replies

    def _sweep(self) -> None:
        self._timer = None
        proto = self._proto
        if proto is None:
            return
        now = self._now = proto.loop.time()
        if proto.received != self._received:
            self._received = proto.received
            self._last_rx = now
        expired = [token for token, entry in proto.pending.items() if entry[1] <= now]
        dead = False
        for token in expired:
            fut, _, _, subject, timeout = proto.pending.pop(token)
            if not fut.done():
                fut.set_exception(timeout_error(f"request to {subject.decode()!r}", timeout))
            if now - self._last_rx >= timeout:
                dead = True
        if dead and proto.transport is not None:
            _log.warning("catga's lean NATS connection got nothing while requests timed out; reconnecting")
            proto.transport.abort()
        if proto.pending and self._proto is proto:
            self._timer = proto.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    async def disconnect(self) -> None:
        """Close the socket (the next request reconnects); in-flight requests fail. Idempotent."""
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None and not proto.closed:
            proto.transport.close()

    def refuse(self, error: Callable[[], Exception]) -> None:
        """Refuse requests with ``error()`` until :meth:`reopen` (its connection is not open)."""
        self._closed, self._refusal = True, error

    def reopen(self) -> None:
        """Allow connecting again after :meth:`aclose` or :meth:`refuse` (its connection opens again)."""
        self._closed, self._refusal = False, None

    async def aclose(self) -> None:
        """Close the socket for good; in-flight and later requests fail. Idempotent.

        What is already written (batched acks) is flushed first, for at most
        :data:`~catga._lifecycle.CLOSE_GRACE` seconds: a server that stopped reading would otherwise
        keep the socket open for ever.
        """
        self._closed = True
        proto = self._proto
        await self.disconnect()
        if proto is not None:
            await close_transport(proto.transport, lambda: proto.closed)
