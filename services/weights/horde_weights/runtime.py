"""The weights service's per-instance objects and its two loops (`docs/scoring.md` §2.6).

`WeightsRuntime` holds the chain client, the mode and the wake-up event the `batch.completed`
handler sets; `weights_loop` runs a weights run once a minute or when woken, `reveal_loop` runs the
reveal pass once a minute in mode `commit-reveal-v2`. Both survive any failure of one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from horde_common.chain import Chain, make_chain
from horde_common.service import ServiceContext
from horde_common.service.startup import describe_error
from horde_weights.reveal import RevealRun, reveal_once
from horde_weights.service_settings import WeightsMode, weights_mode
from horde_weights.weights_run import RunOutcome, RunParams, WeightsRun, run_weights_once

log = structlog.get_logger(__name__)

# The reference checked for a batch to score, and for a commit to reveal, every minute.
RUN_PERIOD_S: Final = 60.0
REVEAL_PERIOD_S: Final = 60.0
# The chain client's own per-request limit: a weights write may take up to the run's 60 s TTL.
CHAIN_TIMEOUT_S: Final = 60.0


@dataclass
class WeightsRuntime:
    """One service instance's chain client, mode and wake-up event (never a module global)."""

    chain: Chain
    mode: WeightsMode
    params: RunParams = field(default_factory=RunParams)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # What the loop did last (for `/debug/weights` and tests): runs so far and the last outcome.
    runs: int = 0
    last: RunOutcome | None = None


@contextlib.asynccontextmanager
async def weights_runtime(ctx: ServiceContext) -> AsyncIterator[WeightsRuntime]:
    """`Dependency` opener: build the chain client from the settings, close it at stop."""
    chain = make_chain(ctx.settings, timeout=CHAIN_TIMEOUT_S)
    mode = weights_mode(ctx.settings)
    try:
        yield WeightsRuntime(chain=chain, mode=mode)
    finally:
        close = getattr(chain, "aclose", None)
        if close is not None:
            await close()


def weights_run_for(ctx: ServiceContext, runtime: WeightsRuntime) -> WeightsRun:
    return WeightsRun(
        sessions=ctx.sessions,
        chain=runtime.chain,
        keypair=ctx.hotkey,
        netuid=ctx.settings.BITTENSOR_NETUID,
        mode=runtime.mode,
        params=runtime.params,
        service=ctx.name,
    )


async def _wait_for_wake(ctx: ServiceContext, wake: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds` or until woken; True when the service is stopping."""
    stop = asyncio.create_task(ctx.stop_event.wait())
    woken = asyncio.create_task(wake.wait())
    try:
        await asyncio.wait({stop, woken}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        woken.cancel()
    wake.clear()
    return ctx.stop_event.is_set()


async def weights_loop(ctx: ServiceContext) -> None:
    """A weights run every minute, or at once when `batch.completed` wakes it."""
    runtime = ctx.dependency(WeightsRuntime)
    while True:
        try:
            outcome = await run_weights_once(weights_run_for(ctx, runtime))
            runtime.last = outcome
            log.debug("weights run", status=outcome.status, batch_id=outcome.batch_id, detail=outcome.detail)
        except Exception as exc:  # recorded as GENERIC_ERROR by the run; the loop goes on
            log.error("weights run failed", error=describe_error(exc))
        runtime.runs += 1
        if await _wait_for_wake(ctx, runtime.wake, RUN_PERIOD_S):
            return


async def reveal_loop(ctx: ServiceContext) -> None:
    """The reveal pass every minute; idle unless the mode is `commit-reveal-v2`."""
    runtime = ctx.dependency(WeightsRuntime)
    while not await ctx.wait_stop(REVEAL_PERIOD_S):
        if runtime.mode is not WeightsMode.COMMIT_REVEAL_V2:
            continue
        try:
            run = RevealRun(
                sessions=ctx.sessions,
                chain=runtime.chain,
                keypair=ctx.hotkey,
                netuid=ctx.settings.BITTENSOR_NETUID,
                service=ctx.name,
            )
            outcome = await reveal_once(run)
            log.debug("reveal pass", status=outcome.status, weights_id=outcome.weights_id)
        except Exception as exc:
            log.error("reveal pass failed", error=describe_error(exc))


async def weights_view(ctx: ServiceContext) -> dict[str, Any]:
    """`/debug/weights`: the mode and what the loop did last."""
    runtime = ctx.dependencies.find(WeightsRuntime)
    if runtime is None:
        return {"started": False}
    last = runtime.last
    return {
        "started": True,
        "mode": str(runtime.mode),
        "runs": runtime.runs,
        "last": None
        if last is None
        else {
            "status": str(last.status),
            "batch_id": last.batch_id,
            "weights_id": last.weights_id,
            "detail": last.detail,
        },
    }
