"""ValidationBehavior: reject invalid messages before their handler runs.

Validators for a type are found once, when its chain is composed:

* a ``validate(self)`` method defined on the message class (pydantic's inherited ``BaseModel.validate``
  is ignored: pydantic models are validated when they are constructed), and
* validators registered with :meth:`ValidationBehavior.add` (for the type or one of its bases).

A validator takes the message and either returns None (valid), returns a mapping of field name to a
problem (``str``) or problems (list of ``str``), or raises :class:`~catga.errors.ValidationError`. It
may be ``async``. All validators run; their field errors are merged into one failed Result with code
``validation`` and ``metadata["field_errors"]``. Types with no validator skip this behavior entirely.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from catga.context import Context
from catga.errors import ErrorCode, ValidationError
from catga.handlers import HandlerInfo
from catga.pipeline.base import Behavior, Next
from catga.result import Result

__all__ = ("ValidationBehavior", "Validator")

Validator = Callable[[Any], Any]
"""``(message) -> None | Mapping[str, str | list[str]]``, or an awaitable of it; may raise ValidationError."""


def _own_validate(cls: type) -> Validator | None:
    for klass in cls.__mro__:
        fn = klass.__dict__.get("validate")
        if fn is None:
            continue
        if klass.__module__.split(".")[0] == "pydantic" or not inspect.isfunction(fn):
            return None  # pydantic's deprecated classmethod, or a static/class method: not ours
        return fn
    return None


def _merge(into: dict[str, list[str]], found: Any) -> None:
    if not found:
        return
    if not isinstance(found, Mapping):
        into.setdefault("", []).append(str(found))
        return
    for field, problems in found.items():
        bucket = into.setdefault(str(field), [])
        if isinstance(problems, str):
            bucket.append(problems)
        else:
            bucket.extend(str(p) for p in problems)


class ValidationBehavior(Behavior):
    """Run the message's validators; a failure returns a ``validation`` Result without calling the handler.

    Args:
        validators: initial validators per message type.
    """

    def __init__(self, validators: Mapping[type, list[Validator]] | None = None) -> None:
        self._validators: dict[type, list[Validator]] = {t: list(v) for t, v in (validators or {}).items()}

    def add(self, message_type: type, validator: Validator) -> ValidationBehavior:
        """Register ``validator`` for ``message_type`` and its subclasses. Returns self.

        Add validators before the type is first dispatched: chains are composed once.
        """
        self._validators.setdefault(message_type, []).append(validator)
        return self

    def validators_for(self, message_type: type) -> list[Validator]:
        """Every validator that applies to ``message_type``, own ``validate`` method first."""
        found: list[Validator] = []
        own = _own_validate(message_type)
        if own is not None:
            found.append(own)
        for klass in message_type.__mro__:
            found.extend(self._validators.get(klass, ()))
        return found

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the validation layer, or skip it when the type has no validator."""
        checks = tuple(self.validators_for(info.message_type))
        if not checks:
            return call_next
        type_name = info.name

        async def validate(message: Any, ctx: Context) -> Result[Any]:
            errors: dict[str, list[str]] = {}
            for check in checks:
                try:
                    found = check(message)
                    if inspect.isawaitable(found):
                        found = await found
                except ValidationError as exc:
                    if exc.field_errors:
                        _merge(errors, exc.field_errors)
                    else:
                        _merge(errors, {"": [exc.args[0] if exc.args else "invalid"]})
                    continue
                _merge(errors, found)
            if errors:
                error = ValidationError(f"invalid {type_name} {ctx.message_id}", errors)
                return Result(False, None, str(error), ErrorCode.VALIDATION, error, {"field_errors": errors})
            return await call_next(message, ctx)

        return validate
