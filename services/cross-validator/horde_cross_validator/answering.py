"""Trusted answers for unanswered workloads, every 5 minutes (docs/crossval.md §7.4, §9.5).

Each workload is one job on the trusted miner, under the trusted-miner lock: the solver reads the
workload file and puts `solved/{f}.json` into the answers bucket; the validator downloads it (size
and time bounded) and stores the answers only when every prompt of the workload has one, together
with `finished_at`. Anything less leaves the workload as it was, to be tried on the next run.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import structlog
from sqlalchemy import select, update

from horde_common import s3
from horde_common.crossval import (
    SOLVER_IMAGE,
    AnswersFormatError,
    answers_file_name,
    parse_answers,
    solved_key,
    solver_cmd,
)
from horde_common.db.models import Prompt, PromptSample, SolveWorkload
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_cross_validator.not_configured import report_not_configured
from horde_cross_validator.planning import answering_may_continue, answering_summary_event_data
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.sampling import (
    MissingAnswer,
    WorkloadPrompt,
    match_answers,
    missing_answer_event_data,
)
from horde_cross_validator.trusted_jobs import TrustedJobKind, job_request, run_trusted_job
from horde_cross_validator.trusted_lock import try_advisory_lock

__all__ = ["ANSWERING_INTERVAL_S", "AnsweringRun", "run_answering"]

log = structlog.get_logger(__name__)

ANSWERING_INTERVAL_S: Final = 300.0
"""Every 5 minutes, as the reference's periodic task; the 260 s budget keeps a run inside it."""
ANSWERS_MAX_BYTES: Final = 4 * 1024 * 1024
"""240 answers of at most 256 tokens each are well under 1 MiB; more is not a solver's output."""

EVENT: Final = SystemEventType.LLM_PROMPT_ANSWERING


class AnsweringRun:
    """What one run did (returned for tests and the log)."""

    def __init__(self) -> None:
        self.not_configured = False
        self.lock_held = False
        self.successes = 0
        self.failures = 0
        self.durations: list[float] = []


async def _event(
    runtime: CrossValidatorRuntime, subtype: str, description: str = "", data: dict | None = None
) -> None:
    async with runtime.sessions() as session, session.begin():
        await record_events_bulk(
            session, [SystemEventRecord(EVENT, subtype, description, data or {}, runtime.now())]
        )


async def run_answering(runtime: CrossValidatorRuntime) -> AnsweringRun:
    """Answer unanswered workloads in order while the time budget allows (docs/crossval.md §7.4)."""
    result = AnsweringRun()
    if not runtime.trusted_miner_configured:
        await report_not_configured(runtime.sessions, EVENT, runtime.now())
        result.not_configured = True
        return result
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(SolveWorkload.id, SolveWorkload.workload_uuid, SolveWorkload.seed, SolveWorkload.s3_url)
            .where(SolveWorkload.finished_at.is_(None))
            .order_by(SolveWorkload.id)
        )
        workloads = rows.all()
    await _event(runtime, SystemEventSubtype.UNPROCESSED_WORKLOADS, data={"count": len(workloads)})
    started_at = runtime.now()
    for workload_id, workload_uuid, seed, url in workloads:
        if not answering_may_continue(result.durations, runtime.answering_budget_s):
            break
        began = runtime.monotonic()
        async with try_advisory_lock(runtime.sessions) as held:
            if not held:
                result.lock_held = True
                break
            try:
                ok = await _answer(runtime, workload_id, workload_uuid, seed, url)
            except Exception as exc:  # a bug or the bus: counted as a failure, the next workload goes on
                log.exception("answering.error", workload_uuid=str(workload_uuid))
                await _event(runtime, SystemEventSubtype.FAILURE, f"Error while answering prompts: {exc}")
                ok = False
        result.durations.append(runtime.monotonic() - began)
        if ok:
            result.successes += 1
        else:
            result.failures += 1
    if result.durations:
        data = answering_summary_event_data(
            started_at=started_at,
            completed_at=runtime.now(),
            durations_s=result.durations,
            successes=result.successes,
            failures=result.failures,
        )
        await _event(runtime, SystemEventSubtype.SUCCESS, data=data)
    return result


