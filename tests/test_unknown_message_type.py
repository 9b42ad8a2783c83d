"""The error (and dead-letter reason) for a wire name no class in the process has."""

from __future__ import annotations

import pytest

from catga.errors import UnknownMessageTypeError
from catga.serialization import TypeRegistry


def test_the_reason_says_what_an_app_user_does() -> None:
    # The dead letter's error is this text. App users never touch TypeRegistry; they declare types
    # with app.consume / @app.handler, or align wire names with @message_name.
    with pytest.raises(UnknownMessageTypeError) as info:
        TypeRegistry().decode("shop.OrderPlaced", b"{}")
    text = str(info.value)
    assert text.startswith("unknown message type 'shop.OrderPlaced': ")
    assert "TypeRegistry.register()" not in text
    assert "app.consume(TheClass)" in text and "@app.handler" in text
    assert "@message_name('shop.OrderPlaced')" in text
    assert "default_registry().register(TheClass)" in text  # the event-store reader's way
    assert info.value.type_name == "shop.OrderPlaced"
