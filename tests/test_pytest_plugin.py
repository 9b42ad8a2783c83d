"""The pytest plugin as a user meets it: a fresh project, catga installed, pytest run in a subprocess.

The plugin is found through the ``pytest11`` entry point declared in pyproject.toml. The shared venv
may hold an older install of catga, so each run puts a small distribution on the path whose entry
point is exactly the one pyproject.toml declares (what ``pip install catga`` writes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _entry_points() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["pytest11"])


def _doc_files(page: str, section: str) -> dict[str, str]:
    """The fenced blocks of a docs page's section whose first line is ``# <path>``, by path."""
    text = (ROOT / "docs" / page).read_text()
    text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    files: dict[str, str] = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith((".py", ".toml")):
            files[first[2:].strip()] = block
    return files


def _run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    site = project.parent / "site"
    dist = site / "catga_entry_point_probe-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: catga-entry-point-probe\nVersion: 0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in _entry_points().items())
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{lines}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CATGA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(site)])
    # -P: the project directory is not on sys.path by itself, as with the `pytest` command.
    return subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    project = tmp_path / "project"
    for path, text in files.items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if (project / "myapp").is_dir():
        (project / "myapp" / "__init__.py").touch()
    return project


def test_pyproject_declares_the_plugin_under_its_module_name() -> None:
    # Named after the module: a conftest.py with pytest_plugins = [that module] then loads it once.
    assert _entry_points() == {"catga.testing.pytest_plugin": "catga.testing.pytest_plugin"}


def test_the_getting_started_page_has_a_whole_project_to_copy() -> None:
    files = _doc_files("getting-started.md", "Testing")
    assert {"myapp/orders.py", "tests/test_orders.py", "pyproject.toml"} <= set(files), sorted(files)


@pytest.mark.slow
def test_the_getting_started_project_passes_as_copied(tmp_path: Path) -> None:
    project = _project(tmp_path, _doc_files("getting-started.md", "Testing"))
    done = _run(project, "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed in" in done.stdout and "warning" not in done.stdout.lower(), done.stdout


@pytest.mark.slow
def test_markers_async_tests_and_an_old_conftest_in_a_project_without_asyncio_mode(tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        {
            "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "--strict-markers"\n',
            "conftest.py": 'pytest_plugins = ["catga.testing.pytest_plugin"]\n',  # the way before pytest11
            "test_servers.py": (
                "import pytest\n\n"
                "@pytest.mark.redis\ndef test_marked() -> None: ...\n\n"
                "def test_uses_nats(nats_url: str) -> None: ...\n\n"
                "def test_uses_postgres(postgres_url: str) -> None: ...\n\n"
                "def test_plain(unique_name: str) -> None:\n    assert unique_name.startswith('t')\n\n"
                "async def test_async() -> None: ...\n"
            ),
        },
    )
    # Collection only: the fixtures' markers select the tests that need a server.
    done = _run(project, "-q", "--co", "-m", "nats or postgres")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_uses_nats" in done.stdout and "test_uses_postgres" in done.stdout
    assert "test_marked" not in done.stdout and "2/5 tests collected" in done.stdout
    # pytest-asyncio is installed but in strict mode: the async test fails saying how to set it up.
    done = _run(project, "-q", "-m", "not nats and not postgres and not redis")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed, 3 deselected" in done.stdout
    assert "test_async is an 'async def' test and no plugin ran it: with pytest-asyncio" in done.stdout
    assert 'asyncio_mode = "auto"' in done.stdout
