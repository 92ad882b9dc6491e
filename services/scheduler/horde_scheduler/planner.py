"""Plan this validator's synthetic batch in every cycle, and hand out the batch due now
(`docs/scheduling.md §7`).

- `schedule_once(..., head=...)`: one planning pass at an explicit head block — flag missed
  batches, then for the current cycle (and the next one on its boundary block) insert the
  `cycles` row and the `synthetic_job_batches` row at this validator's slot, unless a batch
  already lies in the cycle. Tests drive it directly.
- `due_batches(..., head=...)`: the batch to start now, marked started atomically; the
  coordinator calls it and dispatches what it returns.
- `planner_loop(ctx)`: the `ServiceSpec.loops` entry; reads the head, plans, waits, backs off
  on errors and never dies of a chain or database outage.

The decisions themselves are pure (`planning`, `slots`, `cycles`); the SQL is in `planner_rows`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from horde_common.chain import Chain, make_chain
from horde_common.config import Settings
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service import ServiceContext
from horde_common.service.startup import Backoff, describe_error, url_secrets
from horde_common.telemetry import record_event_detached
from horde_scheduler.metagraph_sync import ChainUnavailable, SyncParams, call_with_retries
from horde_scheduler.planner_rows import (
    MissedBatch,
    batch_in_cycle,
    insert_batch,
    mark_missed,
    report_not_a_validator,
    start_unscheduled,
    take_due,
    take_plan_lock,
    validator_list,
)
from horde_scheduler.planning import (
    CyclePlan,
    DueBatch,
    PlannerParams,
    PlanStatus,
    cycles_to_plan,
    planner_params_from,
)
from horde_scheduler.slots import seed_block, when_to_run

log = structlog.get_logger(__name__)
Sleep = Callable[[float], Awaitable[Any]]
Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """One planning pass: what happened to each candidate cycle and which batches were flagged missed."""

    head: int
    cycles: tuple[CyclePlan, ...] = ()
    missed: tuple[MissedBatch, ...] = ()

    @property
    def failed(self) -> bool:
        return any(c.status is PlanStatus.CHAIN_ERROR for c in self.cycles)


def _sync_params(params: PlannerParams) -> SyncParams:
    """The chain-call settings `call_with_retries` reads, from the planner's own."""
    return SyncParams(call_timeout_s=params.call_timeout_s, retry_delays_s=params.retry_delays_s)


async def record_chain_error(
    sessions: Sessions, what: str, block: int | None, error: str, service: str
) -> None:
    """The metagraph sync's connectivity event (docs/scheduling.md §6.4), for the planner's calls."""
    await record_event_detached(
        sessions,
        SystemEventType.VALIDATOR_FAILURE,
        SystemEventSubtype.SUBTENSOR_CONNECTIVITY_ERROR,
        f"batch planner: chain unreachable ({what}): {error}",
        {"block": block, "error": error},
        service=service,
    )


async def schedule_once(
    sessions: Sessions,
    chain: Chain,
    *,
    head: int,
    own_hotkey: str,
    params: PlannerParams,
    sleep: Sleep = asyncio.sleep,
    secrets: tuple[str, ...] = (),
    service: str = "scheduler",
) -> PlanOutcome:
    """One planning pass at block `head` (docs/scheduling.md §7.1).

    Chain failures are recorded and reported as `CHAIN_ERROR` for the cycle; database failures
    raise (the loop logs them and backs off). Safe to run on several replicas at once.
    """
    async with sessions() as session, session.begin():
        await take_plan_lock(session)
        missed = await mark_missed(session, head, params.run, service)
    for m in missed:
        log.warning("synthetic batch missed", batch_id=m.batch_id, block=m.block, head=head)
    plans = []
    for cycle in cycles_to_plan(head, params.cycle):
        plans.append(
            await _plan_cycle(
                sessions, chain, cycle, own_hotkey, params, sleep=sleep, secrets=secrets, service=service
            )
        )
    return PlanOutcome(head=head, cycles=tuple(plans), missed=tuple(missed))


