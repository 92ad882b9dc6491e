"""Mode `commit-reveal-v2` end to end against real Postgres and the localnet chain simulator:
a salted commit in the commit window, its reveal in the next interval (`docs/scoring.md` §2.5)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from horde_common.chain import ChainError, LocalChainClient
from horde_common.chain.models import CommitResult, RevealResult
from horde_common.db.models.enums import WeightsMode, WeightsStatus
from horde_localnet import keys
from horde_localnet.chain import running_chain
from horde_weights.reveal import RevealRun, RevealStatus, reveal_once
from horde_weights.service_settings import WeightsMode as Mode
from horde_weights.weights_run import RunStatus, run_weights_once

NETUID = 12
Kit = Any  # the `kit` fixture of conftest.py
# A short interval on fast blocks: commit and reveal windows of 98 blocks (~2 s each, room for a
# slow shared machine), the reveal window opening ~2 s after the chain starts.
INTERVAL = 200
OFFSET = 100
WINDOWS = {
    "DYNAMIC_COMMIT_REVEAL_WEIGHTS_INTERVAL": INTERVAL,
    "DYNAMIC_COMMIT_REVEAL_COMMIT_START_OFFSET": OFFSET,
    "DYNAMIC_COMMIT_REVEAL_COMMIT_END_BUFFER": 2,
    "DYNAMIC_COMMIT_REVEAL_REVEAL_END_BUFFER": 2,
    "DYNAMIC_WEIGHT_REVEALING_FAILURE_BACKOFF": 0,
}


def spec(kit: Kit) -> Any:
    """Commit-reveal on, and the chain starting just inside a commit window."""
    return kit.chain_spec(
        commit_reveal_interval=INTERVAL, start_block=INTERVAL * 12 + OFFSET + 1, commit_reveal_enabled=True
    )


def reveal_run(kit: Kit, chain: Any) -> RevealRun:
    return RevealRun(sessions=kit.sessions, chain=chain, keypair=keys.validator_keypair(0), netuid=NETUID)


def next_interval(block: int) -> int:
    return (block // INTERVAL + 1) * INTERVAL


class FlakyCommitChain(LocalChainClient):
    """The real client; once, the process dies right after a commit landed; reveals first fail
    `reveal_failures` times with an unreachable chain."""

    def __init__(self, url: str, *, kill_after_commit: bool, reveal_failures: int) -> None:
        super().__init__(url)
        self.kill_after_commit = kill_after_commit
        self.reveal_failures = reveal_failures

    async def commit_weights(self, netuid: int, commit_hash: bytes | str, keypair: Any) -> CommitResult:
        result = await super().commit_weights(netuid, commit_hash, keypair)
        if self.kill_after_commit:
            self.kill_after_commit = False
            raise asyncio.CancelledError
        return result

    async def reveal_weights(
        self,
        netuid: int,
        uids: Sequence[int],
        values: Sequence[int],
        salt: Sequence[int],
        version_key: int,
        keypair: Any,
    ) -> RevealResult:
        if self.reveal_failures:
            self.reveal_failures -= 1
            raise ChainError("local chain unreachable (scripted)")
        return await super().reveal_weights(netuid, uids, values, salt, version_key, keypair)


async def test_commit_reveal_v2_commits_then_reveals(kit: Kit) -> None:
    await kit.set_dynamic(**WINDOWS)
    async with running_chain(spec(kit)) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        outcome = await run_weights_once(kit.run(chain, mode=Mode.COMMIT_REVEAL_V2))
        assert outcome.status is RunStatus.WRITTEN
        [row] = await kit.weights_rows()
        assert (row.status, row.mode, len(row.salt or [])) == (WeightsStatus.COMMITTED, WeightsMode.COMMIT, 8)
        pending = (await chain.pending_commits(NETUID, hotkey=keys.validator_hotkey(0))).commits
        assert [c.commit_hash for c in pending] == [row.commit_hash]
        assert await kit.batch_scored(batch_id)
        early = await reveal_once(reveal_run(kit, chain))
        assert early.status in (RevealStatus.TOO_EARLY, RevealStatus.NOT_IN_WINDOW)
        await chain.wait_for_block(next_interval(row.block))
        revealed = await reveal_once(reveal_run(kit, chain))
        again = await reveal_once(reveal_run(kit, chain))
        [record] = await kit.on_chain(chain)
    assert revealed.status is RevealStatus.REVEALED, revealed.detail
    assert again.status is RevealStatus.NOTHING_TO_REVEAL
    assert (record.uids, record.weights, record.reveal_block is not None) == (row.uids, row.weights, True)
    assert [r.status for r in await kit.weights_rows()] == [WeightsStatus.REVEALED]
    assert await kit.event_subtypes() == ["COMMIT_WEIGHTS_SUCCESS", "REVEAL_WEIGHTS_SUCCESS"]


async def test_outside_the_commit_window_nothing_is_committed(kit: Kit) -> None:
    await kit.set_dynamic(**WINDOWS)
    early = kit.chain_spec(
        commit_reveal_interval=INTERVAL, start_block=INTERVAL * 12 + 5, commit_reveal_enabled=True
    )
    async with running_chain(early) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        outcome = await run_weights_once(kit.run(chain, mode=Mode.COMMIT_REVEAL_V2))
        assert (await chain.pending_commits(NETUID)).commits == []
    assert outcome.status is RunStatus.NOT_IN_WINDOW
    assert not await kit.batch_scored(batch_id) and await kit.weights_rows() == []


async def test_a_crash_after_the_commit_and_a_failing_reveal_still_reveal_once(kit: Kit) -> None:
    await kit.set_dynamic(**WINDOWS)
    async with running_chain(spec(kit)) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        flaky = FlakyCommitChain(rc.url, kill_after_commit=True, reveal_failures=2)
        with pytest.raises(asyncio.CancelledError):
            await run_weights_once(kit.run(flaky, mode=Mode.COMMIT_REVEAL_V2))
        [pending] = await kit.weights_rows()
        assert pending.status == WeightsStatus.PENDING
        # Restarted: the stored commit is resent; the chain already has it, so nothing new is committed.
        after = await run_weights_once(kit.run(chain, mode=Mode.COMMIT_REVEAL_V2))
        assert (after.status, after.weights_id) == (RunStatus.WRITTEN, pending.id)
        commits = (await chain.pending_commits(NETUID, hotkey=keys.validator_hotkey(0))).commits
        assert [c.commit_hash for c in commits] == [pending.commit_hash]
        await chain.wait_for_block(next_interval(pending.block))
        revealed = await reveal_once(reveal_run(kit, flaky))
        await flaky.aclose()
        [record] = await kit.on_chain(chain)
    assert revealed.status is RevealStatus.REVEALED, revealed.detail
    assert record.uids == pending.uids
    assert await kit.batch_scored(batch_id)
    assert await kit.event_subtypes() == [
        "COMMIT_WEIGHTS_SUCCESS",
        "REVEAL_WEIGHTS_ERROR",
        "REVEAL_WEIGHTS_ERROR",
        "REVEAL_WEIGHTS_SUCCESS",
    ]
    assert (await kit.event("REVEAL_WEIGHTS_ERROR")).data["operation"] == "revealing"
