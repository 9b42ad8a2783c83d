"""``catga dlq list|show|replay|delete`` against real NATS and Redis servers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import catga
from catga.backends import Backends, parse_url
from catga.cli import app
from catga.ids import new_id
from catga.messages import H_TYPE, Command, Event, Metadata, message_name
from catga.protocols import DeadLetter, Subscription, Transport
from catga.serialization import default_registry
from catga.testing.contracts._util import eventually
from catga.testing.contracts.transport import SETTLE
from chaos import Chaos

DEST = "test_cli_dlq.Parcel"


@message_name(DEST)
@dataclass(frozen=True)
class Parcel(Event):
    parcel_id: str


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def letter(letter_id: str, parcel_id: str) -> DeadLetter:
    body = default_registry().codec_for(Parcel).encode(Parcel(parcel_id))
    return DeadLetter(
        id=letter_id,
        source=DEST,
        type_name=DEST,
        body=body,
        headers=Metadata(message_id=int(letter_id[1:]), created_at=time.time()).to_headers(DEST),
        error="RuntimeError: boom",
        attempts=5,
        failed_at=time.time(),
    )


async def _on_transport(url: str, letters: list[DeadLetter], expect: list[str] | None) -> list[str]:
    """Subscribe group "g" (creating it the first time), add ``letters``, wait for ``expect`` (any order)."""
    backends = Backends(name="test-cli-dlq")
    got: list[str] = []
    try:
        transport: Transport = await backends.opened("transport", parse_url(url))

        async def on_parcel(event: Parcel, metadata: Metadata) -> None:
            got.append(event.parcel_id)

        sub = await transport.subscribe(Parcel, on_parcel, group="g")
        for x in letters:
            await transport.dead_letters.add(x)  # type: ignore[attr-defined]
        if expect is not None:
            async with asyncio.timeout(20):
                while sorted(got) != sorted(expect):  # noqa: ASYNC110 - polling what a consumer received
                    await asyncio.sleep(0.02)
        await sub.aclose()
    finally:
        for _, close in backends.closers():
            await close()
    return got


def test_list_show_replay_and_delete(app_url: str) -> None:
    asyncio.run(_on_transport(app_url, [letter("L1", "p-1"), letter("L2", "p-2")], None))

    code, out, err = invoke("dlq", "list", "--url", app_url, "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["count"] == 2 and [x["id"] for x in listing["letters"]] == ["L1", "L2"]
    assert listing["letters"][0]["source"] == DEST and listing["letters"][0]["attempts"] == 5

    code, out, err = invoke("dlq", "list", "--url", app_url)
    assert code == 0, err
    assert "dead letters: 2 of 2" in out and "RuntimeError: boom" in out

    code, out, err = invoke("dlq", "show", "--url", app_url, "L1")
    assert code == 0, err
    shown = json.loads(out)
    assert json.loads(shown["body"]) == {"parcel_id": "p-1"} and shown["body_encoding"] == "utf-8"
    assert shown["headers"][H_TYPE] == DEST

    code, out, err = invoke("dlq", "replay", "--url", app_url, "L1", "nope")
    assert code == 1  # one of the two did not exist
    assert "replayed L1" in out and "not replayed nope: not found" in out
    assert asyncio.run(_on_transport(app_url, [], ["p-1"])) == ["p-1"]  # the consumer group got it

    code, out, _ = invoke("dlq", "delete", "--url", app_url, "L2")
    assert code == 0 and "deleted L2" in out
    code, out, _ = invoke("dlq", "delete", "--url", app_url, "L2")
    assert code == 1 and "not found" in out
    code, out, _ = invoke("dlq", "list", "--url", app_url, "--json")
    assert json.loads(out)["count"] == 0


def test_replay_all_and_bad_input(app_url: str) -> None:
    asyncio.run(_on_transport(app_url, [letter("L7", "p-7"), letter("L8", "p-8")], None))
    code, out, err = invoke("dlq", "replay", "--url", app_url, "--all", "--json")
    assert code == 0, err
    assert json.loads(out)["replayed"] == 2
    assert sorted(asyncio.run(_on_transport(app_url, [], ["p-7", "p-8"]))) == ["p-7", "p-8"]
    code, _, err = invoke("dlq", "show", "--url", app_url, "L7")
    assert code == 1 and "NotFoundError" in err
    code, _, err = invoke("dlq", "replay", "--url", app_url)
    assert code == 2 and "give letter ids, or --all" in err


def test_an_empty_list_names_the_prefix_and_hints_at_it(app_url: str) -> None:
    # A URL without the app's ?prefix= finds no letters: say where we looked instead of an empty table.
    code, out, err = invoke("dlq", "list", "--url", app_url)
    assert code == 0, err
    prefix = parse_url(app_url).prefix
    assert f"no dead letters under prefix {prefix!r}" in out
    assert "check --url's prefix" in out
    assert "dead letters: 0 of 0" not in out
    code, out, err = invoke("dlq", "list", "--url", app_url, "--json")
    assert code == 0, err
    assert json.loads(out) == {"count": 0, "prefix": prefix, "letters": []}


def test_an_in_memory_url_is_refused() -> None:
    code, _, err = invoke("dlq", "list", "--url", "memory://")
    assert code == 1 and "ConfigurationError" in err and "nats:// or redis://" in err


# -- replay end to end: a consumer dead-letters, the handler is fixed, `catga dlq replay` -----------------

CMD = "test_cli_dlq.PackParcel"


@message_name(CMD)
@dataclass(frozen=True)
class PackParcel(Command[None]):
    parcel_id: str


_SRC = str(Path(catga.__file__).resolve().parent.parent)


async def _cli(*args: str) -> tuple[int, str, str]:
    """Run ``python -m catga.cli ARGS`` (this checkout's sources first on the path)."""
    src = _SRC
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "catga.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class _Consumer:
    """A subscription with ``max_deliver=1`` whose handler fails until ``fixed``."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[int] = []

    async def __call__(self, message: object, metadata: Metadata) -> None:
        if not self.fixed:
            raise RuntimeError("handler bug (not fixed yet)")
        self.handled.append(metadata.message_id)


async def _subscribe(
    transport: Transport, kind: str, consumer: _Consumer, group: str | None = "g"
) -> Subscription:
    if kind == "event":
        return await transport.subscribe(Parcel, consumer, group=group, max_deliver=1)
    return await transport.subscribe(PackParcel, consumer, max_deliver=1)


async def _dead_lettered(
    transport: Transport, kind: str, consumer: _Consumer, group: str | None = "g"
) -> tuple[int, DeadLetter, Subscription]:
    """Subscribe ``consumer``, publish (or send) one message, wait until it is dead-lettered."""
    dlq = transport.dead_letters  # type: ignore[attr-defined]
    mid = new_id()
    sub = await _subscribe(transport, kind, consumer, group)
    if kind == "event":
        await transport.publish(Parcel("p-1"), metadata=Metadata(message_id=mid))
    else:
        await transport.send(PackParcel("p-1"), metadata=Metadata(message_id=mid))

    async def dead() -> bool:
        return await dlq.get(str(mid)) is not None

    await eventually(dead, what=f"{kind} {mid} dead-lettered")
    letter = await dlq.get(str(mid))
    assert letter is not None
    return mid, letter, sub


@pytest.mark.parametrize(
    ("kind", "restart"),
    [("event", False), ("command", False), ("command", True)],
    ids=["event", "command", "command-worker-restarted"],
)
@pytest.mark.chaos
async def test_replay_within_the_duplicate_window_delivers_exactly_once(
    app_url: str, kind: str, restart: bool, chaos: Chaos
) -> None:
    """A ``max_deliver=1`` consumer dead-letters a message; the handler is fixed (a flag, or a worker
    redeployed: stopped before the replay, started after it); ``catga dlq replay`` seconds later."""
    backends = Backends(name="test-cli-dlq-e2e")
    try:
        transport = await backends.opened("transport", parse_url(app_url))
        dlq = transport.dead_letters  # type: ignore[attr-defined]
        consumer = _Consumer()
        mid, letter, sub = await _dead_lettered(transport, kind, consumer)
        dest = CMD if kind == "command" else DEST
        assert (letter.source, letter.kind, letter.message_id) == (dest, kind, str(mid))
        if restart:
            await sub.aclose()
        consumer.fixed = True

        code, out, err = await _cli("dlq", "replay", "--url", app_url, str(mid))

        assert code == 0, out + err
        assert f"replayed {mid} ({kind}) to {dest}" in out and "1 replayed, 0 failed" in out
        assert await dlq.get(str(mid)) is None and await dlq.count() == 0
        if restart:
            await _subscribe(transport, kind, consumer)  # a command waits for a worker

        async def handled() -> bool:
            return bool(consumer.handled)

        await eventually(handled, what=f"the replayed {kind} handled")
        await asyncio.sleep(SETTLE)
        chaos.record(
            f"dlq replay of a dead-lettered {kind} inside the duplicate window "
            f"({app_url.split(':', 1)[0]}{', worker restarted' if restart else ''})",
            messages=1,
            lost=0 if consumer.handled else 1,
            twice=max(0, len(consumer.handled) - 1),
        )
        assert consumer.handled == [mid]  # exactly once, under its original message id
    finally:
        for _, close in backends.closers():
            await close()


@pytest.mark.nats
def test_nats_replay_acked_as_a_duplicate_fails_and_keeps_the_letter(
    nats_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{nats_url}?prefix={unique_name}&storage=memory"

    async def setup() -> int:
        backends = Backends(name="test-cli-dlq-dup")
        try:
            mid, _, _ = await _dead_lettered(
                await backends.opened("transport", parse_url(url)), "event", _Consumer()
            )
            return mid
        finally:
            for _, close in backends.closers():
                await close()

    mid = asyncio.run(setup())
    # Force what the old replay did: re-publish under the original Nats-Msg-Id, inside the duplicate
    # window. JetStream acks it with duplicate=true and stores nothing: that must not count as replayed.
    monkeypatch.setattr("catga.nats.transport.replay_dedup_id", lambda letter: str(mid), raising=False)
    code, out, err = invoke("dlq", "replay", "--url", url, str(mid))
    assert code == 1, out + err
    assert f"not replayed {mid} (event) to {DEST}, letter kept" in out and "duplicate" in out
    assert "0 replayed, 1 failed" in out
    code, out, err = invoke("dlq", "show", "--url", url, str(mid))
    assert code == 0, err
    assert json.loads(out)["id"] == str(mid)


@pytest.mark.redis
def test_redis_replay_refused_by_the_server_fails_and_keeps_the_letter(
    redis_url: str, unique_name: str
) -> None:
    url = f"{redis_url}?prefix={unique_name}"

    async def setup() -> int:
        backends = Backends(name="test-cli-dlq-refused")
        try:
            transport = await backends.opened("transport", parse_url(url))
            mid, _, _ = await _dead_lettered(transport, "event", _Consumer())
            # The destination stream's key now holds a string: Redis refuses the XADD (WRONGTYPE).
            key = f"{unique_name}:t:evt:{DEST}"
            await transport.client.execute_many([("DEL", key), ("SET", key, "not a stream")])  # type: ignore[attr-defined]
            return mid
        finally:
            for _, close in backends.closers():
                await close()

    mid = asyncio.run(setup())
    code, out, err = invoke("dlq", "replay", "--url", url, str(mid))
    assert code == 1, out + err
    assert f"not replayed {mid} (event) to {DEST}, letter kept" in out and "WRONGTYPE" in out
    code, out, err = invoke("dlq", "list", "--url", url, "--json")
    assert code == 0, err
    assert [x["id"] for x in json.loads(out)["letters"]] == [str(mid)]


@pytest.mark.redis
async def test_redis_letters_written_by_older_catga_replay_to_their_stream(
    redis_url: str, unique_name: str
) -> None:
    """Older Redis letters stored the stream key as ``source`` (``P:t:evt:X``); they replay to ``X``."""
    url = f"{redis_url}?prefix={unique_name}"
    backends = Backends(name="test-cli-dlq-old")
    try:
        transport = await backends.opened("transport", parse_url(url))
        dlq = transport.dead_letters  # type: ignore[attr-defined]
        got: list[str] = []

        async def on_parcel(event: Parcel, metadata: Metadata) -> None:
            got.append(event.parcel_id)

        await transport.subscribe(Parcel, on_parcel, group="g")
        old = letter("L5", "p-5")
        old.source = f"{unique_name}:t:evt:{DEST}"
        await dlq.add(old)
        listed = await dlq.get("L5")
        assert listed is not None and (listed.source, listed.kind) == (DEST, "event")

        code, out, err = await _cli("dlq", "replay", "--url", url, "L5")
        assert code == 0, out + err
        assert f"replayed L5 (event) to {DEST}" in out

        async def arrived() -> bool:
            return bool(got)

        await eventually(arrived, what="the old letter's event delivered")
        assert got == ["p-5"] and await dlq.count() == 0
    finally:
        for _, close in backends.closers():
            await close()


async def test_an_event_nobody_reads_is_not_replayed_and_its_letter_stays(app_url: str) -> None:
    """The only reader was a private subscription (``group=None``), gone since: JetStream would ack the
    event and drop it at once (interest retention), Redis would store it where no later group looks."""
    backends = Backends(name="test-cli-dlq-nobody")
    try:
        transport = await backends.opened("transport", parse_url(app_url))
        dlq = transport.dead_letters  # type: ignore[attr-defined]
        mid, letter, sub = await _dead_lettered(transport, "event", _Consumer(), group=None)
        await sub.aclose()

        code, out, err = await _cli("dlq", "replay", "--url", app_url, str(mid))

        assert code == 1, out + err
        assert f"not replayed {mid} (event) to {DEST}, letter kept" in out and "start the subscriber" in out
        assert "0 replayed, 1 failed" in out
        assert await dlq.get(str(mid)) == letter
    finally:
        for _, close in backends.closers():
            await close()
