"""LLM synthetic jobs in a whole shard (docs/synthetic-batch.md, "LLM jobs"): simulated miners with
`always_on.llm.a6000` executors download the series from the real moto S3 (127.0.0.1:9000), run the
localnet's deterministic solver and upload their answers through the presigned PUT; the shard reads
them back and checks them against the trusted answers seeded in real Postgres.

Honest miners pass, `wrong_llm_answers` miners fail, every taken sample is consumed; a shard short
of samples runs no LLM job, consumes nothing and reports INSUFFICIENT_PROMPTS once a day.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from functools import partial

import pytest
from sqlalchemy import delete, func, select

from horde_common import s3
from horde_common.config import Settings, get_settings
from horde_common.crossval import ANSWERS_MISMATCH
from horde_common.db.models import (
    Prompt,
    PromptSample,
    PromptSeries,
    SolveWorkload,
    SyntheticJob,
    SystemEvent,
)
from horde_job_runner.synthetic.model import BatchTimeouts
from horde_job_runner.synthetic.persistence import BatchStore
from horde_localnet import keys, llm
from horde_localnet.miners import MinerFleet
from testing.miner_fleet import endpoints, run_shard_over

pytestmark = pytest.mark.timeout(90)

VALIDATOR = keys.validator_keypair(0)
AO = "always_on.gpu-24gb"
LLM = "always_on.llm.a6000"
SEED = 2_024_112
# Short windows, but room for the simulated executor's real S3 round trips (download the series,
# upload the answers) within the job's limit.
TIMEOUTS = BatchTimeouts(
    manifest=3.0,
    receipt_send=2.0,
    close=1.0,
    job_wait_extra=2.0,
    spin_up={AO: 1.0, LLM: 1.0},
    job_timeout=8.0,
    persist_backoff=0.01,
)


@pytest.fixture()
def conf(s3_env: Settings) -> Settings:
    """Buckets of the test's own, in the settings the shard reads (`get_settings`)."""
    return s3_env


async def reset_prompts(store: BatchStore) -> None:
    async with store.sessions.begin() as session:
        await session.execute(delete(PromptSeries))
        await session.execute(delete(SolveWorkload))


async def seed_ready(store: BatchStore, conf: Settings, count: int) -> list[int]:
    """`count` answered samples, each of a series of 5 prompts uploaded to the prompts bucket; the
    trusted answers are the localnet solver's (what an honest executor computes)."""
    bucket = conf.S3_BUCKET_NAME_PROMPTS
    assert bucket is not None
    ids: list[int] = []
    async with store.sessions.begin() as session:
        workload = SolveWorkload(
            workload_uuid=uuid.uuid4(), seed=SEED, s3_url="http://unused", finished_at=datetime.now(UTC)
        )
        session.add(workload)
        await session.flush()
        for _ in range(count):
            series_uuid = uuid.uuid4()
            lines = llm.generated_prompts(series_uuid, 5)
            await asyncio.to_thread(
                s3.put_object, conf, bucket, str(series_uuid), llm.series_text(lines).encode()
            )
            series = PromptSeries(
                series_uuid=series_uuid, s3_url=s3.public_url(conf, bucket, str(series_uuid))
            )
            session.add(series)
            await session.flush()
            sample = PromptSample(series_id=series.id, workload_id=workload.id)
            session.add(sample)
            await session.flush()
            # The sampled prompt is one in the middle of the series the miner answers in full.
            session.add(Prompt(sample_id=sample.id, content=lines[2], answer=llm.answer(SEED, lines[2])))
            ids.append(sample.id)
    return ids


run_batch = partial(run_shard_over, timeouts=TIMEOUTS)


async def batch_events(store: BatchStore, batch_id: int, subtype: str) -> list[SystemEvent]:
    async with store.sessions() as session:
        found = await session.scalars(
            select(SystemEvent).where(
                SystemEvent.data["batch_id"].as_integer() == batch_id, SystemEvent.subtype == subtype
            )
        )
        return list(found.all())


async def sample_jobs(store: BatchStore) -> dict[int, uuid.UUID | None]:
    """Every sample -> the uuid of the job that consumed it (None: still unused)."""
    async with store.sessions() as session:
        rows = await session.execute(
            select(PromptSample.id, SyntheticJob.job_uuid).outerjoin(
                SyntheticJob, SyntheticJob.id == PromptSample.synthetic_job_id
            )
        )
        return dict(rows.tuples().all())


