"""Excused declines end to end (docs/synthetic-batch.md §9): a miner that declines our synthetic job
while its executor runs an organic job of ours is not penalised. Real Postgres, simulated miners over
real sockets; the organic rows are written by the organic runner's own store functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from horde_common.db.models import MinerManifest, SyntheticJob
from horde_common.db.models.organic import OrganicJob
from horde_job_runner.organic.outcomes import Outcome, OutcomeKind, report
from horde_job_runner.organic.store import assign_miner, stage_accepted, stage_report
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys
from horde_localnet.miners import MinerFleet
from testing.batch_checks import events as batch_events
from testing.batch_checks import rows as batch_rows
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
SPIN = "spin_up-4min.gpu-24gb"
EXCUSED_COMMENT = "excused: executor busy with an organic job of this validator"
FAST = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=1.0,
    spin_up={AO: 1.0, SPIN: 1.5},
    job_timeout=2.0,
    persist_backoff=0.01,
)


run_batch = partial(run_shard_over, timeouts=FAST)


async def organic_job(
    store: BatchStore, hotkey: str, executor_class: str, *, assigned: bool = True, accepted: bool = True
) -> uuid.UUID:
    """An organic job as the gateway stores it (naming the miner, as a V0/V1 request does), then
    assigned to `hotkey` and accepted by it as the runner records them."""
    job_uuid = uuid.uuid4()
    async with store.sessions.begin() as session:
        session.add(
            OrganicJob(
                job_uuid=job_uuid, miner_hotkey=hotkey, executor_class=executor_class, job_description="job"
            )
        )
    if assigned:
        async with store.sessions.begin() as session:
            assert await assign_miner(session, job_uuid, hotkey, None, 1)
    if assigned and accepted:
        async with store.sessions.begin() as session:
            await stage_accepted(session, job_uuid, publish=False)
    return job_uuid


async def finish_organic(store: BatchStore, job_uuid: uuid.UUID, hotkey: str) -> None:
    """The organic job's outcome, written as the runner writes it (row, event; no facilitator)."""
    outcome = Outcome(OutcomeKind.FINISHED, accepted=True, stdout="ok")
    result = report(outcome, name=hotkey, job_uuid=str(job_uuid), total_s=300.0, wait_s=30.0)
    async with store.sessions.begin() as session:
        await stage_report(session, job_uuid, hotkey, result, publish=False)


