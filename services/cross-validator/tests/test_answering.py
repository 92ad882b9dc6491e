"""Trusted answers through the bus and S3 (docs/crossval.md §9.5): stored only when every prompt is
answered; a failed, silent or incomplete job, or a missing answers file, leaves the workload as it was."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import insert, select

from horde_common import s3
from horde_common.crossval import solver_cmd
from horde_common.db.models import Prompt, PromptSeries, SolveWorkload
from horde_cross_validator.answering import run_answering
from horde_cross_validator.views import crossval_status
from horde_cross_validator.workloads import run_sampling

pytestmark = pytest.mark.timeout(90)


async def one_workload(sessions: Any, settings: Any, runtime: Any) -> SolveWorkload:
    """Two series in the prompts bucket, sampled into one workload of two prompts (the real sampling)."""
    bucket = settings.S3_BUCKET_NAME_PROMPTS
    rows = []
    for i in range(2):
        key = str(uuid.uuid4())
        text = "\n".join(f"series {i} prompt {j}" for j in range(5))
        await s3.put_object_async(settings, bucket, key, text.encode())
        rows.append({"series_uuid": uuid.UUID(key), "s3_url": s3.public_url(settings, bucket, key)})
    async with sessions.begin() as session:
        await session.execute(insert(PromptSeries), rows)
    assert await run_sampling(runtime) == 1
    async with sessions() as session:
        return (await session.scalars(select(SolveWorkload))).one()


async def stored(sessions: Any) -> tuple[Any, list[tuple[str, str | None]]]:
    async with sessions() as session:
        workload = (await session.scalars(select(SolveWorkload))).one()
        prompts = (await session.execute(select(Prompt.content, Prompt.answer).order_by(Prompt.id))).all()
    return workload.finished_at, [(c, a) for c, a in prompts]


async def test_answers_are_stored_with_finished_at(
    make_runtime, job_runner, miner, sessions, settings, events
) -> None:
    runtime = make_runtime()
    workload = await one_workload(sessions, settings, runtime)
    job_runner.behaviour = miner.solve
    result = await run_answering(runtime)
    assert (result.successes, result.failures) == (1, 0)
    finished_at, prompts = await stored(sessions)
    assert finished_at is not None
    assert len(prompts) == 2 and all(answer == miner.answer_of(content) for content, answer in prompts)
    [request] = job_runner.requests
    assert request.workload_id == str(workload.workload_uuid)
    assert (request.request["timeout_s"], request.request["wait_timeout_s"]) == (288, 48)
    job = request.request["job"]
    volume = job["volume"]["volumes"][0]
    assert volume["url"] == workload.s3_url and volume["relative_path"].endswith(".txt")
    file_uuid = uuid.UUID(volume["relative_path"].removesuffix(".txt"))
    assert job["args"] == solver_cmd(workload.seed, file_uuid)
    upload = job["output_upload"]["uploads"][0]
    assert upload["relative_path"] == f"{file_uuid}.json"
    assert f"/solved/{file_uuid}.json?" in upload["url"] and "X-Amz-Signature=" in upload["url"]
    answering = [(s, d) for _, s, d, _ in await events("LLM_PROMPT_ANSWERING")]
    assert answering[0] == ("UNPROCESSED_WORKLOADS", {"count": 1})
    assert answering[1][0] == "SUCCESS" and answering[1][1]["job_success_count"] == 1
    status = await _status(sessions)
    assert status["series"] == 2 and status["workloads"] == {"total": 1, "unanswered": 0}
    assert status["samples"] == {"used": 0, "taken": 0, "ready": 2, "unanswered": 0}
    assert status["last_trusted_job"]["task"] == "LLM_PROMPT_ANSWERING"
    assert status["last_trusted_job"]["outcome"] == "SUCCESS"


async def _status(sessions: Any) -> dict[str, Any]:
    async with sessions() as session:
        return await crossval_status(session)


async def test_one_missing_answer_stores_nothing(
    make_runtime, job_runner, miner, sessions, settings, events
) -> None:
    runtime = make_runtime()
    workload = await one_workload(sessions, settings, runtime)

    async def omit_one(msg: Any) -> Any:
        return await miner.solve(msg, omit=1)

    job_runner.behaviour = omit_one
    result = await run_answering(runtime)
    assert (result.successes, result.failures) == (0, 1)
    finished_at, prompts = await stored(sessions)
    assert finished_at is None and all(answer is None for _, answer in prompts)
    [missing] = [e for e in await events() if e[1] == "LLM_PROMPT_ANSWERS_MISSING"]
    assert missing[2]["workload_id"] == str(workload.workload_uuid)
    assert missing[2]["unanswered_prompt_content"] == prompts[-1][0]
    status = await _status(sessions)
    assert status["samples"]["unanswered"] == 2 and status["workloads"]["unanswered"] == 1


@pytest.mark.parametrize("behaviour", ["fail", "silent", "no_file"])
async def test_failed_job_or_missing_file_leaves_the_workload(
    make_runtime, job_runner, miner, sessions, settings, events, behaviour: str
) -> None:
    runtime = make_runtime(answering_timeout_s=1.0, answering_wait_timeout_s=1.0, outcome_grace_s=0.5)
    await one_workload(sessions, settings, runtime)
    job_runner.behaviour = {
        "fail": miner.fail,
        "silent": miner.silent,
        "no_file": lambda msg: _succeed_without_file(miner, msg),
    }[behaviour]
    result = await asyncio.wait_for(run_answering(runtime), 30)
    assert (result.successes, result.failures) == (0, 1)
    finished_at, prompts = await stored(sessions)
    assert finished_at is None and all(answer is None for _, answer in prompts)
    rows = [(s, d, x) for _, s, d, x in await events("LLM_PROMPT_ANSWERING")]
    if behaviour == "no_file":
        [error] = [r for r in rows if r[0] == "ERROR_DOWNLOADING_FROM_S3"]
        assert error[1] == {} and error[2].startswith("Failed to download prompt answers: S3DownloadError")
        assert "HTTP 404" in error[2]
    else:
        [failure] = [r for r in rows if r[0] == "FAILURE"]
        assert failure[2].startswith("Trusted miner failed to run prompt answering job: ")
    summary = [r for r in rows if r[0] == "SUCCESS"]
    assert summary[0][1]["job_failure_count"] == 1


async def _succeed_without_file(miner: Any, msg: Any) -> Any:
    return miner.completed(msg, True)


async def test_nothing_to_answer_records_the_count_only(make_runtime, job_runner, events) -> None:
    result = await run_answering(make_runtime())
    assert result.durations == [] and job_runner.requests == []
    assert [(s, d) for _, s, d, _ in await events()] == [("UNPROCESSED_WORKLOADS", {"count": 0})]