async def _plan_cycle(
    sessions: Sessions,
    chain: Chain,
    cycle: range,
    own_hotkey: str,
    params: PlannerParams,
    *,
    sleep: Sleep,
    secrets: tuple[str, ...],
    service: str,
) -> CyclePlan:
    async with sessions() as session, session.begin():
        await take_plan_lock(session)
        existing = await batch_in_cycle(session, cycle)
        if existing is not None:
            return CyclePlan(cycle, PlanStatus.ALREADY_SCHEDULED, existing.block, existing.id)
        hotkeys = await validator_list(session, cycle, params.slots)
        if hotkeys is None:
            return CyclePlan(cycle, PlanStatus.NO_SNAPSHOT)
        if own_hotkey not in hotkeys:
            if await report_not_a_validator(session, cycle, own_hotkey, len(hotkeys), service):
                log.warning(
                    "not on the validator list: no synthetic batch this cycle",
                    cycle_start=cycle.start,
                    validators=len(hotkeys),
                )
            return CyclePlan(cycle, PlanStatus.NOT_A_VALIDATOR, validator_count=len(hotkeys))

    block = seed_block(cycle, params.slots)
    try:
        seed = await call_with_retries(
            f"hash of block {block}",
            lambda: chain.block_hash(block),
            _sync_params(params),
            sleep=sleep,
            secrets=secrets,
        )
        if not isinstance(seed, str) or not seed.startswith("0x"):
            raise ChainUnavailable(f"hash of block {block}: not a 0x-hex string ({type(seed).__name__})")
    except ChainUnavailable as exc:
        await record_chain_error(sessions, "seed block hash", block, str(exc), service)
        return CyclePlan(cycle, PlanStatus.CHAIN_ERROR)
    slot = when_to_run(cycle, hotkeys, own_hotkey, seed, params.slots)

    async with sessions() as session, session.begin():
        await take_plan_lock(session)
        existing = await batch_in_cycle(session, cycle)
        if existing is not None:  # another replica planned it while we read the seed
            return CyclePlan(cycle, PlanStatus.ALREADY_SCHEDULED, existing.block, existing.id)
        batch_id = await insert_batch(session, slot, service)
    log.info(
        "synthetic batch scheduled",
        batch_id=batch_id,
        block=slot.block,
        index=slot.index,
        validators=slot.validator_count,
        cycle_start=cycle.start,
    )
    return CyclePlan(cycle, PlanStatus.SCHEDULED, slot.block, batch_id, slot.index, slot.validator_count)


async def due_batches(
    sessions: Sessions,
    *,
    head: int,
    params: PlannerParams,
    dont_stagger: bool = False,
    service: str = "scheduler",
) -> DueBatch | None:
    """The batch to act on at block `head`, or None (docs/scheduling.md §7.4).

    A returned batch whose `started` is true has `started_at` set in the same transaction that
    selected it, so exactly one caller among concurrent schedulers gets it; the caller must then
    dispatch it. `WAIT` marks nothing. `dont_stagger` is the debug switch: a new unscheduled
    batch, started now, on every call.
    """
    async with sessions() as session, session.begin():
        if dont_stagger:
            due = await start_unscheduled(session)
        else:
            due = await take_due(session, head, params.run, service)
    if due is not None and due.others_due:
        log.warning("more than one synthetic batch due", batch_id=due.batch_id, others=due.others_due)
    return due


async def read_head(chain: Chain, params: PlannerParams, *, sleep: Sleep, secrets: tuple[str, ...]) -> int:
    """The chain head, with the planner's timeout and retries; `ChainUnavailable` when it fails."""
    head = await call_with_retries(
        "current block", chain.current_block, _sync_params(params), sleep=sleep, secrets=secrets
    )
    if isinstance(head, bool) or not isinstance(head, int) or head < 0:
        raise ChainUnavailable(f"current block: not a block number ({type(head).__name__})")
    return head


