"""What a finished shard stores, and storing it (docs/synthetic-batch.md §1 stage `_db_persist`, §7).

Job rows, the three kinds of receipts, the manifests with their online counts, the shard's system
events plus its telemetry (one `SYNTHETIC_BATCH` event, one `SYNTHETIC_JOB` per job), all in one
transaction (`build_rows`, then `persist`); a failed attempt is retried with back-off and recorded
as our own failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from horde_common.db.models.enums import JobStatus
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS, ExecutorClass
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.model import JobResult
from horde_job_runner.synthetic.shard_rows import ShardRows

if TYPE_CHECKING:
    from horde_job_runner.synthetic.model import BatchTimeouts, Clock, JobState, ShardRequest, ShardStore
    from horde_job_runner.synthetic.scoring import Scores
    from horde_job_runner.synthetic.shard_links import Links
    from horde_job_runner.synthetic.shard_services import EventLog
    from horde_job_runner.synthetic.transport import Sleep

__all__ = ["PersistOutcome", "ShardFacts", "build_rows", "job_result", "persist"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype


@dataclass(frozen=True)
class ShardFacts:
    """The shard-level facts the `SYNTHETIC_BATCH` telemetry event reports, as they stand when the
    rows are built (after the BATCH_END checkpoint)."""

    validator_hotkey: str
    ok: bool
    stage_times: Mapping[str, str]
    stats: Mapping[str, Any]
    messages: Mapping[str, int]
    loop_profile: Mapping[str, float | int]
    start_mono: float  # the origin of each job's telemetry times


@dataclass(frozen=True)
class PersistOutcome:
    """`persisted`: some attempt succeeded (`seconds` it took); `failures`: attempts that failed;
    `error`: the last failure, when every attempt failed."""

    persisted: bool
    seconds: float | None = None
    failures: int = 0
    error: str | None = None


def build_rows(
    request: ShardRequest,
    jobs: Sequence[JobState],
    links: Links,
    *,
    counts: Mapping[str, Mapping[ExecutorClass, int]],
    scores: Scores | None,
    events: EventLog,
    accepting_results_until: datetime | None,
    facts: ShardFacts,
    clock: Clock,
) -> ShardRows:
    """Every row of the shard: jobs, receipts, manifests (`scores` None: scoring never ran, no
    executor counts as online), the events so far and the telemetry."""
    rows = ShardRows(batch_id=request.batch_id, accepting_results_until=accepting_results_until)
    ip_versions: dict[str, int] = {}  # parsing an address costs ~20 µs: once per miner, not per job
    for job in jobs:
        link = links[job.miner_hotkey]
        ip_version = ip_versions.get(job.miner_hotkey)
        if ip_version is None:
            ip_version = ip_versions[job.miner_hotkey] = link.ip_version
        rows.jobs.append(
            {
                "job_uuid": uuid.UUID(job.job_uuid),
                "batch_id": request.batch_id,
                "miner_hotkey": job.miner_hotkey,
                "miner_address": link.address,
                "miner_address_ip_version": ip_version,
                "miner_port": link.port,
                "executor_class": str(job.executor_class),
                "status": job.status,
                "score": job.score,
                "score_manifest_multiplier": job.multiplier,
                "comment": job.comment,
                "job_description": job.generator.job_description(),
                "time_took_us": int(job.time_took * 1_000_000) if job.time_took is not None else None,
                "excluded_from_scoring": job.excluded,
            }
        )
        if job.started_receipt is not None:
            rows.started_receipts.append(rc.started_row(*job.started_receipt))
        if job.accepted_receipt is not None:
            rows.accepted_receipts.append(rc.accepted_row(*job.accepted_receipt))
        if job.finished_receipt is not None:
            rows.finished_receipts.append(rc.finished_row(*job.finished_receipt))
    for hotkey, miner_counts in counts.items():
        for executor_class, count in miner_counts.items():
            rows.manifests.append(
                {
                    "batch_id": request.batch_id,
                    "miner_hotkey": hotkey,
                    "executor_class": str(executor_class),
                    "executor_count": count,
                    "online_executor_count": scores.online_count(hotkey, str(executor_class))
                    if scores is not None
                    else 0,
                }
            )
    telemetry = _telemetry_events(
        request, jobs, links, counts=counts, events=events, facts=facts, clock=clock
    )
    rows.events = [*events.records, *telemetry]
    return rows


def _telemetry_events(
    request: ShardRequest,
    jobs: Sequence[JobState],
    links: Links,
    *,
    counts: Mapping[str, Mapping[ExecutorClass, int]],
    events: EventLog,
    facts: ShardFacts,
    clock: Clock,
) -> list[SystemEventRecord]:
    """`VALIDATOR_TELEMETRY/SYNTHETIC_BATCH` (one) and `/SYNTHETIC_JOB` (one per job),
    docs/miner-protocol.md §3.12."""
    now = clock.now()
    base = {"batch_uuid": events.batch_uuid, "batch_id": request.batch_id}
    per_class: dict[str, Counter[str]] = {}
    for job in jobs:
        c = per_class.setdefault(str(job.executor_class), Counter())
        c["total"] += 1
        if job.status == JobStatus.EXCUSED:
            c["excused"] += 1  # declined while busy with our organic job (docs/synthetic-batch.md §9)
        else:
            c["successful" if job.success else "failed"] += 1
        if job.correct is True:
            c["correct"] += 1
        elif job.correct is False:
            c["incorrect"] += 1
        if job.excluded:
            c["excluded"] += 1
    stats = facts.stats
    batch_data = {
        **base,
        "validator_hotkey": facts.validator_hotkey,
        "shard_index": request.shard_index,
        "shard_count": request.shard_count,
        "shard_message_id": str(request.message_id) if request.message_id else None,
        "stage_times": dict(facts.stage_times),
        "average_job_send_time": stats.get("average_job_send_time_s"),
        "job_request_send_skew": stats.get("send_skew_s"),
        "release": stats.get("release"),
        "ok": facts.ok,
        "counts": {
            "miners": len(links),
            "manifests": links.manifest_count,
            "messages": dict(facts.messages),
            "system_events": len(events),
            "jobs": {k: dict(v) for k, v in per_class.items()},
        },
        "llm_counts": {"llm_executor_count": sum(c.get(LLM_EXECUTOR_CLASS, 0) for c in counts.values())},
        "manifests": {hk: {str(k): v for k, v in c.items()} for hk, c in counts.items()},
        "loop_profiling": dict(facts.loop_profile),
    }
    out = [SystemEventRecord(T.VALIDATOR_TELEMETRY, S.SYNTHETIC_BATCH, "", batch_data, now)]
    origin = facts.start_mono

    def rel(value: float | None) -> float | None:
        return None if value is None else round(value - origin, 6)

    for job in jobs:
        out.append(
            SystemEventRecord(
                T.VALIDATOR_TELEMETRY,
                S.SYNTHETIC_JOB,
                "",
                {
                    **base,
                    "job_uuid": job.job_uuid,
                    "miner_hotkey": job.miner_hotkey,
                    "executor_class": str(job.executor_class),
                    "times": {
                        "initial_sent": rel(job.initial_sent_mono),
                        "accept": rel(job.accept_mono),
                        "executor": rel(job.executor_mono),
                        "job_before_sent": rel(job.job_before_sent_mono),
                        "job_after_sent": rel(job.job_after_sent_mono),
                        "final": rel(job.final_mono),
                    },
                    "responses": {
                        "accept": "accepted" if job.accepted else "declined" if job.declined else None,
                        "executor": "ready"
                        if job.executor_ready
                        else "failed"
                        if job.executor_failed
                        else None,
                        "final": job.final_kind,
                        "stdout": job.stdout[:300] if job.stdout else None,
                        "stderr": job.stderr[:300] if job.stderr else None,
                        "exit_status": job.exit_status,
                    },
                    "machine_specs": _specs_json(job.machine_specs),
                    "time_took": job.time_took,
                    "success": job.success,
                    "correct": job.correct,
                    "comment": job.comment,
                    "score": job.score,
                    "score_manifest_multiplier": job.multiplier,
                    "excluded_from_scoring": job.excluded,
                    "exception": job.exception,
                    "exception_stage": job.exception_stage,
                },
                now,
            )
        )
    return out


async def persist(
    store: ShardStore,
    rows: ShardRows,
    *,
    request: ShardRequest,
    events: EventLog,
    timeouts: BatchTimeouts,
    clock: Clock,
    sleep: Sleep,
) -> PersistOutcome:
    """Write `rows` in one transaction, within `timeouts.db` per attempt, up to
    `timeouts.persist_attempts` attempts with exponential back-off. Each failed attempt is our
    VALIDATOR_FAILURE event, added to `rows` (stored once a later attempt succeeds)."""
    attempts = max(1, timeouts.persist_attempts)
    failures = 0
    for attempt in range(1, attempts + 1):
        try:
            t0 = time.perf_counter()
            async with asyncio.timeout(timeouts.db):
                await store.persist(rows, fast=attempt == 1)
            return PersistOutcome(persisted=True, seconds=time.perf_counter() - t0, failures=failures)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "persisting shard %s (attempt %d/%d) failed: %s",
                request.batch_id,
                attempt,
                attempts,
                exc,
            )
            # Our failure: stored with the rows once a retry succeeds, so it is visible later.
            rows.events.append(
                SystemEventRecord(
                    T.VALIDATOR_FAILURE,
                    S.GENERIC_ERROR,
                    f"persisting the shard failed (attempt {attempt}/{attempts}): {type(exc).__name__}: {exc}",
                    {"batch_uuid": events.batch_uuid, "batch_id": request.batch_id, "stage": "_db_persist"},
                    clock.now(),
                )
            )
            failures = attempt
            if attempt < attempts:
                await sleep(timeouts.persist_backoff * 2 ** (attempt - 1))
            else:
                return PersistOutcome(
                    persisted=False, failures=failures, error=f"persist: {type(exc).__name__}: {exc}"
                )
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def job_result(job: JobState) -> JobResult:
    """The job as the debug command prints it."""
    return JobResult(
        job_uuid=job.job_uuid,
        miner_hotkey=job.miner_hotkey,
        executor_class=str(job.executor_class),
        status=job.status,
        score=job.score,
        comment=job.comment,
        excluded_from_scoring=job.excluded,
        time_took=job.time_took,
    )


def _specs_json(specs: Any) -> Any:
    if specs is None:
        return None
    dump = getattr(specs, "model_dump", None)
    return dump(mode="json") if dump is not None else specs