async def test_honest_llm_miners_pass_and_wrong_answers_fail(store: BatchStore, conf: Settings) -> None:
    await reset_prompts(store)
    ids = await seed_ready(store, conf, 5)
    async with MinerFleet(
        2, executors={LLM: 2, AO: 1}, behaviours={401: "wrong_llm_answers"}, first_index=400
    ) as fleet:
        honest, cheat = (m.hotkey for m in fleet.miners)
        batch_id, result = await run_batch(store, endpoints(fleet))
    assert result.ok and result.persisted, result.error
    llm_jobs = [j for j in result.jobs if j.executor_class == LLM]
    assert len(llm_jobs) == 4 and len(result.jobs) == 6
    for job in llm_jobs:
        assert not job.excluded_from_scoring
        if job.miner_hotkey == honest:
            assert (job.status, job.comment) == ("COMPLETED", "") and job.score > 0
        else:
            assert job.miner_hotkey == cheat
            assert (job.status, job.comment, job.score) == ("FAILED", ANSWERS_MISMATCH, 0.0)
    assert all(j.status == "COMPLETED" for j in result.jobs if j.executor_class == AO)
    assert result.stats["llm_answers_fetched"] == 4 and result.stats["llm_answers_miner_failures"] == 0

    # Each LLM job consumed one sample, pass or fail; the fifth is still ready.
    consumed = await sample_jobs(store)
    assert {u for u in consumed.values() if u is not None} == {uuid.UUID(j.job_uuid) for j in llm_jobs}
    assert [i for i, u in consumed.items() if u is None] == [ids[-1]]  # oldest samples go first
    assert await batch_events(store, batch_id, "INSUFFICIENT_PROMPTS") == []
    failures = await batch_events(store, batch_id, "FAILURE")
    assert (
        sorted(e.data["miner_hotkey"] for e in failures if e.type == "MINER_SYNTHETIC_JOB_FAILURE")
        == [cheat] * 2
    )
    # The answers really went through S3: one file per LLM job in the answers bucket.
    bucket = conf.S3_BUCKET_NAME_ANSWERS
    listed = await asyncio.to_thread(s3.client(conf).list_objects_v2, Bucket=bucket, Prefix="solved/")
    assert len(listed.get("Contents", [])) == 4


async def test_short_of_samples_no_llm_job_runs_and_the_event_comes_once_a_day(
    store: BatchStore, conf: Settings
) -> None:
    await reset_prompts(store)
    (only,) = await seed_ready(store, conf, 1)
    async with store.sessions() as session:
        before = await session.scalar(
            select(func.count()).select_from(SystemEvent).where(SystemEvent.subtype == "INSUFFICIENT_PROMPTS")
        )
    async with MinerFleet(1, executors={LLM: 2, AO: 1}, first_index=410) as fleet:
        first_id, first = await run_batch(store, endpoints(fleet))
        second_id, second = await run_batch(store, endpoints(fleet))
        only_llm = MinerFleet(1, executors={LLM: 2}, first_index=411)
        async with only_llm:
            third_id, third = await run_batch(store, endpoints(only_llm))
    assert [j.executor_class for j in first.jobs] == [AO] and [j.executor_class for j in second.jobs] == [AO]
    assert third.ok and third.jobs == []  # only LLM executors, no samples for them: nothing to run
    assert await sample_jobs(store) == {only: None}  # nothing taken, nothing consumed
    reported = [
        e
        for b in (first_id, second_id, third_id)
        for e in await batch_events(store, b, "INSUFFICIENT_PROMPTS")
    ]
    if before == 0:
        (event,) = reported  # the first batch reports; the others were within 24 h of it
        assert event.data["llm_executor_count"] == 2 and event.data["prompt_samples_available"] == 1
        assert event.data["prompt_sample_unused_answered_count"] == 1
    else:
        assert reported == []


async def test_without_an_answers_bucket_the_llm_jobs_are_skipped_as_our_failure(
    store: BatchStore, conf: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await reset_prompts(store)
    ids = await seed_ready(store, conf, 1)
    monkeypatch.delenv("S3_BUCKET_NAME_ANSWERS")
    get_settings.cache_clear()
    async with MinerFleet(1, executors={LLM: 1, AO: 1}, first_index=420) as fleet:
        batch_id, result = await run_batch(store, endpoints(fleet))
    assert result.persisted and [j.executor_class for j in result.jobs] == [AO]
    (failure,) = await batch_events(store, batch_id, "GENERIC_ERROR")
    assert failure.type == "VALIDATOR_FAILURE" and failure.data["stage"] == "_generate_jobs"
    assert "S3ConfigError" in failure.long_description
    assert await sample_jobs(store) == {ids[0]: None}  # no job made, nothing consumed
    assert await batch_events(store, batch_id, "INSUFFICIENT_PROMPTS") == []
