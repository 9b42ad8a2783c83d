"""Finding benchmark suites: every module of :mod:`catga.bench.suites` that defines ``SUITE``.

Modules are listed with :mod:`pkgutil` without importing them; a suite is imported only when it is
run (or when ``catga bench --list`` asks for every suite). A suite's command-line name is its ``SUITE``
attribute, by convention the module name with ``-`` for ``_`` (``eventstore_nats.py`` →
``eventstore-nats``). Modules whose name starts with ``_`` are helpers, never suites.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, cast

from catga.bench.harness import BenchError

if TYPE_CHECKING:
    from catga.bench.harness import BenchCase, BenchEnv

__all__ = (
    "Suite",
    "SuiteUnavailableError",
    "available_suites",
    "check_suite_names",
    "load_suite",
    "plain_text",
    "suite_modules",
)

SUITES_PACKAGE = "catga.bench.suites"

_EXTRA_FOR = {
    "nats": "nats",
    "redis": "redis",
    "cqrs": "bench",
    "di": "bench",
    "eventsourcing": "bench",
    "faststream": "bench",
    "matplotlib": "bench",
    "uvloop": "bench",
}


class SuiteUnavailableError(BenchError):
    """Raised when a suite cannot be imported (usually a missing optional dependency).

    Attributes:
        suite: The suite name.
        missing: The missing module's name, when an import failed.
    """

    def __init__(self, suite: str, reason: str, missing: str | None = None) -> None:
        self.suite = suite
        self.missing = missing
        super().__init__(f"benchmark suite {suite!r} is unavailable: {reason}")


@dataclass(frozen=True)
class Suite:
    """A loaded suite.

    Attributes:
        name: The ``SUITE`` name.
        module: The module's dotted name.
        cases: The module's ``cases(env)`` function.
        doc: First line of the module docstring, without Sphinx markup.
    """

    name: str
    module: str
    cases: Callable[[BenchEnv], list[BenchCase]]
    doc: str = ""


def suite_modules(package: str = SUITES_PACKAGE) -> dict[str, str]:
    """Map the conventional suite name to the module's dotted name, without importing anything."""
    pkg = importlib.import_module(package)
    out: dict[str, str] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        out[info.name.replace("_", "-")] = f"{package}.{info.name}"
    return dict(sorted(out.items()))


def _import(module_name: str, suite: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] or None
        extra = _EXTRA_FOR.get(missing or "", "bench")
        raise SuiteUnavailableError(
            suite,
            f"cannot import {missing or module_name!r} ({exc}); "
            f"install it with: pip install 'catga[{extra}]'",
            missing,
        ) from exc


_ROLE = re.compile(r":[\w:.-]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1)
    if text.endswith(">") and "<" in text:  # :role:`shown text <target>`
        return text[: text.rindex("<")].strip()
    text = text.removeprefix("!")
    if text.startswith("~"):  # :class:`~a.b.C` shows C
        return text[1:].rsplit(".", 1)[-1]
    return text


def plain_text(doc: str) -> str:
    """``doc`` without Sphinx markup, for a terminal: roles show their text, ````x```` becomes ``x``."""
    return _LITERAL.sub(r"\1", _ROLE.sub(_role_text, doc))


def _as_suite(module: ModuleType) -> Suite | None:
    name = getattr(module, "SUITE", None)
    cases = getattr(module, "cases", None)
    if not isinstance(name, str) or not callable(cases):
        return None
    doc = (module.__doc__ or "").strip().splitlines()
    return Suite(
        name=name,
        module=module.__name__,
        cases=cast("Callable[[BenchEnv], list[BenchCase]]", cases),
        doc=plain_text(doc[0]) if doc else "",
    )


def load_suite(name: str, package: str = SUITES_PACKAGE) -> Suite:
    """Import and return the suite called ``name``.

    The module named after the suite is tried first; if none matches, every module is imported and
    its ``SUITE`` compared.

    Raises:
        SuiteUnavailableError: The suite's module failed to import.
        BenchError: No module defines this suite (the message lists the known ones).
    """
    modules = suite_modules(package)
    module_name = modules.get(name)
    if module_name is not None:
        suite = _as_suite(_import(module_name, name))
        if suite is not None and suite.name == name:
            return suite
    for other, other_module in modules.items():
        if other_module == module_name:
            continue
        try:
            suite = _as_suite(_import(other_module, other))
        except SuiteUnavailableError:
            continue
        if suite is not None and suite.name == name:
            return suite
    known = ", ".join(modules) or "(none)"
    raise BenchError(f"unknown benchmark suite {name!r}; known suites: {known} (see `catga bench --list`)")


def check_suite_names(names: list[str], package: str = SUITES_PACKAGE) -> None:
    """Fail fast on a misspelt suite name (a suite that exists but cannot import is not an error here).

    Raises:
        BenchError: A name matches no suite module; the message lists the known suites.
    """
    modules = suite_modules(package)
    for name in names:
        if name in modules:
            continue
        try:
            load_suite(name, package)
        except SuiteUnavailableError:
            continue


def available_suites(package: str = SUITES_PACKAGE) -> list[Suite | SuiteUnavailableError]:
    """Import every suite module; return the suites, or the error for each one that failed to import."""
    out: list[Suite | SuiteUnavailableError] = []
    for name, module_name in suite_modules(package).items():
        try:
            suite = _as_suite(_import(module_name, name))
        except SuiteUnavailableError as exc:
            out.append(exc)
            continue
        if suite is not None:
            out.append(suite)
    return out
