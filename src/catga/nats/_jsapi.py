"""JetStream requests over the lean connection: publish acks, direct get, leader get, message delete.

Direct get (``$JS.API.DIRECT.GET``, streams with ``allow_direct``) is answered by *any* replica of a
replicated stream, so it may miss a message the leader has just acknowledged; :func:`leader_last` asks
the stream leader (``$JS.API.STREAM.MSG.GET``), whose view includes every acknowledged publish -- use
it for reads a concurrency decision depends on.

:func:`direct_last_of` is a direct get that also says how far the answering replica is: a multi-last
direct get (``multi_last``) ends with ``Nats-UpTo-Sequence``, the stream's last sequence on that replica
as of the read (taken under the stream's read lock, so consistent with the messages returned). A replica
holds a prefix of the stream, so a reply with ``UpTo >= n`` reflects every write up to sequence ``n``;
the caller checks it against what it has written or read (read-your-writes, monotonic reads). The
``min_last_seq`` request field of ADR-53 (server PR #6970), which would have had the server do that
check, was removed before nats-server 2.12.0 (PRs #7167, #7285) and is ignored by 2.12-2.15.

Replies are decoded with msgspec. Status replies are checked here once: ``503`` (no responders: the
stream does not exist or JetStream is down) becomes :class:`~catga.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator

import msgspec

from catga.errors import BackendError
from catga.nats._errors import (
    ERR_MSG_DELETE_NOT_FOUND,
    ERR_NO_MESSAGE,
    ERR_STREAM_NOT_FOUND,
    ERR_WRONG_LAST_SEQUENCE,
    ERR_WRONG_LAST_SEQUENCE_CONSTANT,
    api_error,
    unavailable_error,
)
from catga.nats._wire import LeanConnection, Reply, parse_headers, reply_status

__all__ = (
    "ApiError",
    "PubAck",
    "StreamMessage",
    "ack_decoder",
    "check_reply",
    "decode_ack",
    "delete_message",
    "direct_last",
    "direct_last_of",
    "iter_direct",
    "leader_last",
    "leader_next",
)

WRONG_LAST = (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_SEQUENCE_CONSTANT)


class ApiError(msgspec.Struct):
    """A JetStream API error object."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """A JetStream publish acknowledgement (or its error)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


class _ApiResponse(msgspec.Struct):
    success: bool = False
    error: ApiError | None = None


class _StoredMessage(msgspec.Struct):
    subject: str = ""
    seq: int = 0
    hdrs: str | None = None
    data: str | None = None


class _MsgGetResponse(msgspec.Struct):
    message: _StoredMessage | None = None
    error: ApiError | None = None


ack_decoder = msgspec.json.Decoder(PubAck)
_msg_get_decoder = msgspec.json.Decoder(_MsgGetResponse)
_response_decoder = msgspec.json.Decoder(_ApiResponse)
_json = msgspec.json.Encoder()


class StreamMessage(msgspec.Struct, frozen=True, gc=False):
    """A stream message: its sequence, subject, headers, payload and (when known) unix time."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes
    time: float = 0.0


def check_reply(reply: Reply, operation: str) -> int:
    """Return the reply's inline status (0 for a normal message); raise on ``503`` no responders."""
    hdr, data = reply
    if hdr is None or data:
        return 0
    status = reply_status(hdr)
    if status == 503:
        raise unavailable_error(
            operation,
            "no JetStream stream answered (503 no responders): the stream was deleted or JetStream "
            "is not enabled",
        )
    return status


def decode_ack(reply: Reply, operation: str) -> PubAck:
    """Decode a publish ack. Errors other than "wrong last sequence" raise; that one is returned.

    Raises:
        BackendUnavailableError: no responders.
        BackendError: any other JetStream error or an undecodable ack.
    """
    status = check_reply(reply, operation)
    if status:
        raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
    try:
        ack = ack_decoder.decode(reply[1])
    except msgspec.DecodeError as exc:
        raise BackendError(f"JetStream {operation} got an undecodable ack {reply[1]!r}") from exc
    if ack.error is not None and ack.error.err_code not in WRONG_LAST:
        raise api_error(operation, msgspec.structs.asdict(ack.error))
    return ack


def _message(hdr: bytes | None, data: bytes) -> StreamMessage:
    headers = parse_headers(hdr)
    return StreamMessage(
        seq=int(headers.get("Nats-Sequence", "0")),
        subject=headers.get("Nats-Subject", ""),
        headers=headers,
        data=data,
    )


async def direct_last(
    wire: LeanConnection, direct: bytes, subject: bytes, *, timeout: float, operation: str
) -> StreamMessage | None:
    """The last message on ``subject`` (direct get ``last_by_subj``), or None."""
    reply = await wire.request(direct + b"." + subject, b"", timeout=timeout)
    status = check_reply(reply, operation)
    if status == 404:
        return None
    if status:
        raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
    return _message(*reply)


