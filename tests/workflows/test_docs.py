"""docs/workflows.md's first example runs as pasted and prints what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_first_example_prints_what_the_page_says(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "workflows.md").read_text()
    script = tmp_path / "example.py"
    script.write_text(re.findall(r"```python\n(.*?)```", page, re.S)[0])
    out = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "released reservation-o-1",
        "compensated - workflow 'order-o-1': step 2 (charge_card) failed: RuntimeError: card declined",
    ]
    assert "`released reservation-o-1`" in page and out.stdout.splitlines()[1] in page
