"""Download the LLM jobs' answers before scoring (docs/synthetic-batch.md, "LLM jobs";
docs/miner-protocol.md §3.9).

After the answers wait, every LLM job that reported `V0JobFinishedRequest` has uploaded its answers
file `solved/{file_uuid}.json` through its presigned PUT; `fetch_llm_answers` reads them all back
through their public URLs at once, each bounded in time and size (`horde_common.s3.download_bytes`),
and hands each generator its answers, which `verify` then checks against the trusted ones.

Who is to blame for a download that failed (docs/synthetic-batch.md §5):

* the miner, when S3 answered but the file is not usable: missing (404, or 403, which is what S3
  answers an anonymous reader for a missing key), larger than `MAX_ANSWERS_BYTES`, or not a JSON
  object of strings. The job keeps no answers and fails verification ("result does not contain
  all answers"), as in the reference;
* the validator, when S3 could not be asked: unreachable, too slow, a 5xx or another status that
  says the request (ours) was wrong. The job is excluded from scoring.

A file written after the miner reported the job finished does not count (`uploaded_late`): the
time limit is measured to the finished message, so a miner that reported early and uploaded later
would otherwise gain time. Its `Last-Modified` (S3's clock, to the second) is compared with when we
received `V0JobFinishedRequest` (`JobState.final_at`, ours), allowing `LATE_UPLOAD_TOLERANCE` for
the two clocks and the header's resolution. A late file fails the job (`ANSWERS_UPLOADED_LATE`),
the miner's fault.

Either way a `VALIDATOR_TELEMETRY/ERROR_DOWNLOADING_FROM_S3` event names the miner, the job and
the fault.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from horde_common.crossval import AnswersFormatError, parse_answers
from horde_common.s3 import S3DownloadError, S3Error, S3ObjectTooLarge, S3Timeout, download_object
from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.generators import LlmPromptsJobGenerator

if TYPE_CHECKING:
    from horde_job_runner.synthetic.ledger import JobLedger
    from horde_job_runner.synthetic.model import JobState
    from horde_job_runner.synthetic.shard_services import EventLog

__all__ = [
    "ANSWERS_DOWNLOAD_TIMEOUT_S",
    "ANSWERS_UPLOADED_LATE",
    "LATE_UPLOAD_TOLERANCE",
    "MAX_ANSWERS_BYTES",
    "STAGE",
    "Fault",
    "LlmAnswersOutcome",
    "answers_to_fetch",
    "download_fault",
    "download_phase",
    "fetch_llm_answers",
    "uploaded_late",
]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

STAGE = "_download_llm_prompts_answers"
# The reference's answers download timeout (docs/miner-protocol.md §3.1): S3 serves a file of a few
# hundred KB well within it; slower means S3 (or our network) is in trouble.
ANSWERS_DOWNLOAD_TIMEOUT_S: Final = 5.0
# An honest answers file holds the series' ~240 prompts with answers of at most 256 tokens: a few
# hundred KB, ~1.5 MB with every character JSON-escaped. 4 MiB refuses anything a solver cannot
# have written while never cutting an honest one.
MAX_ANSWERS_BYTES: Final = 4 * 1024 * 1024
# Downloads in flight at once: each holds a socket and its body. 64 keeps a batch of 1,280 LLM jobs
# (256 miners x 5) within ~20 rounds of at most 5 s, far below file-descriptor limits.
MAX_CONCURRENT_DOWNLOADS: Final = 64
# Bodies above this are parsed in a worker thread: a 4 MiB JSON takes tens of ms to decode.
PARSE_IN_THREAD_BYTES: Final = 64 * 1024
# Statuses that say the object is not there for anonymous readers: the miner did not upload it.
MISSING_OBJECT_STATUSES: Final = frozenset({403, 404})
# How far S3's clock (`Last-Modified`) may run ahead of ours (`final_at`) on NTP-synced hosts, with
# a wide margin: they agree within well under a second.
CLOCK_SKEW_TOLERANCE_S: Final = 2.0
# `Last-Modified` is given to the second; allow one whole second for its rounding.
LAST_MODIFIED_RESOLUTION_S: Final = 1.0
# A file modified later than this after we received the finished message was uploaded after it.
# The most a miner can gain by finishing early is this, a few seconds of a 48 s limit.
LATE_UPLOAD_TOLERANCE: Final = timedelta(seconds=CLOCK_SKEW_TOLERANCE_S + LAST_MODIFIED_RESOLUTION_S)
# The failed job's comment.
ANSWERS_UPLOADED_LATE: Final = "answers uploaded after the job reported finished"


class Fault(StrEnum):
    """Whose fault a failed answers download is."""

    MINER = "miner"
    VALIDATOR = "validator"


def download_fault(exc: BaseException) -> Fault:
    """The miner's when S3 answered about the miner's file, ours when S3 could not be asked."""
    if isinstance(exc, AnswersFormatError | S3ObjectTooLarge):
        return Fault.MINER
    if isinstance(exc, S3Timeout):
        return Fault.VALIDATOR
    if isinstance(exc, S3DownloadError) and exc.status in MISSING_OBJECT_STATUSES:
        return Fault.MINER
    return Fault.VALIDATOR


@dataclass
class LlmAnswersOutcome:
    """How the downloads went (the shard's stats)."""

    fetched: int = 0
    miner_failures: int = 0
    late_uploads: int = 0  # among the miner failures
    validator_failures: int = 0
    seconds: float = 0.0

    def stats(self) -> dict[str, float | int]:
        return {
            "llm_answers_fetched": self.fetched,
            "llm_answers_miner_failures": self.miner_failures,
            "llm_answers_late_uploads": self.late_uploads,
            "llm_answers_validator_failures": self.validator_failures,
            "llm_answers_s": round(self.seconds, 3),
        }


def answers_to_fetch(jobs: Sequence[JobState]) -> list[JobState]:
    """The LLM jobs whose answers count: finished after their job request, and not excluded."""
    return [
        job
        for job in jobs
        if isinstance(job.generator, LlmPromptsJobGenerator)
        and job.generator.sample.answers_url is not None
        and job.final_kind == "finished"
        and not job.final_before_job_request
        and not job.excluded
    ]


def uploaded_late(
    last_modified: datetime | None,
    finished_at: datetime | None,
    tolerance: timedelta = LATE_UPLOAD_TOLERANCE,
) -> bool:
    """Was the answers file written after the miner reported the job finished? Only when both
    times are known: a server without `Last-Modified` (S3 always sends it) proves nothing."""
    if last_modified is None or finished_at is None:
        return False
    return last_modified > finished_at + tolerance


async def fetch_llm_answers(
    jobs: Sequence[JobState],
    *,
    events: EventLog,
    ledger: JobLedger,
    timeout_s: float = ANSWERS_DOWNLOAD_TIMEOUT_S,
    max_bytes: int = MAX_ANSWERS_BYTES,
    concurrency: int = MAX_CONCURRENT_DOWNLOADS,
) -> LlmAnswersOutcome:
    """Download and parse the answers of every LLM job that finished, all at once (at most
    `concurrency` in flight), each within `timeout_s` and `max_bytes`; see the module docstring for
    what a failure means. Never raises for a download: everything is recorded."""
    todo = answers_to_fetch(jobs)
    outcome = LlmAnswersOutcome()
    if not todo:
        return outcome
    started = time.monotonic()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(job: JobState) -> None:
        gen = job.generator
        assert isinstance(gen, LlmPromptsJobGenerator) and gen.sample.answers_url is not None
        try:
            async with gate:
                got = await download_object(gen.sample.answers_url, max_bytes=max_bytes, timeout_s=timeout_s)
            if uploaded_late(got.last_modified, job.final_at):
                _late(job, got.last_modified, outcome, events=events)
                return
            body = got.body
            if len(body) > PARSE_IN_THREAD_BYTES:
                answers = await asyncio.to_thread(parse_answers, body)
            else:
                answers = parse_answers(body)
        except asyncio.CancelledError:
            raise
        except (S3Error, AnswersFormatError) as exc:
            _failed(job, exc, download_fault(exc), outcome, events=events, ledger=ledger)
            return
        except Exception as exc:  # not a download failure: a bug of ours
            log.exception("answers of LLM job %s", job.job_uuid)
            _failed(job, exc, Fault.VALIDATOR, outcome, events=events, ledger=ledger)
            return
        gen.set_answers(answers)
        outcome.fetched += 1

    await asyncio.gather(*(one(job) for job in todo))
    outcome.seconds = time.monotonic() - started
    return outcome


async def download_phase(
    jobs: Sequence[JobState], events: EventLog, ledger: JobLedger
) -> dict[str, float | int]:
    """`fetch_llm_answers` with the production bounds, for the shard; returns its stats entries."""
    return (await fetch_llm_answers(jobs, events=events, ledger=ledger)).stats()


def _late(
    job: JobState, last_modified: datetime | None, outcome: LlmAnswersOutcome, *, events: EventLog
) -> None:
    """The file was written after the finished message: the job fails, the miner's fault."""
    gen = job.generator
    assert isinstance(gen, LlmPromptsJobGenerator)
    gen.reject_answers(ANSWERS_UPLOADED_LATE)
    outcome.miner_failures += 1
    outcome.late_uploads += 1
    events.record(
        T.VALIDATOR_TELEMETRY,
        S.ERROR_DOWNLOADING_FROM_S3,
        f"answers of LLM job {job.job_uuid}: {ANSWERS_UPLOADED_LATE}",
        miner_hotkey=job.miner_hotkey,
        job_uuid=job.job_uuid,
        fault=str(Fault.MINER),
        reason="uploaded_late",
        last_modified=last_modified.isoformat() if last_modified is not None else None,
        finished_at=job.final_at.isoformat() if job.final_at is not None else None,
        tolerance_s=LATE_UPLOAD_TOLERANCE.total_seconds(),
    )


def _failed(
    job: JobState,
    exc: BaseException,
    fault: Fault,
    outcome: LlmAnswersOutcome,
    *,
    events: EventLog,
    ledger: JobLedger,
) -> None:
    """Record a failed download; ours excludes the job, the miner's leaves it without answers."""
    gen = job.generator
    assert isinstance(gen, LlmPromptsJobGenerator)
    gen.set_answers(None)
    reason = f"{type(exc).__name__}: {exc}"  # S3 errors carry no secret (docs/crossval.md §4.3)
    events.record(
        T.VALIDATOR_TELEMETRY,
        S.ERROR_DOWNLOADING_FROM_S3,
        f"answers of LLM job {job.job_uuid}: {reason}",
        miner_hotkey=job.miner_hotkey,
        job_uuid=job.job_uuid,
        fault=str(fault),
        status=getattr(exc, "status", None),
    )
    if fault is Fault.MINER:
        outcome.miner_failures += 1
        return
    outcome.validator_failures += 1
    ledger.exclude_job(job, f"answers could not be downloaded: {reason}", STAGE)
