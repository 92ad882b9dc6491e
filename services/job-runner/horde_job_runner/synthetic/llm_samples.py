"""The shard's LLM jobs: taking prompt samples, building the jobs, naming the samples they consume
(docs/synthetic-batch.md, "LLM jobs"; docs/crossval.md §7.5).

* `take_llm_samples`: one ready sample (answered, never taken) per LLM executor of the shard, or
  none at all, reserved in one statement (`PromptSampleStore.take`); short of samples, the shard
  runs no LLM job, reserves nothing and writes INSUFFICIENT_PROMPTS at once, in a short
  transaction of its own, unless one was written in the last 24 h by any shard or replica
  (`PromptSampleStore.record_shortage`; `BatchStart.insufficient_prompts_recently` skips even that).
* `build_llm_jobs`: the samples become jobs, each with a fresh answers file and a presigned PUT
  for it in the answers bucket. `add_llm_jobs` does both for a shard and shuffles its jobs.
* `llm_sample_ids`: each generated job's sample, linked to its `synthetic_jobs` row in the
  shard's persist transaction (`ShardRows.consumed_samples`), whatever the job's outcome (the
  miner has seen its prompts).

A sample is reserved (`taken_at`) when it is taken, not when its job is stored: shards of a batch,
batches that overlap, replicas and a debug run all take from the same pool at the same time and
never get the same sample. A taken sample is spent whatever becomes of the shard. A
validator-side failure here (the database, S3 settings, presigning) is a VALIDATOR_FAILURE event
and the shard runs no LLM job; no miner is blamed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

from horde_common.crossval import solved_key
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS, ExecutorClass
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType
from horde_job_runner.generators import LlmPromptSample, LlmPromptsJobGenerator, make_generator
from horde_job_runner.synthetic.llm_sample_store import PromptSampleStore, ReadySample, SampleSource
from horde_job_runner.synthetic.model import JobState
from horde_job_runner.synthetic.persistence import BatchStore

if TYPE_CHECKING:
    from horde_common.config import Settings
    from horde_job_runner.synthetic.model import BatchTimeouts, ShardRequest
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = [
    "AnswerTarget",
    "add_llm_jobs",
    "answer_targets",
    "build_llm_jobs",
    "llm_sample_ids",
    "sample_source",
    "take_llm_samples",
]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

STAGE = "_generate_jobs"
# Presigning every job's PUT in one worker thread: the first presign of a process imports boto3 and
# builds a client (about a second), each further one is a local signature (well under a ms), so
# even 1,280 LLM jobs (256 miners x 5) sign in a few seconds. Longer means boto3 is stuck.
PRESIGN_TIMEOUT_S: Final = 30.0
# The reference's presign expiry (docs/crossval.md §3): far beyond the job's 48 s limit, and the
# URL is useless once the job is over.
PUT_EXPIRY_S: Final = 3600


class ShardManifests(Protocol):
    """What the LLM jobs need of the manifest phase's outcome (`manifests.ManifestOutcome`)."""

    @property
    def counts(self) -> Mapping[str, Mapping[ExecutorClass, int]]: ...

    @property
    def llm_executor_count(self) -> int: ...


class ShardStart(Protocol):
    """What the LLM jobs need of the shard's start (`batch_start.BatchStart`)."""

    @property
    def insufficient_prompts_recently(self) -> bool: ...


def sample_source(store: object) -> SampleSource | None:
    """The prompt tables of the shard's database (None without one: tests of the flow only)."""
    if isinstance(store, BatchStore):
        return PromptSampleStore(store.sessions, service=store.service)
    return None


