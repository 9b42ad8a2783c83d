"""``catga dlq list|show|replay|delete`` against real NATS and Redis servers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from typer.testing import CliRunner

from catga.backends import Backends, parse_url
from catga.cli import app
from catga.messages import H_TYPE, Event, Metadata, message_name
from catga.protocols import DeadLetter, Transport
from catga.serialization import default_registry

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
        transport: Transport = await backends.transport(parse_url(url))

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


def test_an_in_memory_url_is_refused() -> None:
    code, _, err = invoke("dlq", "list", "--url", "memory://")
    assert code == 1 and "ConfigurationError" in err and "nats:// or redis://" in err
