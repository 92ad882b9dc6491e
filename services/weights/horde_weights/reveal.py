"""Reveal loop of the salted commit path (`WEIGHTS_MODE=commit-reveal-v2`), `docs/scoring.md` §2.5.

Once a minute: take the newest salted commit; if it is committed but not revealed and the head is
in the reveal window of the interval after the commit's, re-check its hash and reveal it, retrying
with the `DYNAMIC_WEIGHT_REVEALING_*` attempts, time limit and backoff. Only the newest commit is
ever revealed: an older one was superseded by a newer commit. A commit whose reveal interval has
passed can never be revealed: it is marked failed with one event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import structlog

from horde_common.chain import Chain
from horde_common.db.models.enums import WeightsStatus
from horde_common.dynamic_config import DynamicConfig
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.service.startup import describe_error
from horde_common.telemetry import record_event_detached
from horde_weights import weights_rows as rows
from horde_weights.chain_retry import OPERATION_REVEAL, RetryPolicy, WriteAnswer, retry_chain_write
from horde_weights.weight_commit import commit_hash
from horde_weights.windows import CommitRevealWindows

log = structlog.get_logger(__name__)

# The chain's answer to a reveal of a commit that is no longer pending: after an attempt whose
# answer was lost, it means that attempt revealed it.
NO_COMMIT: Final = "no_commit"


class RevealStatus(StrEnum):
    NO_CHAIN = "no_chain"
    NOTHING_TO_REVEAL = "nothing_to_reveal"
    NOT_IN_WINDOW = "not_in_window"
    TOO_EARLY = "too_early"
    EXPIRED = "expired"  # the reveal interval passed: marked failed
    HASH_MISMATCH = "hash_mismatch"  # the stored row no longer matches its hash: marked failed
    LOCKED = "locked"
    REVEALED = "revealed"
    GAVE_UP = "gave_up"


@dataclass(frozen=True, slots=True)
class RevealOutcome:
    status: RevealStatus
    weights_id: int | None = None
    detail: str = ""


@dataclass
class RevealRun:
    sessions: rows.Sessions
    chain: Chain
    keypair: Any
    netuid: int
    call_timeout_s: float = 20.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    service: str = "weights"

    async def record(
        self, type: SystemEventType, subtype: SystemEventSubtype, description: str, data: Mapping[str, Any]
    ) -> None:
        await record_event_detached(
            self.sessions, type, subtype, description, dict(data), service=self.service
        )


async def reveal_once(run: RevealRun) -> RevealOutcome:
    """One pass of the reveal loop; chain failures are events and outcomes, never raised."""
    async with run.sessions() as session:
        config = await DynamicConfig.load(session)
        row = await rows.newest_commit(session)
    if row is None or row.status != WeightsStatus.COMMITTED:
        return RevealOutcome(RevealStatus.NOTHING_TO_REVEAL)
    try:
        head = int(await asyncio.wait_for(run.chain.current_block(), run.call_timeout_s))
    except Exception as exc:
        log.warning("cannot read the current block to reveal", error=describe_error(exc))
        return RevealOutcome(RevealStatus.NO_CHAIN, row.id, describe_error(exc))
    windows = CommitRevealWindows.from_dynamic(config.settings)
    start, end = windows.reveal_range(row.block)
    failure = SystemEventType.WEIGHT_SETTING_FAILURE
    if head > end:
        message = f"commit of block {row.block} was not revealed by block {end}"
        await rows.mark_weights(run.sessions, row.id, WeightsStatus.FAILED, message)
        await run.record(
            failure, SystemEventSubtype.COMMIT_WEIGHTS_UNREVEALED_ERROR, message, {"weights_id": row.id}
        )
        return RevealOutcome(RevealStatus.EXPIRED, row.id, message)
    if not windows.in_reveal_window(head):
        return RevealOutcome(RevealStatus.NOT_IN_WINDOW, row.id)
    if head < start:
        return RevealOutcome(RevealStatus.TOO_EARLY, row.id)
    expected = commit_hash(
        bytes(run.keypair.public_key),
        run.netuid,
        row.uids,
        [int(v) for v in row.weights],
        row.salt or [],
        row.version_key,
    )
    if expected != row.commit_hash:
        message = f"stored weights do not match the committed hash {row.commit_hash}"
        await rows.mark_weights(run.sessions, row.id, WeightsStatus.FAILED, message)
        await run.record(
            failure,
            SystemEventSubtype.REVEAL_WEIGHTS_ERROR,
            message,
            {"weights_id": row.id, "current_block": head},
        )
        return RevealOutcome(RevealStatus.HASH_MISMATCH, row.id, message)

    async with rows.try_lock(run.sessions, rows.REVEAL_LOCK_KEY) as got:
        if not got:
            return RevealOutcome(RevealStatus.LOCKED, row.id)
        async with run.sessions() as session:
            again = await rows.newest_commit(session)
        if again is None or again.id != row.id or again.status != WeightsStatus.COMMITTED:
            return RevealOutcome(RevealStatus.NOTHING_TO_REVEAL)
        return await _reveal(run, row, head, config)


async def _reveal(run: RevealRun, row: rows.WeightsRecord, head: int, config: DynamicConfig) -> RevealOutcome:
    s = config.settings
    # An attempt is bounded by the TTL; the hard TTL (the reference's kill after a grace period)
    # has no separate role here, a cancelled coroutine stops at once.
    policy = RetryPolicy(
        attempts=s.weight_revealing_attempts,
        ttl_s=float(s.weight_revealing_ttl_s),
        backoff_s=float(s.weight_revealing_failure_backoff_s),
        operation=OPERATION_REVEAL,
    )
    sent = False

    async def attempt() -> WriteAnswer:
        nonlocal sent
        earlier, sent = sent, True
        result = await run.chain.reveal_weights(
            run.netuid, row.uids, [int(v) for v in row.weights], row.salt or [], row.version_key, run.keypair
        )
        if not result.success and earlier and result.code == NO_COMMIT:
            return WriteAnswer(
                True, f"an earlier send of this reveal landed: {result.message}", None, result.code
            )
        return WriteAnswer(result.success, result.message, result.block, result.code)

    outcome = await retry_chain_write(
        attempt,
        policy,
        record=run.record,
        error_subtype=SystemEventSubtype.REVEAL_WEIGHTS_ERROR,
        error_data={"weights_id": row.id, "current_block": head},
        sleep=run.sleep,
    )
    if not outcome.success:
        # The row stays committed: the next pass retries while the reveal window lasts.
        return RevealOutcome(RevealStatus.GAVE_UP, row.id, outcome.answer.message if outcome.answer else "")
    message = outcome.answer.message if outcome.answer else ""
    await rows.mark_weights(run.sessions, row.id, WeightsStatus.REVEALED, message)
    await run.record(
        SystemEventType.WEIGHT_SETTING_SUCCESS,
        SystemEventSubtype.REVEAL_WEIGHTS_SUCCESS,
        message,
        {"weights_id": row.id},
    )
    log.info("weights revealed", weights_id=row.id, message=message)
    return RevealOutcome(RevealStatus.REVEALED, row.id, message)
