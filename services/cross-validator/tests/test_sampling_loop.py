"""Sampling series into workloads against moto (docs/crossval.md §7.3, §9.4): the worked example's
counts, workload files uploaded before anything is saved, and S3 failures as events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from horde_common import s3
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload
from horde_cross_validator.planning import PromptParams
from horde_cross_validator.workloads import run_sampling

pytestmark = pytest.mark.timeout(90)


def params(target: int, k: int, per_workload: int, max_series: int) -> PromptParams:
    return PromptParams(max_series, target, 1, 240, per_workload, k)


async def add_series(sessions: Any, settings: Any, count: int, *, missing: int = 0) -> None:
    """`count` series files of 240 lines in the prompts bucket, and `missing` rows whose file is not there."""
    bucket = settings.S3_BUCKET_NAME_PROMPTS
    rows = []
    for i in range(count + missing):
        key = str(uuid.uuid4())
        if i < count:
            text = "\n".join(f"series {i} prompt {j}" for j in range(240))
            await s3.put_object_async(settings, bucket, key, text.encode())
        rows.append({"series_uuid": uuid.UUID(key), "s3_url": s3.public_url(settings, bucket, key)})
    async with sessions.begin() as session:
        await session.execute(insert(PromptSeries), rows)


async def counts(sessions: Any) -> tuple[int, int, int]:
    async with sessions() as session:
        return tuple(  # type: ignore[return-value]
            [
                await session.scalar(select(func.count()).select_from(m))
                for m in (SolveWorkload, PromptSample, Prompt)
            ]
        )


async def test_worked_example_and_uploaded_files(make_runtime, sessions, settings, events) -> None:
    await add_series(sessions, settings, 10)
    made = await run_sampling(make_runtime(params=params(5, 10, 20, 10)))
    assert made == 3
    assert await counts(sessions) == (3, 6, 60)
    async with sessions() as session:
        workloads = (await session.scalars(select(SolveWorkload).order_by(SolveWorkload.id))).all()
        for workload in workloads:
            prompts = (
                await session.scalars(
                    select(Prompt.content)
                    .join(PromptSample, PromptSample.id == Prompt.sample_id)
                    .where(PromptSample.workload_id == workload.id)
                    .order_by(Prompt.id)
                )
            ).all()
            body = (await s3.download_bytes(workload.s3_url)).decode()
            assert body == "\n".join(prompts)  # uploaded exactly what was saved, no trailing newline
            assert workload.s3_url.endswith(f"/{settings.S3_BUCKET_NAME_ANSWERS}/{workload.workload_uuid}")
    assert len({w.seed for w in workloads}) == 1  # one seed per run
    [created] = [(s, d) for _, s, d, _ in await events("LLM_PROMPT_SAMPLING")]
    assert created == (
        "NEW_WORKLOADS_CREATED",
        {"new_workloads_count": 3, "prompt_series_count": 10, "unused_prompt_samples_count": 0},
    )


async def test_thresholds_skip_with_events(make_runtime, sessions, settings, events) -> None:
    await add_series(sessions, settings, 4)
    assert await run_sampling(make_runtime(params=params(5, 10, 20, 10))) == 0  # needs 10 series
    assert await run_sampling(make_runtime(params=params(1, 1, 5, 4))) == 0  # only 4 prompts: partial dropped
    assert await counts(sessions) == (0, 0, 0)
    rows = [(s, d) for _, s, d, _ in await events("LLM_PROMPT_SAMPLING")]
    assert rows[0] == (
        "PROMPT_SAMPLING_SKIPPED",
        {"prompt_series_count": 4, "required_prompt_series_count_to_start_sampling": 10},
    )
    assert rows[1][0] == "NEW_WORKLOADS_CREATED" and rows[1][1]["new_workloads_count"] == 0


async def test_series_download_failure_is_an_event_and_skipped(
    make_runtime, sessions, settings, events
) -> None:
    await add_series(sessions, settings, 4, missing=1)
    made = await run_sampling(make_runtime(params=params(5, 10, 20, 5)))
    assert made == 2  # the four readable series fill two workloads; the fifth is skipped
    assert await counts(sessions) == (2, 4, 40)
    [error] = [e for e in await events("LLM_PROMPT_SAMPLING") if e[1] == "ERROR_DOWNLOADING_FROM_S3"]
    assert error[2] == {}
    assert error[3].startswith("Failed to download prompt series: S3DownloadError") and "HTTP 404" in error[3]


async def test_workload_upload_failure_is_an_event_and_saves_nothing(
    make_runtime, sessions, settings, events
) -> None:
    await add_series(sessions, settings, 10)
    gone = settings.model_copy(update={"S3_BUCKET_NAME_ANSWERS": f"horde-cv-missing-{uuid.uuid4().hex[:8]}"})
    made = await run_sampling(make_runtime(settings=gone, params=params(5, 10, 20, 10)))
    assert made == 0
    assert await counts(sessions) == (0, 0, 0)
    errors = [e for e in await events("LLM_PROMPT_SAMPLING") if e[1] == "ERROR_UPLOADING_TO_S3"]
    assert len(errors) == 5  # ten series fill five workloads, none uploaded
    assert all(e[2] == {} and "NoSuchBucket" in e[3] for e in errors)
    assert all("X-Amz-Signature=**********" in e[3] for e in errors)  # the URL is shown masked


async def test_oversized_series_is_refused(make_runtime, sessions, settings, events) -> None:
    bucket = settings.S3_BUCKET_NAME_PROMPTS
    key = str(uuid.uuid4())
    await s3.put_object_async(settings, bucket, key, b"x" * (1024 * 1024 + 1))
    async with sessions.begin() as session:
        await session.execute(
            insert(PromptSeries),
            [{"series_uuid": uuid.UUID(key), "s3_url": s3.public_url(settings, bucket, key)}],
        )
    assert await run_sampling(make_runtime(params=params(1, 1, 2, 1))) == 0
    [error] = [e for e in await events("LLM_PROMPT_SAMPLING") if e[1] == "ERROR_DOWNLOADING_FROM_S3"]
    assert "S3ObjectTooLarge" in error[3]
