"""Talking to the chain for one weights write: the attempt, the "did it land?" check and the
rate-limit wait (`docs/scoring.md` §2.3). The retry loop itself is `chain_retry`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from horde_common.chain import Chain
from horde_common.service.startup import describe_error
from horde_weights.chain_retry import WriteAnswer
from horde_weights.service_settings import WeightsMode
from horde_weights.weights_plan import VERSION_KEY, WritePayload

log = structlog.get_logger(__name__)

# The chain's refusal codes the write reacts to (the `bittensor.ErrorCode` values the port uses).
RATE_LIMITED: Final = "rate_limited"
# One commit per hotkey per interval: a repeated commit is refused with this code.
COMMIT_NOT_ALLOWED: Final = "commit_not_allowed"


@dataclass(frozen=True, slots=True)
class ChainTarget:
    """Where and as whom weights are written."""

    chain: Chain
    netuid: int
    keypair: Any  # an sr25519 keypair: `.ss58_address`, `.public_key`, signs

    @property
    def hotkey(self) -> str:
        return str(self.keypair.ss58_address)


def write_attempt(
    target: ChainTarget, payload: WritePayload, *, resumed: bool
) -> Callable[[], Awaitable[WriteAnswer]]:
    """One write of `payload` per call.

    Commit path: the same hash is sent every time. If an earlier send of it (this run's, or a
    crashed run's when `resumed`) may have landed, the chain's "already committed this interval"
    refusal means it did: that counts as success, so a commit is never made twice.
    """
    sent = resumed

    async def attempt() -> WriteAnswer:
        nonlocal sent
        if payload.mode is WeightsMode.AUTO:
            result = await target.chain.set_weights(
                target.netuid,
                payload.chain_uids,
                [float(v) for v in payload.chain_values],
                VERSION_KEY,
                target.keypair,
            )
            return WriteAnswer(result.success, result.message, result.block, result.code)
        assert payload.commit_hash is not None
        earlier, sent = sent, True
        commit = await target.chain.commit_weights(target.netuid, payload.commit_hash, target.keypair)
        if not commit.success and earlier and commit.code == COMMIT_NOT_ALLOWED:
            return WriteAnswer(
                True, f"an earlier send of this commit landed: {commit.message}", None, commit.code
            )
        return WriteAnswer(commit.success, commit.message, commit.block, commit.code)

    return attempt


def landed_check(
    target: ChainTarget, mode: WeightsMode, since_block: int
) -> Callable[[], Awaitable[bool]] | None:
    """Whether a set made at or after `since_block` is on chain: the hotkey's `last_update` moved.

    The commit path has no such read on the port; it relies on the chain refusing a second commit
    in the same interval instead (`write_attempt`), so it returns None.
    """
    if mode is not WeightsMode.AUTO:
        return None

    async def landed() -> bool:
        neuron = (await target.chain.metagraph(target.netuid)).by_hotkey(target.hotkey)
        return neuron is not None and neuron.last_update >= since_block

    return landed


def rate_limit_wait(
    target: ChainTarget,
    *,
    block_time_s: float,
    call_timeout_s: float,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Callable[[WriteAnswer], Awaitable[bool]]:
    """After a rate-limit refusal, wait until the hotkey may write again; other refusals: no wait.

    The first allowed block is `last_update + WeightsRateLimit + 1` (one past the chain's own bound,
    which the reference's library checked as "strictly more than the limit"). The head is polled
    once a block. The wait is bounded by twice the limit, so a chain that stalls cannot hold the
    run forever; the next attempt then simply gets refused again.
    """

    async def wait(answer: WriteAnswer) -> bool:
        if answer.code != RATE_LIMITED:
            return False
        chain = target.chain
        try:
            limit = await asyncio.wait_for(chain.weights_rate_limit(target.netuid), call_timeout_s)
            metagraph = await asyncio.wait_for(chain.metagraph(target.netuid), call_timeout_s)
            neuron = metagraph.by_hotkey(target.hotkey)
            if neuron is None:
                return False
            allowed = neuron.last_update + limit + 1
            for _ in range(2 * (limit + 1)):
                if await asyncio.wait_for(chain.current_block(), call_timeout_s) >= allowed:
                    break
                await sleep(block_time_s)
        except Exception as exc:
            # The chain went away while waiting: fall back to the plain backoff.
            log.warning("cannot wait out the rate limit", error=describe_error(exc))
            return False
        return True

    return wait
