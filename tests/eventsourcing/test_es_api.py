"""catga.eventsourcing: public API pinning and the docs page's examples."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

import catga.eventsourcing

DOC = Path(__file__).resolve().parents[2] / "docs" / "event-sourcing.md"
MODULES = ("aggregate", "checkpoints", "projections", "repository", "snapshots", "upcasting")


def test_package_all_is_exact() -> None:
    public = {
        name
        for name, value in vars(catga.eventsourcing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(catga.eventsourcing.__all__) == public
    assert len(catga.eventsourcing.__all__) == len(set(catga.eventsourcing.__all__))


@pytest.mark.parametrize("module", MODULES)
def test_module_all_names_exist_and_are_exported(module: str) -> None:
    mod = importlib.import_module(f"catga.eventsourcing.{module}")
    assert isinstance(mod.__all__, tuple)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"
        assert name in catga.eventsourcing.__all__, f"{module}.{name} is not re-exported by the package"


def test_docs_examples_run() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 5
    module = types.ModuleType("catga_docs_event_sourcing")
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
