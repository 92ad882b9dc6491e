"""Prompt generation through the bus and S3 (docs/crossval.md §9.3): series rows only after the
trusted job succeeded, with public URLs; failures and timeouts store nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from horde_common import s3
from horde_common.db.models import PromptSeries
from horde_cross_validator.generation import GenerationResult, run_generation

pytestmark = pytest.mark.timeout(90)


async def series_rows(sessions: Any) -> list[PromptSeries]:
    async with sessions() as session:
        return list((await session.scalars(select(PromptSeries).order_by(PromptSeries.id))).all())


async def test_generation_stores_series_after_the_job(
    make_runtime, job_runner, miner, sessions, events, settings
) -> None:
    job_runner.behaviour = miner.generate
    result = await run_generation(make_runtime())
    assert result is GenerationResult.STORED
    [request] = job_runner.requests
    job = request.request["job"]
    assert request.request["kind"] == "prompt_generation"
    assert request.request["timeout_s"] == 300 and request.request["wait_timeout_s"] == 300
    assert job["executor_class"] == "always_on.llm.a6000" and job["use_gpu"] is True
    assert job["docker_image"] == "backenddevelopersltd/compute-horde-prompt-gen-phi3:v0-latest"
    rows = await series_rows(sessions)
    uuids = [str(r.series_uuid) for r in rows]
    assert len(rows) == 2
    uploads = job["output_upload"]["uploads"]
    assert {u["relative_path"] for u in uploads} == {f"prompts_{u}.txt" for u in uuids}
    assert all("X-Amz-Signature=" in u["url"] for u in uploads)
    args = job["args"]
    assert args[args.index("--number_of_prompts_per_batch") + 1] == "5"
    assert set(args[args.index("--uuids") + 1].split(",")) == set(uuids)
    for row in rows:
        assert row.s3_url == s3.public_url(settings, settings.S3_BUCKET_NAME_PROMPTS, str(row.series_uuid))
        assert "Signature" not in row.s3_url and row.generator_version == 0
        body = await s3.download_bytes(row.s3_url)
        assert len(body.decode().split("\n")) == 5
    subtypes = [(t, s) for t, s, _, _ in await events()]
    assert subtypes == [
        ("LLM_PROMPT_GENERATION", "PROMPT_GENERATION_STARTED"),
        ("LLM_PROMPT_GENERATION", "SUCCESS"),
    ]
    started, success = await events()
    assert started[2] == {"prompt_series_count": 0, "expected_prompt_series_count": 2}
    assert success[2]["count"] == 2


async def test_generation_skips_at_the_cap_and_with_unanswered_workloads(
    make_runtime, job_runner, miner, events
) -> None:
    job_runner.behaviour = miner.generate
    assert await run_generation(make_runtime()) is GenerationResult.STORED
    assert await run_generation(make_runtime()) is GenerationResult.SKIPPED  # 2 series: the cap
    assert len(job_runner.requests) == 1


@pytest.mark.parametrize("behaviour", ["fail", "silent"])
async def test_failed_or_silent_job_stores_nothing(
    make_runtime, job_runner, miner, sessions, events, behaviour: str
) -> None:
    job_runner.behaviour = getattr(miner, behaviour)
    runtime = make_runtime(generation_timeout_s=1.0, outcome_grace_s=0.5)
    result = await asyncio.wait_for(run_generation(runtime), 30)
    assert result is GenerationResult.FAILED
    assert await series_rows(sessions) == []
    failures = [e for e in await events() if e[1] == "FAILURE"]
    assert len(failures) == 1
    assert failures[0][0] == "LLM_PROMPT_GENERATION"
    assert failures[0][3].startswith("Trusted miner failed to run prompt generation job: ")
    expected = "job_failed" if behaviour == "fail" else "no outcome within 1.5 s"
    assert expected in failures[0][3]


async def test_presign_failure_is_a_failure_event(
    make_runtime, job_runner, settings, sessions, events
) -> None:
    broken = settings.model_copy(update={"S3_BUCKET_NAME_PROMPTS": None})
    result = await run_generation(make_runtime(settings=broken))
    assert result is GenerationResult.FAILED
    assert job_runner.requests == []
    [failure] = [e for e in await events() if e[1] == "FAILURE"]
    assert failure[3].startswith("Error while generating prompts: S3ConfigError")
    assert failure[2] == {}
