"""A nats-server that goes away under a subscription: one log line per consumer and outage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from catga.messages import Metadata
from catga.nats.transport import NatsTransport
from catga.testing.contracts._util import WAIT, eventually
from catga.testing.contracts.messages import ContractOrderPlaced, contract_registry
from catga.testing.servers import NatsServer, free_port

pytestmark = pytest.mark.nats


async def test_pull_failures_during_an_outage_are_logged_once_then_the_recovery(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = NatsServer(port=free_port(), monitor_port=free_port(), store_dir=tmp_path)
    with server:
        transport = await NatsTransport.connect(
            server.url, registry=contract_registry(), prefix=unique_name, pull_expires=0.5
        )
        try:

            async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
                pass

            sub = await transport.subscribe(ContractOrderPlaced, handle, group="g")
            pulls = sub._pulls
            assert len(pulls) == 2  # events and commands
            with caplog.at_level(logging.INFO, logger="catga.nats"):
                server.stop()

                async def several_pulls_failed() -> bool:
                    return all(p._outage.failures >= 4 for p in pulls)

                await eventually(
                    several_pulls_failed, timeout=4 * WAIT, what="each consumer failing to pull 4 times"
                )
                lines = [r for r in caplog.records if "pull requests of JetStream consumer" in r.getMessage()]
                assert len(lines) == 2, [r.getMessage() for r in lines]  # one per consumer
                assert all(r.exc_info is None and "failed" in r.getMessage() for r in lines)

                server.start()

                async def recovered() -> bool:
                    return not any(p._outage.failing for p in pulls)

                await eventually(recovered, timeout=4 * WAIT, what="pulling again after the server came back")
            back = [r.getMessage() for r in caplog.records if "recovered after" in r.getMessage()]
            assert len([m for m in back if "pull requests" in m]) == 2, back
            # nats-py's reconnect attempts: at most one line (with no traceback) before the recovery
            attempts = [r for r in caplog.records if r.getMessage().startswith("NATS connection to")]
            assert len(attempts) <= 2 and all(r.exc_info is None for r in attempts), attempts
            assert not [r for r in caplog.records if "nats-py reported" in r.getMessage()]
        finally:
            await transport.aclose()
