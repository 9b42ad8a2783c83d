"""Upcasting: read events stored in an old shape as the current event class.

When an event class changes shape, keep the old events as they are and register *upcasters*: functions
that turn the decoded JSON object of schema version ``n`` into the object of version ``n + 1`` (and may
rename the type). :class:`UpcastingRegistry` is a :class:`~catga.serialization.TypeRegistry` that runs them
while decoding, so passing ``registry=UpcastingRegistry(upcasters, types=[...])`` to any backend store makes
old events arrive as current objects, in repositories and projections alike::

    upcasters = Upcasters()

    @upcasters.upcaster("OrderPlaced", 1)   # v1 {"total": 42} -> v2 {"amount": 42, "currency": "EUR"}
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["amount"] = data.pop("total")
        data["currency"] = "EUR"
        return data

    registry = UpcastingRegistry(upcasters, types=[OrderPlaced])

**Where the schema version lives.** A type's *current* version is the highest version its upcasters lead
to (1 when it has none). The encoder embeds it in the JSON object of every event of a type whose current
version is above 1, under the key ``"schema-version"``; a body without the key is version 1 -- exactly the
events written before the first upcaster existed. The decoder removes the key before building the object,
so classes never see it (``forbid_unknown_fields`` works). The version is embedded in the body rather than
in the append metadata because metadata is shared by every event of one append (events of several types
and versions) and because stores decode with ``registry.decode(type_name, body)``, which never sees
metadata. Code that does have a version from elsewhere (e.g. ``stored.metadata["schema-version"]`` written
by an importer) can call :meth:`Upcasters.apply` directly.

Every writer of a stream must use the same upcasters (a plain registry writes current-shape events without
the version key, which would read back as version 1). Bodies that are not JSON/msgpack objects (array-like
Structs) are decoded without upcasting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import msgspec

from catga.errors import ConfigurationError, SerializationError, UnknownMessageTypeError
from catga.eventsourcing._state import convert
from catga.messages import type_name as wire_name
from catga.serialization import Codec, Format, TypeRegistry

__all__ = ("SCHEMA_VERSION_KEY", "Upcast", "Upcasters", "UpcastingRegistry")

#: The key of the schema version inside encoded event bodies (and the conventional metadata key).
SCHEMA_VERSION_KEY = "schema-version"

#: An upcaster: takes the decoded object of one schema version, returns the next version's object.
Upcast = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcast)
T = TypeVar("T")


class _Step(NamedTuple):
    fn: Upcast
    to_name: str
    to_version: int


class Upcasters:
    """Chains of upcasters keyed by ``(type name, from schema version)``.

    Registration is meant for start-up; lookups read dicts that are replaced whole on change.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], _Step] = {}
        self._current: dict[str, int] = {}
        self._names: frozenset[str] = frozenset()
        #: Incremented on every registration (lets registries drop cached codecs).
        self.generation = 0

    def register(
        self,
        type_name: str | type,
        from_version: int,
        fn: Upcast,
        *,
        to_type_name: str | type | None = None,
        to_version: int | None = None,
    ) -> None:
        """Register ``fn`` to turn ``type_name`` at ``from_version`` into the next version.

        Args:
            type_name: the stored type name (or a class, for its wire name).
            from_version: the schema version ``fn`` reads (1 for bodies without a version).
            fn: takes the decoded JSON object, returns the new object (it may modify and return its
                argument).
            to_type_name: the type name after the step; default unchanged (use it for renames).
            to_version: the schema version after the step; default ``from_version + 1``.

        Raises:
            ConfigurationError: ``from_version < 1``, ``to_version <= from_version``, or a step from
                ``(type_name, from_version)`` is already registered.
        """
        name = _name(type_name)
        target = name if to_type_name is None else _name(to_type_name)
        version = from_version + 1 if to_version is None else to_version
        if from_version < 1:
            raise ConfigurationError(f"schema versions start at 1; got from_version={from_version}")
        if version <= from_version:
            raise ConfigurationError(
                f"upcaster {name!r} v{from_version} must lead to a higher version, not v{version}"
            )
        key = (name, from_version)
        if key in self._steps:
            raise ConfigurationError(
                f"an upcaster from {name!r} v{from_version} is already registered "
                f"({self._steps[key].fn!r}); each (type, version) has one"
            )
        steps = dict(self._steps)
        steps[key] = _Step(fn, target, version)
        current = dict(self._current)
        current[target] = max(current.get(target, 1), version)
        self._steps, self._current = steps, current
        self._names = frozenset({n for n, _ in steps} | set(current))
        self.generation += 1

    def upcaster(
        self,
        type_name: str | type,
        from_version: int,
        *,
        to_type_name: str | type | None = None,
        to_version: int | None = None,
    ) -> Callable[[U], U]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: U) -> U:
            self.register(type_name, from_version, fn, to_type_name=to_type_name, to_version=to_version)
            return fn

        return decorate

    def current_version(self, type_name: str | type) -> int:
        """The schema version new events of this type are written with (1 without upcasters)."""
        return self._current.get(_name(type_name), 1)

    def involves(self, type_name: str) -> bool:
        """Whether any upcaster reads or produces ``type_name``."""
        return type_name in self._names

    def apply(self, type_name: str, version: int, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the chain from ``(type_name, version)`` to the current version.

        Returns:
            ``(type name, object)`` after the last step (unchanged when no step applies).

        Raises:
            SerializationError: an upcaster failed, or the chain stops below the type's current version
                (a missing upcaster).
        """
        name = type_name
        while True:
            step = self._steps.get((name, version))
            if step is None:
                break
            try:
                raw = step.fn(raw)
            except Exception as exc:
                raise SerializationError(
                    f"upcaster {step.fn!r} failed on {name!r} v{version}: {exc}"
                ) from exc
            if not isinstance(raw, dict):
                raise SerializationError(
                    f"upcaster {step.fn!r} for {name!r} v{version} returned {type(raw).__name__}, not a dict"
                )
            name, version = step.to_name, step.to_version
        current = self._current.get(name, 1)
        if version < current:
            raise SerializationError(
                f"event {name!r} has schema version {version} but the current version is {current} "
                f"and no upcaster reads v{version}; register one with "
                f"upcasters.register({name!r}, {version}, fn)"
            )
        return name, raw


def _name(value: str | type) -> str:
    if isinstance(value, type):
        return wire_name(value)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"a type name must be a non-empty str or a class, got {value!r}")
    return value


class UpcastingRegistry(TypeRegistry):
    """A :class:`~catga.serialization.TypeRegistry` that upcasts old events while decoding.

    Types without upcasters keep the base registry's fast typed codecs. For a type name involved in an
    upcaster, decoding parses the body into plain data, reads and removes ``"schema-version"``
    (default 1), runs :meth:`Upcasters.apply` and converts the result into the class registered under the
    resulting name; encoding embeds the current version when it is above 1.

    Args:
        upcasters: the upcaster chains.
        format: ``"json"`` (default) or ``"msgpack"``.
        types: types to register right away.
    """

    def __init__(self, upcasters: Upcasters, format: Format = "json", types: Iterable[type] = ()) -> None:
        self.upcasters = upcasters
        self._versioned: dict[str, Codec] = {}
        self._generation = -1
        super().__init__(format, types)

    def register(self, cls: type[T], name: str | None = None) -> type[T]:
        """See :meth:`TypeRegistry.register`; also drops cached upcasting codecs."""
        result = super().register(cls, name)
        self._versioned = {}
        return result

    def codec_for(self, cls: type) -> Codec:
        """The codec of ``cls``; an upcasting codec when upcasters involve its name."""
        codec = super().codec_for(cls)
        if not self.upcasters.involves(codec.name):
            return codec
        return self._upcasting_codec(codec.name)

    def codec_named(self, name: str) -> Codec:
        """The codec for ``name``; an upcasting codec when upcasters involve it (even if unregistered).

        Raises:
            UnknownMessageTypeError: the name is neither registered nor known to the upcasters.
        """
        if not self.upcasters.involves(name):
            return super().codec_named(name)
        return self._upcasting_codec(name)

    def _base_codec(self, name: str) -> Codec:
        return super().codec_named(name)

    def _upcasting_codec(self, name: str) -> Codec:
        if self._generation != self.upcasters.generation:
            self._versioned = {}
            self._generation = self.upcasters.generation
        codec = self._versioned.get(name)
        if codec is None:
            codec = _UpcastingCodec(self, name)
            cache = dict(self._versioned)
            cache[name] = codec
            self._versioned = cache
        return codec


class _UpcastingCodec(Codec):
    """Codec for a type name involved in upcasting (see :class:`UpcastingRegistry`)."""

    __slots__ = ("_base", "_parse", "_registry", "_serialize")

    def __init__(self, registry: UpcastingRegistry, name: str) -> None:
        self._registry = registry
        self.name = name
        try:
            self._base: Codec | None = registry._base_codec(name)
        except UnknownMessageTypeError:
            self._base = None  # a retired name: only decodable through its upcasters
        self.type = self._base.type if self._base is not None else object
        if registry.format == "json":
            self._parse: Callable[[Any], Any] = msgspec.json.decode
            self._serialize: Callable[[Any], bytes] = msgspec.json.encode
        else:
            self._parse = msgspec.msgpack.decode
            self._serialize = msgspec.msgpack.encode
        self._encode = self._encode_versioned
        self._decode = self._decode_upcasted

    def _encode_versioned(self, message: Any) -> bytes:
        if self._base is None:
            raise SerializationError(f"{self.name!r} is a retired type name; encode the current type")
        body = self._base.encode(message)
        version = self._registry.upcasters.current_version(self.name)
        if version <= 1:
            return body
        if self._registry.format == "json" and body[:1] == b"{":
            head = b'{"%s":%d' % (SCHEMA_VERSION_KEY.encode(), version)
            return head + b"}" if body == b"{}" else head + b"," + body[1:]
        raw = self._parse(body)
        if isinstance(raw, dict):
            raw = {SCHEMA_VERSION_KEY: version, **raw}
            return self._serialize(raw)
        return body

    def _decode_upcasted(self, data: Any) -> Any:
        try:
            raw = self._parse(data)
        except msgspec.DecodeError as exc:
            raise SerializationError(f"cannot decode {self.name}: malformed body ({exc})") from exc
        if not isinstance(raw, dict):
            if self._base is None:
                raise SerializationError(f"cannot upcast {self.name}: the body is not an object")
            return self._base.decode(data)
        version = raw.pop(SCHEMA_VERSION_KEY, 1)
        if type(version) is not int or version < 1:
            raise SerializationError(
                f"cannot decode {self.name}: {SCHEMA_VERSION_KEY!r} must be an int >= 1, got {version!r}"
            )
        name, raw = self._registry.upcasters.apply(self.name, version, raw)
        target = self._base if name == self.name and self._base is not None else None
        if target is None:
            target = self._registry._base_codec(name)
        return convert(raw, target.type)

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode ``data``, upcasting it to the current version first.

        Raises:
            UnknownMessageTypeError: the chain ends in a type name that is not registered.
            SerializationError: malformed bytes, a failing or missing upcaster, or data not fitting the type.
        """
        try:
            return self._decode_upcasted(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot decode {self.name}: {exc}") from exc
