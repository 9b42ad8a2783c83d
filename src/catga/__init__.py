"""catga: asyncio CQRS, event sourcing and reliable messaging on memory, NATS JetStream and Redis."""

from __future__ import annotations

from catga.app import App
from catga.context import Context, current_context
from catga.errors import (
    CatgaError,
    ConcurrencyError,
    ConfigurationError,
    HandlerNotFoundError,
    NotFoundError,
    ValidationError,
)
from catga.handlers import handler
from catga.mediator import Mediator
from catga.messages import Command, Event, Message, Metadata, QoS, Query, Request
from catga.result import Result

__version__ = "0.1.0"

__all__ = (
    "CatgaError",
    "Command",
    "ConcurrencyError",
    "ConfigurationError",
    "Event",
    "HandlerNotFoundError",
    "Message",
    "Metadata",
    "NotFoundError",
    "QoS",
    "Query",
    "Request",
    "Result",
    "ValidationError",
    "__version__",
    "App",
    "Context",
    "Mediator",
    "current_context",
    "handler",
)
