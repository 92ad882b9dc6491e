"""`ShardRecords`: what a finished shard stores, and storing it (stage `_db_persist`, §3.12).

Job rows, the three kinds of receipts, the manifests with their online counts, the shard's system
events plus its telemetry (one `SYNTHETIC_BATCH` event, one `SYNTHETIC_JOB` per job), all in one
transaction; a failed attempt is retried with back-off and recorded as our own failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from typing import Any

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_common.telemetry import SystemEventRecord
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.model import JobResult, JobState
from horde_job_runner.synthetic.persistence import ShardRows
from horde_job_runner.synthetic.shard_state import S, ShardState, T

__all__ = ["ShardRecords"]

log = logging.getLogger(__name__)


class ShardRecords(ShardState):
    """Rows, telemetry and persistence of a shard run."""

    def _rows(self) -> ShardRows:
        request = self.request
        rows = ShardRows(batch_id=request.batch_id, accepting_results_until=self.accepting_results_until)
        online: dict[str, Counter[str]] = getattr(self, "online", {})
        ip_versions: dict[str, int] = {}  # parsing an address costs ~20 µs: once per miner, not per job
        for job in self.jobs:
            link = self.link_by_hotkey[job.miner_hotkey]
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
        for hotkey, counts in self.counts.items():
            for executor_class, count in counts.items():
                rows.manifests.append(
                    {
                        "batch_id": request.batch_id,
                        "miner_hotkey": hotkey,
                        "executor_class": str(executor_class),
                        "executor_count": count,
                        "online_executor_count": online.get(hotkey, Counter())[str(executor_class)],
                    }
                )
        rows.events = [*self.events, *self._telemetry_events()]
        return rows

    def _telemetry_events(self) -> list[SystemEventRecord]:
        """`VALIDATOR_TELEMETRY/SYNTHETIC_BATCH` (one) and `/SYNTHETIC_JOB` (one per job), §3.12 step 4."""
        now = self.clock.now()
        base = {"batch_uuid": self.batch_uuid, "batch_id": self.request.batch_id}
        per_class: dict[str, Counter[str]] = {}
        for job in self.jobs:
            c = per_class.setdefault(str(job.executor_class), Counter())
            c["total"] += 1
            c["successful" if job.success else "failed"] += 1
            if job.correct is True:
                c["correct"] += 1
            elif job.correct is False:
                c["incorrect"] += 1
            if job.excluded:
                c["excluded"] += 1
        stats = self.result.stats
        batch_data = {
            **base,
            "validator_hotkey": self.validator_hotkey,
            "shard_index": self.request.shard_index,
            "shard_count": self.request.shard_count,
            "shard_message_id": str(self.request.message_id) if self.request.message_id else None,
            "stage_times": self.stage_times,
            "average_job_send_time": stats.get("average_job_send_time_s"),
            "job_request_send_skew": stats.get("send_skew_s"),
            "release": stats.get("release"),
            "ok": self.result.ok,
            "counts": {
                "miners": len(self.links),
                "manifests": sum(1 for link in self.links if link.manifest is not None),
                "messages": dict(self.message_counts),
                "system_events": len(self.events),
                "jobs": {k: dict(v) for k, v in per_class.items()},
            },
            "llm_counts": {
                "llm_executor_count": sum(c.get(LLM_EXECUTOR_CLASS, 0) for c in self.counts.values())
            },
            "manifests": {hk: {str(k): v for k, v in c.items()} for hk, c in self.counts.items()},
            "loop_profiling": self.monitor.profile(),
        }
        out = [SystemEventRecord(T.VALIDATOR_TELEMETRY, S.SYNTHETIC_BATCH, "", batch_data, now)]
        origin = self._start_mono

        def rel(value: float | None) -> float | None:
            return None if value is None else round(value - origin, 6)

        for job in self.jobs:
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

    async def _persist(self) -> None:
        store = self.deps.store
        if store is None:
            return
        if not self.request.miners:
            return  # §3.2: no miners, nothing stored
        rows = self._rows()
        attempts = max(1, self.t.persist_attempts)
        for attempt in range(1, attempts + 1):
            try:
                t0 = time.perf_counter()
                async with asyncio.timeout(self.t.db):
                    await store.persist(rows, fast=attempt == 1)
                self.result.stats["persist_s"] = time.perf_counter() - t0
                self.result.persisted = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "persisting shard %s (attempt %d/%d) failed: %s",
                    self.request.batch_id,
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
                        {
                            "batch_uuid": self.batch_uuid,
                            "batch_id": self.request.batch_id,
                            "stage": "_db_persist",
                        },
                        self.clock.now(),
                    )
                )
                self.result.stats["persist_failures"] = attempt
                if attempt < attempts:
                    await self.deps.sleep(self.t.persist_backoff * 2 ** (attempt - 1))
                else:
                    self.result.ok = False
                    self.result.error = f"persist: {type(exc).__name__}: {exc}"

    def _job_result(self, job: JobState) -> JobResult:
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
