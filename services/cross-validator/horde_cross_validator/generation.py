"""Prompt generation on the trusted miner, every 5 minutes (docs/crossval.md §7.2, §9.3).

One job writes N series files straight into the prompts bucket through presigned PUT URLs; the
`prompt_series` rows (public URLs, never the signed ones) are inserted only after the job
succeeded, and only for the files that are there and readable: a row for a missing file would
count toward the series cap for ever while sampling could never use it.
"""

from __future__ import annotations

import asyncio
import uuid
from enum import StrEnum
from typing import Final

import structlog
from sqlalchemy import func, insert, select

from horde_common import s3
from horde_common.db.models import PromptSeries, SolveWorkload
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_cross_validator.not_configured import report_not_configured
from horde_cross_validator.planning import generation_cmd, generation_success_event_data, plan_generation
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.trusted_jobs import TrustedJobKind, job_request, run_trusted_job
from horde_cross_validator.trusted_lock import try_advisory_lock
from horde_cross_validator.workloads import SERIES_DOWNLOAD_TIMEOUT_S, SERIES_MAX_BYTES, series_problem

__all__ = ["GENERATION_INTERVAL_S", "GenerationResult", "run_generation"]

log = structlog.get_logger(__name__)

GENERATION_INTERVAL_S: Final = 300.0
"""Every 5 minutes, as the reference's periodic task; one job fits in the period."""

EVENT: Final = SystemEventType.LLM_PROMPT_GENERATION
GENERATOR_VERSION: Final = 0  # the v0 prompt generator image


class GenerationResult(StrEnum):
    NOT_CONFIGURED = "not_configured"
    SKIPPED = "skipped"
    LOCK_HELD = "lock_held"
    FAILED = "failed"
    STORED = "stored"


def generator_image(model: str) -> str:
    return f"backenddevelopersltd/compute-horde-prompt-gen-{model}:v0-latest"


async def _event(
    runtime: CrossValidatorRuntime, subtype: str, description: str = "", data: dict | None = None
) -> None:
    async with runtime.sessions() as session, session.begin():
        await record_events_bulk(
            session, [SystemEventRecord(EVENT, subtype, description, data or {}, runtime.now())]
        )


async def run_generation(runtime: CrossValidatorRuntime) -> GenerationResult:
    """One generation run; never raises for a failed job or S3 (those are FAILURE events)."""
    if not runtime.trusted_miner_configured:
        await report_not_configured(runtime.sessions, EVENT, runtime.now())
        return GenerationResult.NOT_CONFIGURED
    async with runtime.sessions() as session:
        params = await runtime.prompt_params(session)
        series_count = await session.scalar(select(func.count()).select_from(PromptSeries)) or 0
        unfinished = (
            await session.scalar(
                select(func.count()).select_from(SolveWorkload).where(SolveWorkload.finished_at.is_(None))
            )
            or 0
        )
    plan = plan_generation(series_count=series_count, unfinished_workloads=unfinished, params=params)
    if not plan.run:
        log.info("generation.skipped", reason=str(plan.skip), series=series_count, unfinished=unfinished)
        return GenerationResult.SKIPPED
    await _event(runtime, SystemEventSubtype.PROMPT_GENERATION_STARTED, data=plan.started_event_data)
    async with try_advisory_lock(runtime.sessions) as held:
        if not held:
            log.info("generation.lock_held")
            return GenerationResult.LOCK_HELD
        try:
            return await _generate(runtime, plan.series_to_request, plan.prompts_per_series)
        except Exception as exc:  # a bug or the bus: recorded, the next run tries again
            log.exception("generation.error")
            await _event(runtime, SystemEventSubtype.FAILURE, f"Error while generating prompts: {exc}")
            return GenerationResult.FAILED


async def _generate(runtime: CrossValidatorRuntime, count: int, prompts_per_series: int) -> GenerationResult:
    settings = runtime.settings
    started_at = runtime.now()
    series = [uuid.uuid4() for _ in range(count)]
    try:
        bucket = s3.prompts_bucket(settings)
        uploads = []
        for u in series:
            url = await s3.presigned_put_url_async(settings, bucket, str(u), expires_s=s3.PRESIGN_EXPIRY_S)
            uploads.append(
                {"output_upload_type": "single_file_put", "relative_path": f"prompts_{u}.txt", "url": url}
            )
    except s3.S3Error as exc:
        found = exc.event(EVENT, "Error while generating prompts: ")
        await _event(runtime, found.subtype, found.long_description)
        return GenerationResult.FAILED
    job = job_request(
        docker_image=generator_image(runtime.generation_model),
        args=generation_cmd(runtime.generation_model, prompts_per_series, series),
        volume=None,
        output_upload={"output_upload_type": "multi_upload", "uploads": uploads, "system_output": None},
    )
    outcome = await run_trusted_job(
        runtime,
        kind=TrustedJobKind.GENERATION,
        workload_id="",
        job=job,
        timeout_s=runtime.generation_timeout_s,
        wait_timeout_s=runtime.generation_timeout_s,
    )
    if not outcome.success:
        description = f"Trusted miner failed to run prompt generation job: {outcome.comment!r}"
        await _event(runtime, SystemEventSubtype.FAILURE, description, {"job_uuid": str(outcome.job_uuid)})
        return GenerationResult.FAILED
    rows = []
    problems: list[str] = []
    urls = [s3.public_url(settings, bucket, str(u)) for u in series]
    # All at once: each read is bounded (SERIES_DOWNLOAD_TIMEOUT_S), so is the whole check.
    found = await asyncio.gather(*(_series_unusable(url) for url in urls))
    for u, url, problem in zip(series, urls, found, strict=True):
        if problem:
            problems.append(problem)
        else:
            rows.append({"series_uuid": u, "s3_url": url, "generator_version": GENERATOR_VERSION})
    if problems:  # the trusted miner said it succeeded: what it left is its fault, recorded as such
        description = (
            f"Trusted miner's prompt generation job left {len(problems)} of {count} series unusable"
            f" (job {outcome.job_uuid}); first: {problems[0]}"
        )
        log.warning("generation.series_unusable", count=len(problems), first=problems[0])
        await _event(runtime, SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3, description)
    if not rows:
        return GenerationResult.FAILED
    completed_at = runtime.now()
    data = generation_success_event_data(started_at=started_at, completed_at=completed_at, count=len(rows))
    async with runtime.sessions() as session, session.begin():
        await session.execute(insert(PromptSeries), rows)
        await record_events_bulk(
            session, [SystemEventRecord(EVENT, SystemEventSubtype.SUCCESS, "", data, completed_at)]
        )
    return GenerationResult.STORED


async def _series_unusable(url: str) -> str:
    """Why the series file at `url` cannot be sampled ("" when it can): missing, too big, malformed."""
    try:
        body = await s3.download_bytes(url, max_bytes=SERIES_MAX_BYTES, timeout_s=SERIES_DOWNLOAD_TIMEOUT_S)
    except s3.S3Error as exc:
        return repr(exc)
    return series_problem(body)[1]
