"""The engine's settings carried by the ``workflows=`` URL (``?lease=&poll_interval=...``)."""

from __future__ import annotations

import pytest

import catga
from catga.errors import ConfigurationError
from catga.workflows import COMPLETED, Workflow
from catga.workflows._app import engine_options


def test_the_url_sets_the_engine_and_the_store_keeps_its_own_options() -> None:
    app = catga.App(
        workflows="redis://127.0.0.1:6379/0?prefix=shop&lease=7.5&poll_interval=0.25&step_retries=3"
        "&retry_backoff=0"
    )
    engine = app.workflows
    settings = (engine.lease, engine.poll_interval, engine.step_retries, engine.retry_backoff)
    assert settings == (7.5, 0.25, 3, 0.0)
    assert engine.store._all == "shop:wf-all"  # type: ignore[attr-defined]  # prefix= reached the store


def test_without_settings_the_defaults_hold() -> None:
    engine = catga.App(workflows="memory://").workflows
    assert (engine.lease, engine.poll_interval, engine.step_retries) == (30.0, 1.0, 0)


def test_split_keeps_the_other_options_in_order() -> None:
    url, found = engine_options("nats://127.0.0.1:4222?prefix=p&lease=2&storage=memory")
    assert url == "nats://127.0.0.1:4222?prefix=p&storage=memory"
    assert found == {"lease": 2.0}
    assert engine_options("postgresql://u:pw@127.0.0.1/db") == ("postgresql://u:pw@127.0.0.1/db", {})


@pytest.mark.parametrize(
    "query",
    ["lease=0", "lease=-1", "lease=abc", "poll_interval=0", "poll_interval=inf", "step_retries=-1",
     "step_retries=1.5", "retry_backoff=-0.1", "retry_backoff=nan"],
)  # fmt: skip
def test_a_bad_setting_is_refused_naming_it_and_hiding_the_password(query: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        catga.App(workflows=f"redis://:secret@127.0.0.1:6379/0?{query}")
    key = query.split("=")[0]
    assert key in str(err.value)
    assert "secret" not in str(err.value)


async def test_step_retries_from_the_url_retry_a_failing_step() -> None:
    app = catga.App(workflows="memory://?step_retries=2&retry_backoff=0&poll_interval=0.05")
    tries = 0

    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise RuntimeError(f"try {tries} fails")
        return "done"

    @app.workflow
    async def retried(wf: Workflow, _: None) -> str:
        return str(await wf.step(flaky))

    async with app:
        state = await app.wait_workflow(await app.start_workflow("retried"))
    assert state.status == COMPLETED, state.error
    assert app.workflows.result(state) == "done"
    assert tries == 3
