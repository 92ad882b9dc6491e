"""The service wiring: the `batch.completed` handler wakes the weights loop, which writes at once
instead of a minute later (`docs/scoring.md` §2.6)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import select

from horde_common.bus import HandlerContext
from horde_common.bus.messages import BatchCompleted
from horde_common.chain import LocalChainClient
from horde_common.config import load_settings
from horde_common.db.models import Weights
from horde_common.service import ServiceContext
from horde_localnet import keys
from horde_localnet.chain import running_chain
from horde_weights.app import SPEC, on_batch_completed
from horde_weights.runtime import WeightsRuntime, weights_loop, weights_view
from horde_weights.service_settings import WeightsMode

Kit = Any  # the `kit` fixture of conftest.py
WITHIN_S = 15.0  # generous on a shared machine; the loop's own period is 60 s


async def test_batch_completed_wakes_the_loop(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        ctx = ServiceContext(
            spec=SPEC, settings=load_settings(LOCALNET_CHAIN_URL=rc.url, BITTENSOR_NETUID=12)
        )
        ctx.session_factory = kit.sessions
        ctx.hotkey = keys.validator_keypair(0)
        runtime = WeightsRuntime(chain=chain, mode=WeightsMode.AUTO, params=kit.params)
        ctx.dependencies.add(WeightsRuntime, runtime)
        loop = asyncio.create_task(weights_loop(ctx))
        try:
            started = time.monotonic()
            while runtime.runs < 1:  # the loop's first run, with nothing to score yet
                assert time.monotonic() - started < WITHIN_S, "the loop did not start"
                await asyncio.sleep(0.02)
            batch_id = await kit.prepared(rc)
            delivery = HandlerContext(
                queue="weights.batch.completed",
                message_id=uuid.uuid4(),
                redelivered=False,
                delivery_count=1,
                dependencies=ctx.dependencies,
            )
            started = time.monotonic()
            await on_batch_completed(BatchCompleted(batch_id=batch_id, cycle_start=0, cycle_stop=1), delivery)
            while not await kit.batch_scored(batch_id):
                assert time.monotonic() - started < WITHIN_S, "the loop did not run when woken"
                await asyncio.sleep(0.02)
        finally:
            ctx.request_stop()
            await asyncio.wait_for(loop, 10)
        assert len(await kit.on_chain(chain)) == 1
        assert runtime.runs == 2 and (await weights_view(ctx))["last"]["status"] == "written"
    async with kit.sessions() as s:
        assert (await s.scalar(select(Weights.batch_id))) == batch_id
