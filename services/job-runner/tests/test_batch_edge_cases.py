"""Edge cases and validator-side failures: reconnects, garbage frames, late answers, executor
failures, our own bugs, stalls and database outages.

Synthetic batch shards end to end: real sockets against the miner simulator, real Postgres (the
behaviours of docs/synthetic-batch.md and docs/miner-protocol.md §3). Every test uses its own
dev-miner indices, so the "previous batch" of the manifest multiplier (docs/miner-protocol.md §3.3) is
always the test's own. Timeouts are shrunk through `BatchTimeouts`; nothing sleeps to synchronise.
"""

from __future__ import annotations

import time
from functools import partial

import pytest

from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    MinerManifest,
    SyntheticJob,
)
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore, ShardRows
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.batch_checks import AO, FAST, by_miner, events, free_port, kinds, rows
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
run_batch = partial(run_shard_over, timeouts=FAST)


async def test_reconnect_reauthenticates_and_collects_the_redelivered_result(store: BatchStore) -> None:
    """§6 #17 with quirk B.1 fixed: the miner drops the link on the job request; we reconnect,
    authenticate again, and the miner re-delivers the outcome: the job completes."""
    async with MinerFleet(1, executors={AO: 1}, behaviours={160: "disconnect"}, first_index=160) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        miner = fleet.miners[0]
        assert miner.connection_count >= 2
        auths = [t for v, t in miner.received if t == "V0AuthenticateRequest"]
        assert len(auths) == miner.connection_count
    (job,) = await rows(store, SyntheticJob, batch_id)
    assert (job.status, job.comment) == ("COMPLETED", "")


async def test_garbage_frames_change_nothing_and_get_generic_errors(store: BatchStore) -> None:
    """§6 #13–#15 / §7.13: invalid frames, unknown job ids and duplicates do not change results."""
    async with MinerFleet(1, executors={AO: 2}, behaviours={170: "garbage"}, first_index=170) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        received = [t for _, t in fleet.miners[0].received]
    jobs = await rows(store, SyntheticJob, batch_id)
    assert [(j.status, j.comment) for j in jobs] == [("COMPLETED", "")] * 2
    assert "GenericError" in received  # "Malformed message from miner ..." replies


async def test_late_answers_fail_on_time(store: BatchStore) -> None:
    """§6 #3: an answer after the job timeout is "took too long" (receipt still sent); an answer
    after timeout + extra wait is "timed out" (no receipt)."""
    behaviours = {180: "slow:2.4", 181: "slow:6"}
    async with MinerFleet(2, executors={AO: 1}, behaviours=behaviours, first_index=180) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        slow_receipts = fleet.miner(180).receipts_of_type("JobFinishedReceipt")
        assert fleet.miner(181).receipts_of_type("JobFinishedReceipt") == []
    jobs = {j.miner_hotkey: j for j in await rows(store, SyntheticJob, batch_id)}
    late, lost = jobs[fleet.miner(180).hotkey], jobs[fleet.miner(181).hotkey]
    assert late.status == "FAILED" and late.comment.startswith("took too long: time_took_sec=2.")
    assert lost.status == "FAILED" and lost.comment == "timed out"
    (receipt,) = slow_receipts
    assert receipt.payload.score_str == "0"  # type: ignore[union-attr]
    assert receipt.payload.time_took_us > 2_000_000  # type: ignore[union-attr]
    timeouts = [e for e in await events(store, batch_id) if e.subtype == "JOB_EXECUTION_TIMEOUT"]
    assert len(timeouts) == 2


async def test_executor_failure_and_no_accept_within_the_window(store: BatchStore) -> None:
    """§6 #19 and #5: executor failed → refused, no job request; no accept in time → timed out."""
    busy = [{"executor_class": AO, "count": 2}]  # advertises 2, has 1: the second never gets one
    async with MinerFleet(
        2,
        executors={AO: 1},
        behaviours={190: "executor_fail"},
        raw_manifests={191: busy},
        executor_wait=30,
        first_index=190,
    ) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet))
        assert all(j.job_request is None for j in fleet.miner(190).jobs_of(VALIDATOR.ss58_address))
    jobs = by_miner(await rows(store, SyntheticJob, batch_id))
    assert [(j.status, j.comment) for j in jobs[fleet.miner(190).hotkey]] == [("FAILED", "executor failed")]
    assert sorted((j.status, j.comment) for j in jobs[fleet.miner(191).hotkey]) == [
        ("COMPLETED", ""),
        ("FAILED", "timed out"),
    ]
    evs = await events(store, batch_id)
    timeouts = [e for e in evs if e.subtype == "JOB_EXECUTION_TIMEOUT"]
    assert [e.data["func"] for e in timeouts] == ["_send_initial_job_request"]
    assert [e.long_description for e in evs if e.subtype == "JOB_NOT_STARTED"] == ["refused"]