async def test_declines_of_executors_busy_with_our_organic_jobs_are_excused(store: BatchStore) -> None:
    async with MinerFleet(2, executors={AO: 3}, behaviours={401: "decline"}, first_index=400) as fleet:
        honest, decliner = fleet.miner(400).hotkey, fleet.miner(401).hotkey
        running = await organic_job(store, decliner, AO)  # busy through the whole batch
        ends_mid_batch = await organic_job(store, decliner, AO)  # busy at the declines, done later
        await organic_job(store, decliner, SPIN)  # another class: excuses nothing here
        await organic_job(store, decliner, AO, accepted=False)  # sent, never accepted: not busy
        await organic_job(store, decliner, AO, assigned=False)  # only stored by the gateway: not busy
        done_before = await organic_job(store, decliner, AO)
        await finish_organic(store, done_before, decliner)  # the executor was free again
        orphan = await organic_job(store, decliner, AO)  # a PENDING row from a runner killed long ago
        async with store.sessions.begin() as session:
            old = datetime.now(UTC) - timedelta(hours=2)
            await session.execute(
                update(OrganicJob).where(OrganicJob.job_uuid == orphan).values(created_at=old)
            )
        await organic_job(store, honest, AO)  # the honest miner declines nothing: nothing to excuse

        async def fault(stage: str) -> None:
            if stage == "_report_ready":  # after the spin-up: every decline is in
                await finish_organic(store, ends_mid_batch, decliner)

        batch_id, result = await run_batch(store, endpoints(fleet), fault=fault)
        assert result.ok and result.persisted
        assert result.stats["excused"] == 2

    jobs = await batch_rows(store, SyntheticJob, batch_id)
    mine = sorted(
        (
            (j.status, j.score, j.score_manifest_multiplier, j.comment)
            for j in jobs
            if j.miner_hotkey == decliner
        ),
        key=str,
    )
    assert mine == sorted(
        [("EXCUSED", 1.0, None, EXCUSED_COMMENT)] * 2 + [("FAILED", 0.0, None, "declined")], key=str
    )
    assert not any(j.excluded_from_scoring for j in jobs)
    theirs = [(j.status, j.score) for j in jobs if j.miner_hotkey == honest]
    assert theirs == [("COMPLETED", pytest.approx(1.3))] * 3  # honest jobs keep the multiplier

    # The excused executors were not tested: they are not online for the next batch's multiplier.
    manifests = {
        m.miner_hotkey: m.online_executor_count for m in await batch_rows(store, MinerManifest, batch_id)
    }
    assert manifests == {honest: 3, decliner: 0}

    events = await batch_events(store, batch_id)
    excused_uuids = {str(j.job_uuid) for j in jobs if j.status == "EXCUSED"}
    failed_uuid = next(str(j.job_uuid) for j in jobs if j.miner_hotkey == decliner and j.status == "FAILED")
    excused_events = [e for e in events if e.type == "MINER_SYNTHETIC_JOB_EXCUSED"]
    assert {e.data["job_uuid"] for e in excused_events} == excused_uuids
    for e in excused_events:
        assert e.subtype == "EXECUTOR_BUSY_WITH_ORGANIC_JOB"
        assert e.long_description == EXCUSED_COMMENT
        assert (e.data["miner_hotkey"], e.data["executor_class"], e.data["busy_executors"]) == (
            decliner,
            AO,
            2,
        )
        assert e.data["organic_job_uuids"] == sorted([str(running), str(ends_mid_batch)])
    refused = [e.data["job_uuid"] for e in events if e.subtype == "JOB_NOT_STARTED"]
    assert refused == [failed_uuid]  # an excused job is no longer a failure of the miner
    batch = next(e for e in events if e.subtype == "SYNTHETIC_BATCH")
    assert batch.data["counts"]["jobs"][AO] == {
        "total": 6,
        "successful": 3,
        "correct": 3,
        "failed": 1,
        "excused": 2,
    }


async def test_an_unreadable_organic_table_excludes_the_declines_instead_of_blaming_the_miner(
    store: BatchStore,
) -> None:
    """The lookup is ours: when it cannot finish in time (the table locked), the declines it could
    not check are excluded from scoring with a VALIDATOR_FAILURE, never scored 0."""
    lock: list[AsyncConnection] = []
    engine = store.sessions.kw["bind"]

    async def fault(stage: str) -> None:
        if stage == "_score_jobs":
            conn = await engine.connect()
            await conn.begin()
            await conn.execute(text("LOCK TABLE organic_jobs IN ACCESS EXCLUSIVE MODE"))
            lock.append(conn)
        elif stage == "_send_job_finished_receipts":
            await release()

    async def release() -> None:
        while lock:
            conn = lock.pop()
            await conn.rollback()
            await conn.close()

    async with MinerFleet(1, executors={AO: 2}, behaviours={410: "decline"}, first_index=410) as fleet:
        await organic_job(store, fleet.miner(410).hotkey, AO)
        try:
            batch_id, result = await run_batch(
                store, endpoints(fleet), fault=fault, timeouts=BatchTimeouts(**{**FAST.__dict__, "db": 1.0})
            )
        finally:
            await release()
    assert result.persisted and result.stats["excused"] == 0
    jobs = await batch_rows(store, SyntheticJob, batch_id)
    assert [(j.status, j.score, j.excluded_from_scoring) for j in jobs] == [("FAILED", 0.0, True)] * 2
    assert all(j.comment.startswith("validator failure: organic jobs could not be read") for j in jobs)
    failures = [e for e in await batch_events(store, batch_id) if e.type == "VALIDATOR_FAILURE"]
    assert len(failures) == 1 and failures[0].data["stage"] == "_score_jobs"
    assert "TimeoutError" in failures[0].long_description
