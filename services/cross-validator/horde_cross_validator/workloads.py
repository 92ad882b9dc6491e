"""Sampling series into workloads for the trusted miner, every 30 minutes (docs/crossval.md §7.3, §9.4).

The pure run is `sampling.SamplingRun`; this module feeds it the series (random order, each file
downloaded with a size and time bound), uploads each full workload file to the answers bucket
through a presigned PUT and only then saves the workload, its samples and prompts in one
transaction. Download and upload failures become events and skip that series or workload.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import structlog
from sqlalchemy import func, insert, select

from horde_common import s3
from horde_common.db.models import Prompt, PromptSample, PromptSeries, SolveWorkload
from horde_common.event_types import SystemEventSubtype, SystemEventType
from horde_common.telemetry.events import SystemEventRecord, record_events_bulk
from horde_cross_validator.planning import new_workloads_event_data, plan_sampling
from horde_cross_validator.runtime import CrossValidatorRuntime
from horde_cross_validator.sampling import SamplingRun, WorkloadDraft, series_lines
from horde_cross_validator.trusted_lock import SAMPLING_LOCK_KEY, try_advisory_lock

__all__ = [
    "SAMPLING_INTERVAL_S",
    "SERIES_DOWNLOAD_TIMEOUT_S",
    "SERIES_MAX_BYTES",
    "run_sampling",
    "series_problem",
]

log = structlog.get_logger(__name__)

SAMPLING_INTERVAL_S: Final = 1800.0
"""Every 30 minutes, as the reference's periodic task."""
SERIES_DOWNLOAD_TIMEOUT_S: Final = 10.0
"""A series file is ~240 short lines (a few KiB); 10 s is generous, and bounds a run of thousands."""
SERIES_MAX_BYTES: Final = 1024 * 1024
"""Far above a real series (240 prompts of at most 40 tokens); a bigger file is not a series."""
MAX_PROMPT_CHARS: Final = 4096
"""A generated prompt is at most 40 tokens (a few hundred characters); a longer line is not a
prompt, and would be copied into every workload file and prompt row that samples it."""

EVENT: Final = SystemEventType.LLM_PROMPT_SAMPLING


@dataclass(frozen=True, slots=True)
class _Workload:
    workload_uuid: uuid.UUID
    put_url: str
    public_url: str


async def _events(runtime: CrossValidatorRuntime, *events: SystemEventRecord) -> None:
    async with runtime.sessions() as session, session.begin():
        await record_events_bulk(session, events)


async def _s3_event(runtime: CrossValidatorRuntime, exc: s3.S3Error, prefix: str) -> None:
    found = exc.event(EVENT, prefix)
    await _events(runtime, SystemEventRecord(EVENT, found.subtype, found.long_description, {}, runtime.now()))


async def _new_workload(runtime: CrossValidatorRuntime) -> _Workload | None:
    settings = runtime.settings
    workload_uuid = uuid.uuid4()
    try:
        bucket = s3.answers_bucket(settings)
        put_url = await s3.presigned_put_url_async(
            settings, bucket, str(workload_uuid), expires_s=s3.PRESIGN_EXPIRY_S
        )
    except s3.S3Error as exc:
        log.warning("sampling.workload_not_created", error=str(exc))
        await _s3_event(runtime, exc, "Failed to create a workload: ")
        return None
    return _Workload(workload_uuid, put_url, s3.public_url(settings, bucket, str(workload_uuid)))