async def take_llm_samples(
    source: SampleSource | None,
    llm_executor_count: int,
    *,
    shard_index: int,
    recently_reported: bool,
    events: EventLog,
    db_timeout: float,
) -> tuple[ReadySample, ...]:
    """One ready sample per LLM executor, or none (docs/crossval.md §7.5: all or nothing).

    Short of samples: INSUFFICIENT_PROMPTS with the pool's counts, unless `recently_reported` (seen
    at the shard's start). With a database it is written now, in its own transaction, only if no
    shard or replica wrote one within the day (`SampleSource.record_shortage`); without one it goes
    into `events`.
    """
    if llm_executor_count <= 0:
        return ()
    try:
        async with asyncio.timeout(db_timeout):
            took = await source.take(llm_executor_count) if source is not None else None
            if took is not None and took.samples:
                return took.samples
            available = took.available if took is not None else 0
            if recently_reported:
                return ()
            counts = asdict(await source.counts()) if source is not None else {}
            description = (
                f"{available} ready prompt samples for {llm_executor_count} LLM executors: "
                "no LLM jobs in this shard"
            )
            data = {
                "llm_executor_count": llm_executor_count,
                "prompt_samples_available": available,
                "shard_index": shard_index,
                **counts,
            }
            if source is None:
                events.record(T.VALIDATOR_TELEMETRY, S.INSUFFICIENT_PROMPTS, description, **data)
                return ()
            event = SystemEventRecord(
                T.VALIDATOR_TELEMETRY,
                S.INSUFFICIENT_PROMPTS,
                description,
                {"batch_uuid": events.batch_uuid, "batch_id": events.batch_id, **data},
                datetime.now(UTC),
            )
            await source.record_shortage(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("taking prompt samples")
        _our_failure(events, f"cannot take prompt samples: {type(exc).__name__}: {exc}")
    return ()


@dataclass(frozen=True, slots=True)
class AnswerTarget:
    """One job's answers file: its uuid, the presigned PUT for the miner, the public URL we read."""

    file_uuid: uuid.UUID
    put_url: str
    get_url: str


def answer_targets(settings: Settings, count: int) -> list[AnswerTarget]:
    """`count` fresh answers files `solved/{uuid}.json` in the answers bucket (blocking: boto3).

    Raises `S3ConfigError` when the bucket is not configured, `S3PresignError` when boto3 cannot
    sign (docs/crossval.md §4.2).
    """
    from horde_common import s3

    bucket = s3.answers_bucket(settings)
    out = []
    for _ in range(count):
        file_uuid = uuid.uuid4()
        key = solved_key(file_uuid)
        put = s3.presigned_put_url(settings, bucket, key, expires_s=PUT_EXPIRY_S)
        out.append(AnswerTarget(file_uuid, put, s3.public_url(settings, bucket, key)))
    return out


async def add_llm_jobs(
    jobs: list[JobState],
    manifests: ShardManifests,
    links: Links,
    request: ShardRequest,
    start: ShardStart,
    store: object,
    timeouts: BatchTimeouts,
    events: EventLog,
    rng: random.Random,
    *,
    settings: Settings | None = None,
) -> None:
    """The shard's LLM jobs (docs/miner-protocol.md §3.6): take one sample per LLM executor
    (`take_llm_samples`, from the prompt tables of `store`), build the jobs (`build_llm_jobs`), add
    them to `jobs` and shuffle `jobs`. `settings`: the S3 settings (None: the service's)."""
    samples = await take_llm_samples(
        sample_source(store),
        manifests.llm_executor_count,
        shard_index=request.shard_index,
        recently_reported=start.insufficient_prompts_recently,
        events=events,
        db_timeout=timeouts.db,
    )
    if samples:
        await build_llm_jobs(
            jobs, samples, manifests.counts, links, timeouts=timeouts, events=events, settings=settings
        )
        rng.shuffle(jobs)


async def build_llm_jobs(
    jobs: list[JobState],
    samples: Sequence[ReadySample],
    counts: Mapping[str, Mapping[ExecutorClass, int]],
    links: Links,
    *,
    timeouts: BatchTimeouts,
    events: EventLog,
    settings: Settings | None = None,
) -> None:
    """One LLM job per sample, each registered with its miner's session, appended to `jobs`.

    `samples` holds exactly one per LLM executor in `counts` (`take_llm_samples`). Nothing is
    added when the answers files cannot be prepared (our VALIDATOR_FAILURE).
    """
    if not samples:
        return
    try:
        if settings is None:
            from horde_common.config import get_settings

            settings = get_settings()
        targets = await asyncio.wait_for(
            asyncio.to_thread(answer_targets, settings, len(samples)), PRESIGN_TIMEOUT_S
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("preparing LLM answers files")
        _our_failure(events, f"cannot prepare the LLM answers files: {type(exc).__name__}: {exc}")
        return
    pending = iter(zip(samples, targets, strict=True))
    for hotkey, miner_counts in counts.items():
        link = links[hotkey]
        for _ in range(miner_counts.get(LLM_EXECUTOR_CLASS, 0)):
            sample, target = next(pending)
            gen = make_generator(
                str(LLM_EXECUTOR_CLASS),
                0,  # LLM jobs do not depend on the weights version
                hotkey,
                llm_sample=LlmPromptSample(
                    series_url=sample.series_url,
                    seed=sample.seed,
                    expected_answers={p.content: p.answer or "" for p in sample.prompts},
                    answers_put_url=target.put_url,
                    answers_url=target.get_url,
                    file_uuid=target.file_uuid,
                    sample_id=sample.sample_id,
                ),
            )
            job = JobState(
                job_uuid=str(gen.job_uuid),
                miner_hotkey=hotkey,
                executor_class=LLM_EXECUTOR_CLASS,
                generator=gen,
                spin_up=timeouts.spin_up_for(LLM_EXECUTOR_CLASS),
                timeout=timeouts.job_timeout
                if timeouts.job_timeout is not None
                else float(gen.timeout_seconds()),
            )
            link.session.register_job(job.job_uuid, LLM_EXECUTOR_CLASS)
            link.jobs[job.job_uuid] = job
            jobs.append(job)


def llm_sample_ids(jobs: Sequence[JobState]) -> dict[int, uuid.UUID]:
    """Sample id -> job uuid of every generated LLM job (pass, fail or excluded)."""
    out: dict[int, uuid.UUID] = {}
    for job in jobs:
        gen = job.generator
        if isinstance(gen, LlmPromptsJobGenerator) and gen.sample.sample_id is not None:
            out[gen.sample.sample_id] = uuid.UUID(job.job_uuid)
    return out


def _our_failure(events: EventLog, description: str) -> None:
    events.record(T.VALIDATOR_FAILURE, S.GENERIC_ERROR, description, stage=STAGE)
