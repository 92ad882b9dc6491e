"""Weights runs in mode `auto` against real Postgres and the localnet chain simulator over real
sockets (`docs/scoring.md` §2.2–§2.4). Fixtures and the seeding kit: `conftest.py`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from horde_common.chain import ChainError, LocalChainClient, SetWeightsResult
from horde_common.db.models.enums import WeightsMode, WeightsStatus
from horde_localnet import keys
from horde_localnet.chain import running_chain
from horde_weights import weights_rows as rows
from horde_weights.weights_run import RunStatus, run_weights_once

NETUID = 12
Kit = Any  # the `kit` fixture of conftest.py


class FlakyChain(LocalChainClient):
    """The real client whose `set_weights` follows a script of misbehaviours, then works."""

    def __init__(self, url: str, script: Sequence[str]) -> None:
        super().__init__(url)
        self.script = list(script)
        self.calls = 0

    async def set_weights(
        self, netuid: int, uids: Sequence[int], weights: Sequence[float], version_key: int, keypair: Any
    ) -> SetWeightsResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if step == "hang":
            await asyncio.Event().wait()
        if step == "down":
            raise ChainError("local chain unreachable (scripted)")
        if step == "kill":
            raise asyncio.CancelledError  # the process dies between the pending row and the chain
        result = await super().set_weights(netuid, uids, weights, version_key, keypair)
        if step == "lost":  # the write landed but its answer never arrived
            raise ChainError("connection reset after sending (scripted)")
        return result


async def test_a_batch_becomes_weights_with_honest_miners_on_top(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        first, again = await asyncio.gather(
            run_weights_once(kit.run(chain)), run_weights_once(kit.run(chain))
        )
        later = await run_weights_once(kit.run(chain))
        [record] = await kit.on_chain(chain)
    statuses = {first.status, again.status}
    assert RunStatus.WRITTEN in statuses
    assert statuses <= {RunStatus.WRITTEN, RunStatus.LOCKED, RunStatus.NOTHING_TO_SCORE}
    assert later.status is RunStatus.NOTHING_TO_SCORE
    by_uid = dict(zip(record.uids, record.weights, strict=True))
    honest = [by_uid[2 + i] for i in range(4)]
    faulty = [by_uid[2 + i] for i in (4, 5)]
    assert min(honest) > max(faulty) > 0
    assert 8 not in by_uid and 9 not in by_uid  # miners that failed everything get nothing
    assert max(honest) == 65535 and record.version_key == 2
    [row] = await kit.weights_rows()
    assert (row.batch_id, row.status, row.mode) == (batch_id, WeightsStatus.SET, WeightsMode.SET)
    assert await kit.batch_scored(batch_id)
    assert await kit.event_subtypes() == ["SET_WEIGHTS_SUCCESS"]


async def test_a_failing_write_is_retried_and_lands_exactly_once(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        flaky = FlakyChain(rc.url, ["hang", "down", "down"])
        outcome = await run_weights_once(kit.run(flaky, params=replace(kit.params, ttl_s=1.0)))
        await flaky.aclose()
        assert len(await kit.on_chain(chain)) == 1
    assert outcome.status is RunStatus.WRITTEN and flaky.calls == 4
    assert await kit.event_subtypes() == [
        "WRITING_TO_CHAIN_TIMEOUT",
        "SET_WEIGHTS_ERROR",
        "SET_WEIGHTS_ERROR",
        "SET_WEIGHTS_SUCCESS",
    ]
    first_error = await kit.event("SET_WEIGHTS_ERROR")
    assert first_error.data["try_number"] == 1 and first_error.data["operation"] == "setting/committing"
    assert await kit.batch_scored(batch_id)


async def test_a_write_whose_answer_was_lost_is_not_sent_again(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        await kit.prepared(rc)
        flaky = FlakyChain(rc.url, ["lost"])
        outcome = await run_weights_once(kit.run(flaky))
        await flaky.aclose()
        assert len(await kit.on_chain(chain)) == 1
    assert outcome.status is RunStatus.WRITTEN and flaky.calls == 1
    assert await kit.event_subtypes() == ["SET_WEIGHTS_ERROR", "SET_WEIGHTS_SUCCESS"]


async def test_giving_up_keeps_the_batch_for_the_next_run(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        flaky = FlakyChain(rc.url, ["down"] * 3)
        gave_up = await run_weights_once(kit.run(flaky, params=replace(kit.params, attempts=3)))
        await flaky.aclose()
        assert not await kit.batch_scored(batch_id)
        # The failed attempts were uncertain: the row stays pending until it cannot land any more.
        await chain.wait_for_block(rc.sim.current_block() + kit.params.pending_grace_blocks + 1)
        retried = await run_weights_once(kit.run(chain))
        assert len(await kit.on_chain(chain)) == 1
    assert gave_up.status is RunStatus.GAVE_UP and retried.status is RunStatus.WRITTEN
    assert (await kit.event_subtypes())[-2:] == ["GIVING_UP", "SET_WEIGHTS_SUCCESS"]
    assert [r.status for r in await kit.weights_rows()] == [WeightsStatus.FAILED, WeightsStatus.SET]
    assert await kit.batch_scored(batch_id)


async def test_killed_between_scoring_and_writing_writes_once_after_restart(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        killer = FlakyChain(rc.url, ["kill"])
        with pytest.raises(asyncio.CancelledError):
            await run_weights_once(kit.run(killer))
        await killer.aclose()
        [pending] = await kit.weights_rows()
        assert pending.status == WeightsStatus.PENDING and not await kit.batch_scored(batch_id)
        # Restarted within the grace period: the write might still be in flight, so the run waits.
        patient = replace(kit.params, pending_grace_blocks=1_000_000)
        assert (await run_weights_once(kit.run(chain, params=patient))).status is RunStatus.PENDING_UNRESOLVED
        # Past it: the write never landed and cannot any more, so it is made now, once.
        await chain.wait_for_block(pending.block + kit.params.pending_grace_blocks + 1)
        after = await run_weights_once(kit.run(chain))
        assert len(await kit.on_chain(chain)) == 1
    assert after.status is RunStatus.WRITTEN
    assert [r.status for r in await kit.weights_rows()] == [WeightsStatus.FAILED, WeightsStatus.SET]
    assert await kit.batch_scored(batch_id)


async def test_killed_after_the_chain_took_the_write_is_recovered_without_a_second_write(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc)
        weights_id = await rows.insert_pending(
            kit.sessions,
            batch_id=batch_id,
            block=rc.sim.current_block(),
            mode=WeightsMode.SET,
            uids=[2, 3],
            weights=[0.5, 0.5],
            version_key=2,
        )
        assert (await chain.set_weights(NETUID, [2, 3], [1.0, 1.0], 2, keys.validator_keypair(0))).success
        outcome = await run_weights_once(kit.run(chain))
        assert len(await kit.on_chain(chain)) == 1
    assert (outcome.status, outcome.weights_id, outcome.detail) == (
        RunStatus.WRITTEN,
        weights_id,
        "recovered",
    )
    assert [r.status for r in await kit.weights_rows()] == [WeightsStatus.SET]
    assert await kit.batch_scored(batch_id)
    assert await kit.event_subtypes() == ["SET_WEIGHTS_SUCCESS"]


async def test_a_rate_limited_write_is_retried_after_the_limit(kit: Kit) -> None:
    limit = 15
    async with (
        running_chain(kit.chain_spec(weights_rate_limit=limit)) as rc,
        LocalChainClient(rc.url) as chain,
    ):
        await kit.prepared(rc)
        assert (await chain.set_weights(NETUID, [2], [1.0], 2, keys.validator_keypair(0))).success
        outcome = await run_weights_once(kit.run(chain))
        manual, ours = await kit.on_chain(chain)
    assert outcome.status is RunStatus.WRITTEN
    assert ours.block > manual.block + limit
    assert await kit.event_subtypes() == ["SET_WEIGHTS_ERROR", "SET_WEIGHTS_SUCCESS"]
    assert (await kit.event("SET_WEIGHTS_ERROR")).data["code"] == "rate_limited"


async def test_a_hotkey_that_left_the_metagraph_gets_no_weight(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        neurons = rc.sim.metagraph(NETUID).neurons
        # Miner 0 (uid 2) deregistered; a newcomer took its uid.
        newcomer = neurons[2].model_copy(update={"hotkey": keys.miner_hotkey(50)})
        await chain.replace_neurons(NETUID, [*neurons[:2], newcomer, *neurons[3:]])
        await kit.prepared(rc)
        outcome = await run_weights_once(kit.run(chain))
        [record] = await kit.on_chain(chain)
    assert outcome.status is RunStatus.WRITTEN
    assert 2 not in record.uids and {3, 4, 5, 6, 7} <= set(record.uids)


async def test_a_batch_whose_hotkeys_all_left_is_consumed_without_a_write(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.prepared(rc, jobs=[(keys.miner_hotkey(60), 1.0)])
        outcome = await run_weights_once(kit.run(chain))
        assert await kit.on_chain(chain) == []
    assert outcome.status is RunStatus.NO_REGISTERED_HOTKEY
    assert await kit.batch_scored(batch_id)
    assert await kit.event_subtypes() == [] and await kit.weights_rows() == []


async def test_a_chain_that_is_down_records_one_event_and_leaves_the_batch(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc:
        batch_id = await kit.prepared(rc)
        url = rc.url
    async with LocalChainClient(url) as gone:  # the port is closed now
        outcome = await run_weights_once(kit.run(gone))
    assert outcome.status is RunStatus.NO_CHAIN
    assert await kit.event_subtypes() == ["SUBTENSOR_CONNECTIVITY_ERROR"]
    assert not await kit.batch_scored(batch_id) and await kit.weights_rows() == []


async def test_without_a_stored_metagraph_the_batch_waits(kit: Kit) -> None:
    async with running_chain(kit.chain_spec()) as rc, LocalChainClient(rc.url) as chain:
        batch_id = await kit.seed_batch(rc.sim.current_block(), [(keys.miner_hotkey(0), 1.0)])
        outcome = await run_weights_once(kit.run(chain))
        assert await kit.on_chain(chain) == []
    assert (outcome.status, outcome.batch_id) == (RunStatus.NO_SNAPSHOT, batch_id)
    assert not await kit.batch_scored(batch_id)