# ------------------------------------------------------------------------ validator-side failures


async def test_a_validator_bug_is_not_stored_as_miner_failures(store: BatchStore) -> None:
    """An exception of ours mid-batch: VALIDATOR_FAILURE, jobs stored but excluded from scoring."""

    def fault(stage: str) -> None:
        if stage == "_score_jobs":
            raise RuntimeError("injected bug")

    async with MinerFleet(2, executors={AO: 1}, behaviours={201: "wrong_answer"}, first_index=200) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), fault=fault)
    assert not result.ok and result.persisted and "injected bug" in (result.error or "")
    jobs = await rows(store, SyntheticJob, batch_id)
    assert len(jobs) == 2
    assert all(j.excluded_from_scoring and j.status == "FAILED" and j.score == 0 for j in jobs)
    assert all(
        j.comment.startswith("validator failure: shard failed: RuntimeError: injected bug") for j in jobs
    )
    evs = kinds(await events(store, batch_id))
    assert ("VALIDATOR_FAILURE", "GENERIC_ERROR") in evs
    assert not [k for k in evs if k[0].startswith("MINER_SYNTHETIC_JOB")]
    manifests = await rows(store, MinerManifest, batch_id)
    assert len(manifests) == 2  # the manifests themselves are facts, stored


async def test_our_event_loop_stall_is_excused(store: BatchStore) -> None:
    """docs/performance.md lesson 4: a stall of ours during the answer window must not turn into
    "took too long" / "timed out" for the miner: such jobs are excluded, with VALIDATOR_FAILURE."""

    def stall(stage: str) -> None:
        if stage == "_await_job_responses":
            time.sleep(1.0)  # the validator's loop is blocked: nothing is read meanwhile

    timeouts = BatchTimeouts(**{**FAST.__dict__, "job_timeout": 0.5, "job_wait_extra": 0.5})
    async with MinerFleet(2, executors={AO: 1}, behaviours={211: "timeout"}, first_index=210) as fleet:
        batch_id, _ = await run_batch(store, endpoints(fleet), timeouts=timeouts, fault=stall)
    jobs = await rows(store, SyntheticJob, batch_id)
    assert len(jobs) == 2
    for job in jobs:
        assert job.excluded_from_scoring, job.comment
        assert "the validator stalled" in job.comment
    evs = kinds(await events(store, batch_id))
    assert evs.count(("VALIDATOR_FAILURE", "GENERIC_ERROR")) == 2
    assert ("MINER_SYNTHETIC_JOB_FAILURE", "JOB_EXECUTION_TIMEOUT") not in evs


class FlakyStore(BatchStore):
    """The database is unreachable for the first `failures` persist attempts."""

    def __init__(self, real: BatchStore, failures: int) -> None:
        super().__init__(real.sessions)
        self.failures = failures
        dead = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")
        self.dead = BatchStore(session_factory(dead))

    async def persist(self, rows: ShardRows, *, fast: bool = True) -> None:
        if self.failures > 0:
            self.failures -= 1
            await self.dead.persist(rows, fast=fast)  # raises: connection refused
        await super().persist(rows, fast=fast)


async def test_database_outage_at_persist_time_is_a_validator_failure(store: BatchStore) -> None:
    async with MinerFleet(1, executors={AO: 2}, first_index=220) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), use_store=FlakyStore(store, failures=1))
    assert result.persisted and result.ok
    assert result.stats["persist_failures"] == 1
    jobs = await rows(store, SyntheticJob, batch_id)
    assert [(j.status, j.excluded_from_scoring) for j in jobs] == [("COMPLETED", False)] * 2
    failures = [e for e in await events(store, batch_id) if e.type == "VALIDATOR_FAILURE"]
    assert len(failures) == 1 and failures[0].data["stage"] == "_db_persist"
    assert "attempt 1/3" in failures[0].long_description


async def test_database_gone_for_good_reports_not_persisted(store: BatchStore) -> None:
    async with MinerFleet(1, executors={AO: 1}, first_index=225) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet), use_store=FlakyStore(store, failures=99))
    assert not result.persisted and not result.ok and (result.error or "").startswith("persist:")
    assert await rows(store, SyntheticJob, batch_id) == []
    assert [j.status for j in result.jobs] == ["COMPLETED"]  # the miner did its part; nothing blamed