def series_problem(body: bytes) -> tuple[list[str], str]:
    """The series' lines and "" when usable, else the reason it is not (the trusted miner's fault)."""
    try:
        lines = series_lines(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return [], f"not UTF-8 ({exc.reason} at byte {exc.start})"
    for number, line in enumerate(lines, 1):
        if "\x00" in line:  # PostgreSQL text cannot hold it: the workload would upload but never save
            return [], f"line {number} contains a NUL character"
        if len(line) > MAX_PROMPT_CHARS:
            return [], f"line {number} has {len(line)} characters, more than {MAX_PROMPT_CHARS}"
        if not line or line != line.strip():
            # The solver answers the stripped line: this prompt could never be matched, and its
            # workload, never finished, would hold generation back for good (docs/crossval.md §7.2).
            return [], f"line {number} is blank or padded with whitespace"
    return lines, ""


async def _series_lines(runtime: CrossValidatorRuntime, url: str) -> list[str] | None:
    try:
        body = await s3.download_bytes(url, max_bytes=SERIES_MAX_BYTES, timeout_s=SERIES_DOWNLOAD_TIMEOUT_S)
    except s3.S3Error as exc:
        log.warning("sampling.series_download_failed", error=str(exc))
        await _s3_event(runtime, exc, "Failed to download prompt series: ")
        return None
    lines, problem = series_problem(body)
    if problem:
        log.warning("sampling.series_malformed", url=url, problem=problem)
        description = f"Malformed prompt series {url}: {problem}"  # a public URL: no secret in it
        await _events(
            runtime,
            SystemEventRecord(
                EVENT, SystemEventSubtype.ERROR_DOWNLOADING_FROM_S3, description, {}, runtime.now()
            ),
        )
        return None
    return lines


async def _upload(runtime: CrossValidatorRuntime, workload: _Workload, draft: WorkloadDraft) -> bool:
    try:
        await s3.upload_bytes(workload.put_url, draft.file_text().encode())
    except s3.S3Error as exc:
        log.warning("sampling.workload_upload_failed", error=str(exc))
        await _s3_event(runtime, exc, "Failed to upload workload: ")
        return False
    return True


async def _save(runtime: CrossValidatorRuntime, workload: _Workload, draft: WorkloadDraft) -> None:
    """Workload, samples and prompts together; a failure is only logged (the file is uploaded and
    the run counts it, as the reference does)."""
    try:
        async with runtime.sessions() as session, session.begin():
            workload_id = await session.scalar(
                insert(SolveWorkload)
                .values(workload_uuid=workload.workload_uuid, seed=draft.seed, s3_url=workload.public_url)
                .returning(SolveWorkload.id)
            )
            for sample in draft.samples:
                sample_id = await session.scalar(
                    insert(PromptSample)
                    .values(series_id=sample.series_id, workload_id=workload_id)
                    .returning(PromptSample.id)
                )
                await session.execute(
                    insert(Prompt), [{"sample_id": sample_id, "content": p} for p in sample.prompts]
                )
    except Exception:
        log.exception("sampling.save_failed", workload_uuid=str(workload.workload_uuid))


async def run_sampling(runtime: CrossValidatorRuntime) -> int | None:
    """One sampling run; the number of workloads made (None: another replica is sampling)."""
    async with try_advisory_lock(runtime.sessions, SAMPLING_LOCK_KEY) as held:
        if not held:
            return None
        async with runtime.sessions() as session:
            params = await runtime.prompt_params(session)
            series_count = await session.scalar(select(func.count()).select_from(PromptSeries)) or 0
            unused = (
                await session.scalar(
                    select(func.count())
                    .select_from(PromptSample)
                    # Taken by a shard counts as used: it will never be handed out again.
                    .where(PromptSample.synthetic_job_id.is_(None), PromptSample.taken_at.is_(None))
                )
                or 0
            )
        plan = plan_sampling(series_count=series_count, unused_samples=unused, params=params)
        if not plan.run:
            record = SystemEventRecord(
                EVENT, SystemEventSubtype.PROMPT_SAMPLING_SKIPPED, "", plan.event_data, runtime.now()
            )
            await _events(runtime, record)
            return 0
        created = await _sample(runtime, plan.needed, params.prompts_per_sample, params.prompts_per_workload)
        data = new_workloads_event_data(created=created, series_count=series_count, unused_samples=unused)
        await _events(
            runtime,
            SystemEventRecord(EVENT, SystemEventSubtype.NEW_WORKLOADS_CREATED, "", data, runtime.now()),
        )
        return created


async def _sample(runtime: CrossValidatorRuntime, needed: int, k: int, per_workload: int) -> int:
    run = SamplingRun(needed=needed, prompts_per_sample=k, prompts_per_workload=per_workload, rng=runtime.rng)
    async with runtime.sessions() as session:
        series = (
            await session.execute(select(PromptSeries.id, PromptSeries.s3_url).order_by(func.random()))
        ).all()
    workload = await _new_workload(runtime)
    if workload is None:
        return 0
    for series_id, url in series:
        full = run.add_series(series_id, await _series_lines(runtime, url))
        if full is None:
            continue
        uploaded = await _upload(runtime, workload, full)
        if uploaded:
            await _save(runtime, workload, full)
        run.workload_finished(uploaded)
        if run.done:
            break
        workload = await _new_workload(runtime)
        if workload is None:
            break
    log.info(
        "sampling.done", workloads=run.workloads_created, samples=run.sampled, skipped=run.skipped_series
    )
    return run.workloads_created
