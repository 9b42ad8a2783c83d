"""``catga workflows list|show|cancel`` against a real Redis server."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

import catga
from catga.cli import app as cli
from catga.testing.contracts._util import eventually
from catga.workflows import COMPLETED, SLEEPING, Workflow

pytestmark = pytest.mark.redis


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


async def test_list_show_and_cancel(redis_url: str, unique_name: str) -> None:
    url = f"{redis_url}?prefix={unique_name}&poll_interval=0.05"  # the CLI takes the app's URL as is
    app = catga.App(workflows=url)
    assert app.workflows.poll_interval == 0.05

    @app.workflow
    async def nap(wf: Workflow, seconds: float) -> str:
        await wf.sleep(seconds)
        return "rested"

    async with app:
        done = await app.start_workflow(nap, 0.0, id="done-1")
        assert (await app.wait_workflow(done)).status == COMPLETED
        asleep = await app.start_workflow(nap, 3600.0, id="asleep-1")

        async def sleeping() -> bool:
            state = await app.workflows.get(asleep)
            return state is not None and state.status == SLEEPING

        await eventually(sleeping, what="the workflow sleeps")

        code, out, _ = await _in_thread("workflows", "list", "--url", url, "--json")
        assert code == 0
        assert [(w["id"], w["status"]) for w in json.loads(out)["workflows"]] == [
            ("done-1", "completed"),
            ("asleep-1", "sleeping"),
        ]
        code, out, _ = await _in_thread("workflows", "list", "--url", url, "--status", "sleeping", "--json")
        assert [w["id"] for w in json.loads(out)["workflows"]] == ["asleep-1"]
        code, out, _ = await _in_thread("workflows", "show", "--url", url, "done-1")
        shown = json.loads(out)
        assert (shown["status"], shown["result"]) == ("completed", '"rested"')
        assert [e["kind"] for e in shown["history"]] == ["sleep"]

        code, out, _ = await _in_thread("workflows", "cancel", "--url", url, "asleep-1")
        assert code == 0 and "cancel requested for asleep-1" in out
        state = await app.wait_workflow(asleep)
        assert state.status == "cancelled"

        code, _, err = await _in_thread("workflows", "cancel", "--url", url, "done-1")
        assert code == 1 and "NotFoundError" in err
        code, _, err = await _in_thread("workflows", "list", "--url", url, "--status", "done")
        assert code == 1 and "unknown status 'done'" in err
        code, _, err = await _in_thread("workflows", "show", "--url", url, "nope")
        assert code == 1 and "no workflow with id 'nope'" in err
    code, _, err = await _in_thread("workflows", "list", "--url", "memory://")
    assert code == 1 and "in-memory workflows live in their process" in err


async def _in_thread(*args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: run it off this one."""
    return await asyncio.to_thread(invoke, *args)
