"""The models work through the async ORM: defaults, unique keys, foreign keys and cascades."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from horde_common.db import create_engine, session_factory
from horde_common.db.models import (
    DEFAULT_EXECUTOR_CLASS,
    Cycle,
    JobAcceptedReceipt,
    JobFinishedReceipt,
    JobStartedReceipt,
    JobStatus,
    MinerManifest,
    Neuron,
    OrganicJob,
    Prompt,
    PromptSample,
    PromptSeries,
    SolveWorkload,
    SyntheticJob,
    SyntheticJobBatch,
    SystemEvent,
    SystemEventSubtype,
    SystemEventType,
    Validator,
    Weights,
    WeightsStatus,
)

NOW = datetime(2024, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture()
async def session(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = create_engine(database_url)
    async with session_factory(engine)() as s:
        yield s
        await s.rollback()
    await engine.dispose()


async def test_batch_jobs_manifests_samples_and_cascade(session: AsyncSession) -> None:
    cycle = Cycle(start=4_299_496, stop=4_300_218)
    batch = SyntheticJobBatch(block=-(uuid.uuid4().int % 10**12) - 1, cycle=cycle)
    session.add(batch)
    await session.flush()
    assert batch.scored is False and batch.is_missed is False and batch.shard_count == 1
    assert batch.batch_uuid is not None and batch.created_at is not None

    job = SyntheticJob(job_uuid=uuid.uuid4(), batch_id=batch.id, miner_hotkey="5miner", score=1.3)
    manifest = MinerManifest(
        batch_id=batch.id, miner_hotkey="5miner", executor_count=3, online_executor_count=2
    )
    series = PromptSeries(series_uuid=uuid.uuid4(), s3_url="http://s3/prompts/x")
    workload = SolveWorkload(workload_uuid=uuid.uuid4(), seed=2**32 - 1, s3_url="http://s3/answers/w")
    session.add_all([job, manifest, series, workload])
    await session.flush()
    assert job.status == JobStatus.PENDING and job.executor_class == DEFAULT_EXECUTOR_CLASS
    assert job.excluded_from_scoring is False
    assert manifest.executor_class == DEFAULT_EXECUTOR_CLASS

    sample = PromptSample(series_id=series.id, workload_id=workload.id, synthetic_job_id=job.id)
    session.add(sample)
    await session.flush()
    session.add(Prompt(sample_id=sample.id, content="hello?", answer="hi"))
    await session.flush()

    ids = {SyntheticJob: job.id, MinerManifest: manifest.id, PromptSample: sample.id}
    prompt_ids = [
        p.id for p in (await session.execute(select(Prompt).where(Prompt.sample_id == sample.id))).scalars()
    ]
    series_id = series.id

    # deleting the batch cascades to jobs, manifests, and the consumed sample with its prompts
    await session.delete(batch)
    await session.flush()
    session.expunge_all()
    for model, row_id in ids.items():
        assert await session.get(model, row_id) is None, model
    assert (
        await session.scalar(select(func.count()).select_from(Prompt).where(Prompt.id.in_(prompt_ids))) == 0
    )
    assert await session.get(PromptSeries, series_id) is not None


async def test_unique_keys(session: AsyncSession) -> None:
    batch = SyntheticJobBatch()
    session.add(batch)
    await session.flush()
    session.add(MinerManifest(batch_id=batch.id, miner_hotkey="m", executor_class="c"))
    await session.flush()
    session.add(MinerManifest(batch_id=batch.id, miner_hotkey="m", executor_class="c"))
    with pytest.raises(IntegrityError):
        await session.flush()


async def test_other_tables_round_trip(session: AsyncSession) -> None:
    job_uuid = uuid.uuid4()
    weights_block = -(job_uuid.int % 10**12) - 1  # negative blocks: no clash with other tests' rows
    session.add_all(
        [
            Neuron(block=-1, uid=0, hotkey="5hk", coldkey="5ck", stake=1500.0, is_serving=True),
            Validator(block=-1, hotkey="5hk", stake=1500.0, position=0),
            OrganicJob(job_uuid=job_uuid, request={"uuid": str(job_uuid)}),
            JobStartedReceipt(
                job_uuid=job_uuid,
                validator_hotkey="5v",
                miner_hotkey="5m",
                validator_signature="0xab",
                timestamp=NOW,
                max_timeout=53,
                ttl=240,
            ),
            JobAcceptedReceipt(
                job_uuid=job_uuid,
                validator_hotkey="5v",
                miner_hotkey="5m",
                validator_signature="0xab",
                timestamp=NOW,
                time_accepted=NOW,
                ttl=360,
            ),
            JobFinishedReceipt(
                job_uuid=job_uuid,
                validator_hotkey="5v",
                miner_hotkey="5m",
                validator_signature="0xab",
                timestamp=NOW,
                time_started=NOW,
                time_took_us=1_500_000,
                score_str="1.3",
            ),
            Weights(
                block=weights_block,
                uids=[0, 1],
                weights=[65535, 0],
                salt=[1, 2, 3, 4, 5, 6, 7, 8],
                version_key=2,
            ),
            SystemEvent(
                type=SystemEventType.VALIDATOR_TELEMETRY,
                subtype=SystemEventSubtype.CHECKPOINT,
                data={"stage": "BATCH_BEGIN"},
                service=f"test-{job_uuid}",
            ),
        ]
    )
    await session.flush()
    organic = (await session.execute(select(OrganicJob).where(OrganicJob.job_uuid == job_uuid))).scalar_one()
    assert (
        organic.status == JobStatus.PENDING
        and organic.stdout == ""
        and organic.request == {"uuid": str(job_uuid)}
    )
    started = (
        await session.execute(select(JobStartedReceipt).where(JobStartedReceipt.job_uuid == job_uuid))
    ).scalar_one()
    assert started.is_organic is False and started.miner_signature is None
    weights = (await session.execute(select(Weights).where(Weights.block == weights_block))).scalar_one()
    assert weights.status == WeightsStatus.PENDING and weights.revealed_at is None
    event = (
        await session.execute(select(SystemEvent).where(SystemEvent.service == f"test-{job_uuid}"))
    ).scalar_one()
    assert event.sent is False and event.timestamp is not None and event.long_description == ""
    assert SystemEventSubtype.SPECS_SEND_ERROR == "SPECS_SENDING_ERROR"
