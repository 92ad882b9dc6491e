"""One weights run: the last finished batch → weights on chain (`docs/scoring.md` §2).

A run reads the head, takes the advisory lock (a concurrent run is a no-op), selects the batch
(`batch_selection`), and then, unless that batch is already written or its earlier write is still
being resolved, scores it, maps it through the newest metagraph snapshot, applies the chain's weight
rules and writes it (`Chain.set_weights` in mode `auto`, a salted `commit_weights` in mode
`commit-reveal-v2`). The `weights` row is committed as `pending` before the chain is called and
flipped, together with marking the batch (and any older eligible one) scored, only once the chain
took the write. A failed run leaves the batch unscored, so the next run retries it until a newer
batch supersedes it or it is too old. Retries inside a run: `chain_retry`.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import structlog

from horde_common.chain import Chain
from horde_common.db.models.enums import WeightsMode as RowMode
from horde_common.db.models.enums import WeightsStatus
from horde_common.dynamic_config import DynamicConfig
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service.startup import describe_error
from horde_common.telemetry import record_event_detached
from horde_weights import weights_rows as rows
from horde_weights.batch_selection import select_batch
from horde_weights.chain_retry import OPERATION_WRITE, RetryPolicy, retry_chain_write
from horde_weights.service_settings import WeightsMode
from horde_weights.weights_plan import (
    VERSION_KEY,
    ChainRules,
    WritePayload,
    build_payload,
    draw_salt,
    plan_weights,
)
from horde_weights.weights_write import ChainTarget, landed_check, rate_limit_wait, write_attempt
from horde_weights.windows import CommitRevealWindows

log = structlog.get_logger(__name__)

SERVICE: Final = "weights"


@dataclass(frozen=True, slots=True)
class RunParams:
    """Retry, timeout and pacing numbers of a run; the defaults are production's.

    100 attempts of at most 60 s each, 5 s apart after a failed write, are the reference
    validator's (`docs/scoring.md` §2.3). A chain read other than the write gets 20 s (a slow
    public node answers a metagraph in a few seconds). A block is 12 s. A `pending` row whose set
    is not on chain 10 blocks after it was written is taken as failed: an extrinsic not included
    by then has outlived its mortality period (the reference's library signed with a 5-block era).
    """

    attempts: int = 100
    ttl_s: float = 60.0
    backoff_s: float = 5.0
    call_timeout_s: float = 20.0
    block_time_s: float = 12.0
    pending_grace_blocks: int = 10


class RunStatus(StrEnum):
    NO_CHAIN = "no_chain"  # the head could not be read (event recorded)
    NOT_IN_WINDOW = "not_in_window"  # commit-reveal-v2 outside the commit window
    LOCKED = "locked"  # another run holds the lock
    NOTHING_TO_SCORE = "nothing_to_score"
    NO_SNAPSHOT = "no_snapshot"  # no metagraph stored yet: the batch waits for the first sync
    NO_REGISTERED_HOTKEY = "no_registered_hotkey"  # batch consumed, nothing to write
    ALREADY_WRITTEN = "already_written"  # the batch's weights are on chain; batch marked scored
    PENDING_UNRESOLVED = "pending_unresolved"  # an earlier write may still land: wait
    WRITTEN = "written"
    GAVE_UP = "gave_up"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    status: RunStatus
    batch_id: int | None = None
    weights_id: int | None = None
    detail: str = ""


@dataclass
class WeightsRun:
    """Everything a run needs; tests build one with a fast `params` and their own chain wrapper."""

    sessions: rows.Sessions
    chain: Chain
    keypair: Any
    netuid: int
    mode: WeightsMode = WeightsMode.AUTO
    params: RunParams = field(default_factory=RunParams)
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    salt: Callable[[], list[int]] = draw_salt
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    service: str = SERVICE

    @property
    def target(self) -> ChainTarget:
        return ChainTarget(self.chain, self.netuid, self.keypair)

    async def record(
        self,
        type: SystemEventType,
        subtype: SystemEventSubtype,
        description: str,
        data: Mapping[str, Any],
    ) -> None:
        """A system event in its own transaction: it survives whatever the run rolls back."""
        await record_event_detached(
            self.sessions, type, subtype, description, dict(data), service=self.service
        )

    async def read(self, call: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(call, self.params.call_timeout_s)


async def run_weights_once(run: WeightsRun) -> RunOutcome:
    """One run; chain failures become events and an outcome, a bug becomes `GENERIC_ERROR` and raises."""
    try:
        head = int(await run.read(run.chain.current_block()))
    except Exception as exc:
        await run.record(
            SystemEventType.WEIGHT_SETTING_FAILURE,
            SystemEventSubtype.SUBTENSOR_CONNECTIVITY_ERROR,
            f"cannot read the current block: {describe_error(exc)}",
            {},
        )
        return RunOutcome(RunStatus.NO_CHAIN, detail=describe_error(exc))
    async with run.sessions() as session:
        config = await DynamicConfig.load(session)
    if run.mode is WeightsMode.COMMIT_REVEAL_V2:
        if not CommitRevealWindows.from_dynamic(config.settings).in_commit_window(head):
            return RunOutcome(RunStatus.NOT_IN_WINDOW)
    async with rows.try_lock(run.sessions, rows.WEIGHT_SETTING_LOCK_KEY) as got:
        if not got:
            return RunOutcome(RunStatus.LOCKED)
        try:
            return await _locked_run(run, head, config)
        except Exception:
            await run.record(
                SystemEventType.WEIGHT_SETTING_FAILURE,
                SystemEventSubtype.GENERIC_ERROR,
                traceback.format_exc(),
                {},
            )
            raise


async def _locked_run(run: WeightsRun, head: int, config: DynamicConfig) -> RunOutcome:
    async with run.sessions() as session:
        selection = select_batch(await rows.unscored_batches(session), current_block=head, now=run.now())
        if selection.to_score is None:
            return RunOutcome(RunStatus.NOTHING_TO_SCORE)
        batch_id = selection.to_score
        existing = await rows.batch_weights(session, batch_id)
    consumed = [batch_id, *selection.to_mark_scored]
    if selection.to_mark_scored:
        log.error("older unscored batches are dropped", batch_id=batch_id, dropped=selection.to_mark_scored)

    if any(r.status in rows.WRITTEN_STATUSES for r in existing):
        await rows.mark_batches_scored(run.sessions, consumed)
        return RunOutcome(RunStatus.ALREADY_WRITTEN, batch_id=batch_id)
    for pending in (r for r in existing if r.status == WeightsStatus.PENDING):
        outcome = await _resolve_pending(run, pending, head, consumed)
        if outcome is not None:
            return outcome

    async with run.sessions() as session:
        jobs = await rows.batch_jobs(session, batch_id)
        neurons = await rows.newest_snapshot(session)
    if not neurons:
        # Without a metagraph every hotkey would look deregistered and the batch be dropped.
        return RunOutcome(RunStatus.NO_SNAPSHOT, batch_id=batch_id)
    rules = await _chain_rules(run)
    if rules is None:
        return RunOutcome(RunStatus.NO_CHAIN, batch_id=batch_id, detail="cannot read the weight rules")
    processed = plan_weights(jobs, config.settings.executor_class_weights, neurons, rules)
    if processed is None:
        # Nobody scored is registered any more: the batch is consumed without a write or an event.
        await rows.mark_batches_scored(run.sessions, consumed)
        return RunOutcome(RunStatus.NO_REGISTERED_HOTKEY, batch_id=batch_id)
    payload = build_payload(
        run.mode,
        processed,
        max_weight=config.settings.max_weight,
        salt=run.salt(),
        public_key=bytes(run.keypair.public_key),
        netuid=run.netuid,
    )
    weights_id = await rows.insert_pending(
        run.sessions,
        batch_id=batch_id,
        block=head,
        mode=_row_mode(run.mode),
        uids=payload.uids,
        weights=payload.weights,
        version_key=VERSION_KEY,
        salt=payload.salt,
        commit_hash=payload.commit_hash,
    )
    return await _write(run, weights_id, payload, head, consumed, resumed=False)


async def _write(
    run: WeightsRun,
    weights_id: int,
    payload: WritePayload,
    since_block: int,
    consumed: list[int],
    *,
    resumed: bool,
) -> RunOutcome:
    """Retry the write; on success flip the row and consume the batches in one transaction."""
    commit = run.mode is WeightsMode.COMMIT_REVEAL_V2
    error = SystemEventSubtype.COMMIT_WEIGHTS_ERROR if commit else SystemEventSubtype.SET_WEIGHTS_ERROR
    policy = RetryPolicy(run.params.attempts, run.params.ttl_s, run.params.backoff_s, OPERATION_WRITE)
    outcome = await retry_chain_write(
        write_attempt(run.target, payload, resumed=resumed),
        policy,
        record=run.record,
        error_subtype=error,
        error_data={"weights_id": weights_id, "current_block": since_block},
        landed=landed_check(run.target, run.mode, since_block),
        refusal_wait=rate_limit_wait(
            run.target,
            block_time_s=run.params.block_time_s,
            call_timeout_s=run.params.call_timeout_s,
            sleep=run.sleep,
        ),
        sleep=run.sleep,
    )
    batch_id = consumed[0]
    if not outcome.success:
        message = outcome.answer.message if outcome.answer else "no answer"
        if not outcome.uncertain:
            await rows.mark_weights(run.sessions, weights_id, WeightsStatus.FAILED, message)
        # Uncertain: the row stays pending and the next run finds out whether it landed.
        return RunOutcome(RunStatus.GAVE_UP, batch_id=batch_id, weights_id=weights_id, detail=message)
    answer = outcome.answer
    assert answer is not None
    await _finish(run, weights_id, answer.block, answer.message, consumed)
    return RunOutcome(RunStatus.WRITTEN, batch_id=batch_id, weights_id=weights_id, detail=answer.message)


async def _finish(
    run: WeightsRun, weights_id: int, block: int | None, message: str, consumed: list[int]
) -> None:
    commit = run.mode is WeightsMode.COMMIT_REVEAL_V2
    status = WeightsStatus.COMMITTED if commit else WeightsStatus.SET
    await rows.finish_written(
        run.sessions, weights_id, status=status, block=block, message=message, batch_ids=consumed
    )
    success = SystemEventSubtype.COMMIT_WEIGHTS_SUCCESS if commit else SystemEventSubtype.SET_WEIGHTS_SUCCESS
    await run.record(SystemEventType.WEIGHT_SETTING_SUCCESS, success, message, {"weights_id": weights_id})
    log.info("weights written", weights_id=weights_id, batch_id=consumed[0], mode=run.mode, message=message)


async def _resolve_pending(
    run: WeightsRun, pending: rows.WeightsRecord, head: int, consumed: list[int]
) -> RunOutcome | None:
    """`docs/scoring.md` §2.4. A `pending` row means a run died (or gave up unsure) between writing it and hearing the chain.

    Set path: the hotkey's `last_update` at or after the row's block means the set landed: flip
    the row. Not moved and the row younger than the grace period: it may still land, wait. Older:
    it never will, the row fails and a new write is made (None). Commit path: resend the same commit
    (the chain refuses a second commit per interval, which `write_attempt` takes as "it landed").
    """
    batch_id = consumed[0]
    if pending.mode == RowMode.COMMIT:
        if run.mode is not WeightsMode.COMMIT_REVEAL_V2:
            await rows.mark_weights(run.sessions, pending.id, WeightsStatus.FAILED, "abandoned: mode changed")
            return None
        payload = _payload_of(pending)
        return await _write(run, pending.id, payload, pending.block, consumed, resumed=True)
    check = landed_check(ChainTarget(run.chain, run.netuid, run.keypair), WeightsMode.AUTO, pending.block)
    assert check is not None
    try:
        landed = await run.read(check())
    except Exception as exc:
        return RunOutcome(
            RunStatus.NO_CHAIN, batch_id=batch_id, weights_id=pending.id, detail=describe_error(exc)
        )
    if landed:
        # Written under the mode the row was made in, whatever the mode is now.
        await rows.finish_written(
            run.sessions,
            pending.id,
            status=WeightsStatus.SET,
            block=None,
            message="found on chain after an interrupted run",
            batch_ids=consumed,
        )
        await run.record(
            SystemEventType.WEIGHT_SETTING_SUCCESS,
            SystemEventSubtype.SET_WEIGHTS_SUCCESS,
            "found on chain after an interrupted run",
            {"weights_id": pending.id},
        )
        return RunOutcome(RunStatus.WRITTEN, batch_id=batch_id, weights_id=pending.id, detail="recovered")
    if head - pending.block <= run.params.pending_grace_blocks:
        return RunOutcome(RunStatus.PENDING_UNRESOLVED, batch_id=batch_id, weights_id=pending.id)
    await rows.mark_weights(
        run.sessions, pending.id, WeightsStatus.FAILED, f"not on chain {head - pending.block} blocks later"
    )
    return None


def _payload_of(row: rows.WeightsRecord) -> WritePayload:
    return WritePayload(
        mode=WeightsMode.COMMIT_REVEAL_V2,
        uids=list(row.uids),
        weights=[int(v) for v in row.weights],
        chain_uids=list(row.uids),
        chain_values=[int(v) for v in row.weights],
        salt=list(row.salt or []),
        commit_hash=row.commit_hash,
    )


def _row_mode(mode: WeightsMode) -> RowMode:
    return RowMode.COMMIT if mode is WeightsMode.COMMIT_REVEAL_V2 else RowMode.SET


async def _chain_rules(run: WeightsRun) -> ChainRules | None:
    """MinAllowedWeights and MaxWeightsLimit from the chain (one read); None if it cannot answer."""
    try:
        hp = await run.read(run.chain.hyperparameters(run.netuid))
    except Exception as exc:
        await run.record(
            SystemEventType.WEIGHT_SETTING_FAILURE,
            SystemEventSubtype.SUBTENSOR_CONNECTIVITY_ERROR,
            f"cannot read the subnet's weight rules: {describe_error(exc)}",
            {},
        )
        return None
    return ChainRules(min_allowed_weights=hp.min_allowed_weights, max_weight_limit_u16=hp.max_weight_limit)