async def _answer(
    runtime: CrossValidatorRuntime, workload_id: int, workload_uuid: uuid.UUID, seed: int, url: str
) -> bool:
    settings = runtime.settings
    file_uuid = uuid.uuid4()
    try:
        bucket = s3.answers_bucket(settings)
        put_url = await s3.presigned_put_url_async(
            settings, bucket, solved_key(file_uuid), expires_s=s3.PRESIGN_EXPIRY_S
        )
    except s3.S3Error as exc:
        found = exc.event(EVENT, "Error while answering prompts: ")
        await _event(runtime, found.subtype, found.long_description)
        return False
    job = job_request(
        docker_image=SOLVER_IMAGE,
        args=solver_cmd(seed, file_uuid),
        volume={
            "volume_type": "multi_volume",
            "volumes": [{"volume_type": "single_file", "url": url, "relative_path": f"{file_uuid}.txt"}],
        },
        output_upload={
            "output_upload_type": "multi_upload",
            "uploads": [
                {
                    "output_upload_type": "single_file_put",
                    "url": put_url,
                    "relative_path": answers_file_name(file_uuid),
                }
            ],
            "system_output": None,
        },
    )
    outcome = await run_trusted_job(
        runtime,
        kind=TrustedJobKind.ANSWERING,
        workload_id=str(workload_uuid),
        job=job,
        timeout_s=runtime.answering_timeout_s,
        wait_timeout_s=runtime.answering_wait_timeout_s,
    )
    if not outcome.success:
        description = f"Trusted miner failed to run prompt answering job: {outcome.comment!r}"
        await _event(runtime, SystemEventSubtype.FAILURE, description, {"job_uuid": str(outcome.job_uuid)})
        return False
    answers_url = s3.public_url(settings, bucket, solved_key(file_uuid))
    try:
        answers = parse_answers(await s3.download_bytes(answers_url, max_bytes=ANSWERS_MAX_BYTES))
    except s3.S3Error as exc:
        found = exc.event(EVENT, "Failed to download prompt answers: ")
        await _event(runtime, found.subtype, found.long_description)
        return False
    except AnswersFormatError as exc:
        await _event(
            runtime,
            SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3,
            f"Failed to download prompt answers: {exc!r}",
        )
        return False
    return await _store(runtime, workload_id, workload_uuid, answers)


async def _store(
    runtime: CrossValidatorRuntime, workload_id: int, workload_uuid: uuid.UUID, answers: dict[str, str]
) -> bool:
    """All of the workload's unanswered prompts, with `finished_at`, or nothing."""
    now: datetime = runtime.now()
    async with runtime.sessions() as session, session.begin():
        rows = await session.execute(
            select(Prompt.id, Prompt.sample_id, Prompt.content)
            .join(PromptSample, PromptSample.id == Prompt.sample_id)
            .where(PromptSample.workload_id == workload_id, Prompt.answer.is_(None))
            .order_by(Prompt.id)
        )
        prompts = [WorkloadPrompt(pid, sid, content) for pid, sid, content in rows]
        matched = match_answers(prompts, answers)
        if isinstance(matched, MissingAnswer):
            data = missing_answer_event_data(matched, workload_uuid)
            record = SystemEventRecord(EVENT, SystemEventSubtype.LLM_PROMPT_ANSWERS_MISSING, "", data, now)
            await record_events_bulk(session, [record])
            return False
        await session.execute(update(Prompt), [{"id": pid, "answer": a} for pid, a in matched.items()])
        await session.execute(
            update(SolveWorkload).where(SolveWorkload.id == workload_id).values(finished_at=now)
        )
    return True