async def direct_last_of(
    wire: LeanConnection, direct: bytes, subject: str, *, timeout: float, operation: str
) -> tuple[list[StreamMessage], int] | None:
    """The last message of every subject matching ``subject``, in sequence order, and the stream's last
    sequence on the replica that answered (one multi-last direct get; see the module docs).

    Returns:
        ``(messages, up_to)``; ``([], 0)`` when nothing matched (the reply does not say how far the
        replica is then); None when the answer does not fit one reply (more than 1024 subjects, or
        more bytes than the server sends at once): read them with :func:`iter_direct` instead.

    Raises:
        BackendUnavailableError: no responders.
        BackendError: any other status.
    """
    request = b'{"multi_last":[%b]}' % _json.encode(subject)
    replies = await wire.request_many(direct, request, timeout=timeout)
    end_hdr, _ = replies[-1]
    status = check_reply(replies[-1], operation)
    if status == 404:
        return [], 0
    if status == 413:  # Too Many Results
        return None
    if status != 204:
        raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
    end = parse_headers(end_hdr)
    if int(end.get("Nats-Num-Pending", "0")) > 0:  # cut short by the reply size limit
        return None
    return [_message(hdr, data) for hdr, data in replies[:-1]], int(end.get("Nats-UpTo-Sequence", "0"))


async def leader_last(
    wire: LeanConnection, msg_get: bytes, subject: bytes, *, timeout: float, operation: str
) -> StreamMessage | None:
    """The last message on ``subject`` as the stream leader has it (``STREAM.MSG.GET``), or None.

    Args:
        msg_get: the request subject, ``$JS.API.STREAM.MSG.GET.<stream>``.

    Raises:
        BackendUnavailableError: no responders, JetStream answered 503, or the stream does not exist.
        BackendError: any other JetStream error.
    """
    return await _leader_get(wire, msg_get, b'{"last_by_subj":"%b"}' % subject, timeout, operation)


async def leader_next(
    wire: LeanConnection, msg_get: bytes, seq: int, subject: bytes, *, timeout: float, operation: str
) -> StreamMessage | None:
    """The first message on ``subject`` at sequence ``seq`` or later, as the stream leader has it, or None."""
    request = b'{"seq":%d,"next_by_subj":"%b"}' % (max(1, seq), subject)
    return await _leader_get(wire, msg_get, request, timeout, operation)


async def _leader_get(
    wire: LeanConnection, msg_get: bytes, request: bytes, timeout: float, operation: str
) -> StreamMessage | None:
    reply = await wire.request(msg_get, request, timeout=timeout)
    status = check_reply(reply, operation)
    if status:
        raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
    try:
        response = _msg_get_decoder.decode(reply[1])
    except msgspec.DecodeError as exc:
        raise BackendError(f"JetStream {operation} got an undecodable reply {reply[1]!r}") from exc
    if response.error is not None:
        if response.error.err_code == ERR_NO_MESSAGE:
            return None
        if response.error.err_code == ERR_STREAM_NOT_FOUND:  # as a direct get's 503 says it
            raise unavailable_error(operation, "the stream does not exist (it was deleted?)")
        raise api_error(operation, msgspec.structs.asdict(response.error))
    message = response.message
    if message is None:
        raise BackendError(f"JetStream {operation} got a reply without a message: {reply[1]!r}")
    headers = parse_headers(base64.b64decode(message.hdrs)) if message.hdrs else {}
    data = base64.b64decode(message.data) if message.data else b""
    return StreamMessage(seq=message.seq, subject=message.subject, headers=headers, data=data)


async def direct_next(
    wire: LeanConnection, direct: bytes, seq: int, subject: str, *, timeout: float, operation: str
) -> StreamMessage | None:
    """The first message on ``subject`` at sequence ``seq`` or later (one direct get), or None."""
    request = _json.encode({"seq": max(1, seq), "next_by_subj": subject})
    reply = await wire.request(direct, request, timeout=timeout)
    status = check_reply(reply, operation)
    if status == 404:
        return None
    if status:
        raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
    return _message(*reply)


async def iter_direct(
    wire: LeanConnection,
    direct: bytes,
    *,
    start: int,
    subject: str | None,
    timeout: float,
    operation: str,
    page: int = 256,
) -> AsyncGenerator[StreamMessage, None]:
    """Messages from sequence ``start`` on (matching ``subject`` if given), in order, by batch direct get."""
    seq = max(1, start)
    while True:
        request: dict[str, object] = {"seq": seq, "batch": page}
        if subject is not None:
            request["next_by_subj"] = subject
        replies = await wire.request_many(direct, _json.encode(request), timeout=timeout)
        end_hdr, _ = replies[-1]
        status = check_reply(replies[-1], operation)
        if status == 404:
            return
        if status != 204:
            raise BackendError(f"JetStream {operation} got status {status}", backend="nats", status=status)
        last = 0
        for hdr, data in replies[:-1]:
            message = _message(hdr, data)
            last = message.seq
            yield message
        pending = int(parse_headers(end_hdr).get("Nats-Num-Pending", "0"))
        if pending <= 0 or last == 0:
            return
        seq = last + 1


async def delete_message(
    wire: LeanConnection, api_prefix: str, stream: str, seq: int, *, timeout: float
) -> bool:
    """Delete message ``seq`` from ``stream``; False when it does not exist (any more)."""
    operation = f"delete message {seq} of stream {stream!r}"
    subject = f"{api_prefix}.STREAM.MSG.DELETE.{stream}".encode()
    reply = await wire.request(subject, _json.encode({"seq": seq, "no_erase": True}), timeout=timeout)
    check_reply(reply, operation)
    response = _response_decoder.decode(reply[1])
    if response.error is not None:
        if response.error.err_code in (ERR_MSG_DELETE_NOT_FOUND, ERR_NO_MESSAGE):
            return False
        raise api_error(operation, msgspec.structs.asdict(response.error))
    return response.success