async def run_planner_loop(
    ctx: ServiceContext, params: PlannerParams, *, chain: Chain | None = None, own_hotkey: str | None = None
) -> None:
    """Plan every `params.plan_interval_s` until the service stops, backing off after failures.

    `chain` and `own_hotkey` (tests) default to the settings' chain and `ctx.hotkey`.
    """
    if own_hotkey is None:
        if ctx.hotkey is None:
            raise RuntimeError("the batch planner needs the validator hotkey (ServiceSpec.needs_hotkey)")
        own_hotkey = str(ctx.hotkey.ss58_address)
    owned = chain is None
    if chain is None:
        chain = make_chain(ctx.settings, timeout=params.call_timeout_s)
    target = ctx.settings.LOCALNET_CHAIN_URL or ctx.settings.BITTENSOR_NETWORK
    secrets = url_secrets(target) + url_secrets(ctx.settings.DATABASE_URL.get_secret_value())
    backoff = Backoff(first_s=params.backoff_first_s, max_s=params.backoff_max_s)
    delays = backoff.delays()

    async def pause(seconds: float) -> None:
        await ctx.wait_stop(seconds)

    try:
        while True:
            failed = await _iteration(ctx, chain, own_hotkey, params, pause, secrets)
            if failed:
                delay = next(delays)
            else:
                delays = backoff.delays()
                delay = params.plan_interval_s
            if await ctx.wait_stop(delay):
                return
    finally:
        if owned:
            close = getattr(chain, "aclose", None)
            if close is not None:
                await close()


async def _iteration(
    ctx: ServiceContext,
    chain: Chain,
    own_hotkey: str,
    params: PlannerParams,
    pause: Sleep,
    secrets: tuple[str, ...],
) -> bool:
    """One loop pass; True when it failed (the loop then backs off)."""
    try:
        head = await read_head(chain, params, sleep=pause, secrets=secrets)
    except ChainUnavailable as exc:
        try:
            await record_chain_error(ctx.sessions, "current block", None, str(exc), ctx.name)
        except Exception as db_exc:
            log.warning(
                "batch planner: chain and database both failing", error=describe_error(db_exc, secrets)
            )
        return True
    try:
        outcome = await schedule_once(
            ctx.sessions, chain, head=head, own_hotkey=own_hotkey, params=params,
            sleep=pause, secrets=secrets, service=ctx.name,
        )  # fmt: skip
    except Exception as exc:  # the database is down or the lock timed out: the next pass retries
        log.warning("batch planning failed", head=head, error=describe_error(exc, secrets))
        return True
    return outcome.failed


def planner_params_for(settings: Settings) -> PlannerParams:
    """Production timing, localnet's when `LOCALNET_CHAIN_URL` is set, then each setting that is set
    (docs/operations.md §2); `ValueError` on a combination that cannot give distinct slots."""
    return planner_params_from(
        netuid=settings.BITTENSOR_NETUID,
        localnet=bool(settings.LOCALNET_CHAIN_URL),
        cycle_length=settings.SCHEDULER_CYCLE_LENGTH,
        run_offset=settings.SYNTHETIC_JOBS_RUN_OFFSET,
        block_time_s=settings.BITTENSOR_APPROXIMATE_BLOCK_DURATION_S,
        plan_interval_s=settings.SCHEDULER_PLAN_INTERVAL_S,
        max_oversleep_blocks=settings.SYNTHETIC_JOBS_PLANNER_MAX_OVERSLEEP_BLOCKS,
        wait_in_advance_blocks=settings.SYNTHETIC_JOBS_PLANNER_WAIT_IN_ADVANCE_BLOCKS,
    )


async def planner_loop(ctx: ServiceContext) -> None:
    """The `ServiceSpec.loops` entry, with the settings' timing (`planner_params_for`)."""
    await run_planner_loop(ctx, planner_params_for(ctx.settings))
