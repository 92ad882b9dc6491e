"""An LLM job's answers file written after the miner reported the job finished does not count
(docs/synthetic-batch.md, "LLM jobs"), against the real moto S3 (127.0.0.1:9000).

The miner's upload goes through the job's presigned PUT, as an executor's would; when the finished
message "arrived" is set on the job (`final_at`), relative to the object's own `Last-Modified` as
S3 reports it, so nothing here depends on sleeping or on how fast moto answers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from horde_common import s3
from horde_common.config import Settings
from horde_common.crossval import ANSWERS_MISMATCH
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_job_runner.generators import LlmPromptSample, make_generator
from horde_job_runner.synthetic.ledger import JobLedger
from horde_job_runner.synthetic.llm_answers import (
    ANSWERS_UPLOADED_LATE,
    LATE_UPLOAD_TOLERANCE,
    fetch_llm_answers,
    uploaded_late,
)
from horde_job_runner.synthetic.llm_samples import AnswerTarget, answer_targets
from horde_job_runner.synthetic.model import JobState, SystemClock
from horde_job_runner.synthetic.shard_services import EventLog
from horde_localnet import llm

pytestmark = pytest.mark.timeout(60)

SEED = 31
PROMPT = "Why is the sky blue at noon and red at dusk?"


def llm_job(target: AnswerTarget, finished_at: datetime) -> JobState:
    """A finished LLM job whose answers file is `target`; the finished message came at `finished_at`."""
    gen = make_generator(
        str(LLM_EXECUTOR_CLASS),
        4,
        "hk-late",
        llm_sample=LlmPromptSample(
            series_url="unused",
            seed=SEED,
            expected_answers={PROMPT: llm.answer(SEED, PROMPT)},
            answers_put_url=target.put_url,
            answers_url=target.get_url,
            file_uuid=target.file_uuid,
        ),
    )
    return JobState(
        job_uuid=str(gen.job_uuid),
        miner_hotkey="hk-late",
        executor_class=LLM_EXECUTOR_CLASS,
        generator=gen,
        spin_up=1.0,
        timeout=48.0,
        final_kind="finished",
        final_at=finished_at,
    )


async def upload_honest_answers(conf: Settings, count: int) -> tuple[list[AnswerTarget], list[datetime]]:
    """`count` answers files uploaded through their presigned PUTs, and each one's `Last-Modified`."""
    targets = await asyncio.to_thread(answer_targets, conf, count)
    body = llm.answers_json(llm.solve(SEED, PROMPT))
    modified = []
    for target in targets:
        await s3.upload_bytes(target.put_url, body)
        head = await asyncio.to_thread(
            s3.client(conf).head_object,
            Bucket=conf.S3_BUCKET_NAME_ANSWERS,
            Key=f"solved/{target.file_uuid}.json",
        )
        modified.append(head["LastModified"].astimezone(UTC))
    return targets, modified


async def test_answers_uploaded_after_the_finish_fail_the_job_as_the_miners_fault(s3_conf: Settings) -> None:
    targets, modified = await upload_honest_answers(s3_conf, 4)
    just_in = LATE_UPLOAD_TOLERANCE - timedelta(seconds=1)
    jobs = {
        # finished after the upload, as an honest executor does
        "on time": llm_job(targets[0], datetime.now(UTC)),
        # the header (S3's clock, to the second) a little past the finish: within the tolerance
        "within tolerance": llm_job(targets[1], modified[1] - just_in),
        # reported finished, then uploaded: the file is newer than the finish by more than the tolerance
        "late": llm_job(targets[2], modified[2] - LATE_UPLOAD_TOLERANCE - timedelta(seconds=1)),
        "much later": llm_job(targets[3], modified[3] - timedelta(seconds=40)),
    }
    events = EventLog(batch_id=0, clock=SystemClock())
    ledger = JobLedger(events)
    outcome = await fetch_llm_answers(list(jobs.values()), events=events, ledger=ledger)

    assert (outcome.fetched, outcome.miner_failures, outcome.late_uploads) == (2, 2, 2)
    assert outcome.validator_failures == 0 and not any(job.excluded for job in jobs.values())
    verdicts = {name: tuple(job.generator.verify("", 1.0)) for name, job in jobs.items()}
    assert verdicts == {
        "on time": (True, "", 1.0),
        "within tolerance": (True, "", 1.0),
        "late": (False, ANSWERS_UPLOADED_LATE, 0.0),
        "much later": (False, ANSWERS_UPLOADED_LATE, 0.0),
    }
    late = {e.data["job_uuid"]: e for e in events.records if e.subtype == "ERROR_DOWNLOADING_FROM_S3"}
    assert set(late) == {jobs["late"].job_uuid, jobs["much later"].job_uuid}
    event = late[jobs["late"].job_uuid]
    assert event.type == "VALIDATOR_TELEMETRY" and ANSWERS_UPLOADED_LATE in event.description
    assert event.data["fault"] == "miner" and event.data["reason"] == "uploaded_late"
    assert event.data["miner_hotkey"] == "hk-late"
    assert datetime.fromisoformat(event.data["last_modified"]) == modified[2]
    assert event.data["tolerance_s"] == LATE_UPLOAD_TOLERANCE.total_seconds()


async def test_a_late_file_is_rejected_even_when_its_answers_are_right_and_a_new_download_resets_it(
    s3_conf: Settings,
) -> None:
    """The rejection is about when the file was written, not what it holds; the generator's answers
    are still checked as usual once a later download counts."""
    (target,), (modified,) = await upload_honest_answers(s3_conf, 1)
    job = llm_job(target, modified - timedelta(seconds=10))
    events = EventLog(batch_id=0, clock=SystemClock())
    await fetch_llm_answers([job], events=events, ledger=JobLedger(events))
    assert tuple(job.generator.verify("", 1.0)) == (False, ANSWERS_UPLOADED_LATE, 0.0)

    gen = job.generator
    gen.set_answers({PROMPT: "something else"})  # type: ignore[attr-defined]
    assert tuple(gen.verify("", 1.0)) == (False, ANSWERS_MISMATCH, 0.0)


def test_lateness_needs_both_times() -> None:
    now = datetime.now(UTC)
    assert uploaded_late(now + LATE_UPLOAD_TOLERANCE + timedelta(seconds=1), now)
    assert not uploaded_late(now + LATE_UPLOAD_TOLERANCE, now)
    assert not uploaded_late(None, now)  # no Last-Modified: nothing proves the file late
    assert not uploaded_late(now, None)
