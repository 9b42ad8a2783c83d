"""The README's commands and code must be true as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_ci_runs_make_test() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines


def test_readme_python_example_runs_as_pasted(tmp_path: Path) -> None:
    """The first python block, saved as a file and run as a script (nothing appended), prints the order id."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    # in memory, whatever the shell's CATGA_* variables say
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATGA_")}
    out = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.strip()
    assert printed.isdigit(), f"expected the new order id, got {printed!r}; stderr: {out.stderr}"
    assert int(printed) > 0


def _dry_run(tmp_path: Path, target: str) -> str:
    """`make -n TARGET` on a copy of the Makefile: prints the commands the target would run, runs none."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed: `apt-get install make`")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    out = subprocess.run(
        ["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True, env=env
    )
    return out.stdout


def test_make_demo_installs_no_system_packages(tmp_path: Path) -> None:
    """The demo runs in memory: its set-up is the venv only, never apt for servers it never uses."""
    commands = _dry_run(tmp_path, "demo")
    assert "catga demo" in commands
    assert "pip install" in commands
    assert "apt-get" not in commands
    assert "system-deps" not in commands


def test_make_setup_shows_progress(tmp_path: Path) -> None:
    """A fresh pip install takes about a minute: pip must not be silenced, and each step announces itself."""
    commands = _dry_run(tmp_path, "demo")
    pip_lines = [line for line in commands.splitlines() if "pip install" in line]
    assert pip_lines
    assert not [line for line in pip_lines if re.search(r"\s-q\b|--quiet", line)], pip_lines
    announced = [line for line in commands.splitlines() if line.startswith("echo")]
    assert len(announced) >= len(pip_lines)


def test_make_test_installs_the_servers(tmp_path: Path) -> None:
    commands = _dry_run(tmp_path, "test")
    assert "apt-get" in commands and "redis-server" in commands and "postgresql" in commands
    assert "pytest" in commands
