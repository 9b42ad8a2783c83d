"""docs/protocols.md's fencing example runs as written: the store refuses the superseded holder's write."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_fencing_example_refuses_the_stale_holder(capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "docs" / "protocols.md").read_text()
    section = text.split("### Fencing: the store checks the token\n", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "docs/protocols.md", "exec"), {"__name__": "fencing_example"})
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "refused: stale fencing token 1 for 'order-1': 2 was already used",
        "written by B",
    ]
