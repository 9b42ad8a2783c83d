"""The guard of the nats-py pin: the lean connection authenticates exactly like nats-py.

``catga.nats._wire`` reads nats-py private attributes (``NATS_PY_PRIVATE``) to build its ``CONNECT``.
These tests build real nats-py clients with each kind of credentials and compare our ``CONNECT``
fields with the ones nats-py itself sends; they fail when an attribute disappears or changes meaning
in a new nats-py, which is when the upper bound in ``pyproject.toml`` may be raised (after fixing).

The ``nkeys`` package (ed25519 signing) is not a catga dependency: a stand-in module signs
deterministically, so both sides must produce the very same ``sig``.
"""

from __future__ import annotations

import base64
import json
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
from nats.aio.client import Client

from catga.errors import ConfigurationError
from catga.nats._wire import NATS_PY_PRIVATE, LeanConnection

pytestmark = pytest.mark.nats

_AUTH_FIELDS = ("sig", "jwt", "nkey", "auth_token", "user", "pass")
_NONCE = "a-nonce-from-the-server"
_JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.fake-user-jwt.sig"
_SEED = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"


class _KeyPair:
    def __init__(self, seed: bytes) -> None:
        self.seed = bytes(seed).strip()

    @property
    def public_key(self) -> bytes:
        return b"UPUBLIC" + self.seed[-8:]

    def sign(self, data: bytes) -> bytes:
        return b"signed(" + self.seed + b"," + data + b")"

    def wipe(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fake_nkeys(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("nkeys")
    module.from_seed = _KeyPair  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nkeys", module)


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.creds"
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{_JWT}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{_SEED}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for nc in made:
        await nc.close()


def _server(nats_url: str, userinfo: str = "") -> str:
    parts = urlsplit(nats_url)
    return f"nats://{userinfo}{parts.hostname}:{parts.port}"


Case = Callable[[str, Path], dict[str, Any]]

CASES: dict[str, Case] = {
    "nkeys seed": lambda url, creds: {"servers": [_server(url)], "nkeys_seed_str": _SEED},
    "nkeys seed and token": lambda url, creds: {
        "servers": [_server(url)],
        "nkeys_seed_str": _SEED,
        "token": "callout-token",
    },
    "creds file": lambda url, creds: {"servers": [_server(url)], "user_credentials": str(creds)},
    "user and password": lambda url, creds: {"servers": [_server(url)], "user": "ann", "password": "pw"},
    "token": lambda url, creds: {"servers": [_server(url)], "token": "t0ken"},
    "token callback": lambda url, creds: {"servers": [_server(url)], "token": lambda: "t0ken-cb"},
    "URL user and password": lambda url, creds: {"servers": [_server(url, "bob:secret@")]},
    "URL token": lambda url, creds: {"servers": [_server(url, "urltoken@")]},
    "nothing": lambda url, creds: {"servers": [_server(url)]},
}


def _auth(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: fields[k] for k in _AUTH_FIELDS if k in fields}


@pytest.mark.parametrize("case", list(CASES))
async def test_our_connect_authenticates_like_nats_py(
    case: str, nats_url: str, creds_file: Path, clients: list[Client]
) -> None:
    nc = Client()
    clients.append(nc)
    await nc.connect(**CASES[case](nats_url, creds_file), allow_reconnect=False, connect_timeout=5)
    for name in NATS_PY_PRIVATE:
        assert hasattr(nc, name), f"nats-py no longer has {name}: re-check catga.nats._wire"
    # What nats-py sends to a server that asks for a signature (its INFO carries a nonce):
    nc._server_info = {**nc._server_info, "nonce": _NONCE}
    line = nc._connect_command()
    assert line.startswith(b"CONNECT ")
    theirs = _auth(json.loads(line[len(b"CONNECT ") :]))
    ours = _auth(LeanConnection(nc)._connect_fields(nc.connected_url, {**nc._server_info}))
    assert ours == theirs
    if "seed" in case or "creds" in case:  # the signature really is computed, from the nonce
        assert base64.b64decode(theirs["sig"]).endswith(f",{_NONCE})".encode())
    if case == "creds file":
        assert theirs["jwt"] == _JWT
    if case == "nothing":
        assert theirs == {}


async def test_the_inbox_prefix_is_the_clients(nats_url: str, clients: list[Client]) -> None:
    nc = await nats.connect(_server(nats_url), inbox_prefix="_CUSTOM.inbox", allow_reconnect=False)
    clients.append(nc)
    assert LeanConnection(nc).prefix.startswith(b"_CUSTOM.inbox.")
    default = await nats.connect(_server(nats_url), allow_reconnect=False)
    clients.append(default)
    assert LeanConnection(default).prefix.startswith(b"_INBOX.")


async def test_a_missing_private_attribute_is_refused_not_ignored(
    nats_url: str, clients: list[Client]
) -> None:
    nc = await nats.connect(_server(nats_url), nkeys_seed_str=_SEED, allow_reconnect=False)
    clients.append(nc)
    wire = LeanConnection(nc)

    class Renamed:  # a future nats-py that renamed the attribute
        def __getattr__(self, name: str) -> Any:
            if name == "_signature_cb":
                raise AttributeError(name)
            return getattr(nc, name)

    wire._nc = Renamed()
    with pytest.raises(ConfigurationError, match="_signature_cb"):
        wire._connect_fields(nc.connected_url, {"nonce": _NONCE})
