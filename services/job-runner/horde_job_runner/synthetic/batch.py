"""`run_shard`: one shard of a synthetic job batch, end to end (docs/miner-protocol.md §3.2–§3.12).

Stages, each recorded as a CHECKPOINT event (names follow the reference's):

1. `_db_get_previous_online_executor_count`: previous batch's online counts (for §3.15), the
   batch uuid and the dynamic values.
2. `_multi_get_miner_manifest`: connect + authenticate + first manifest per miner, all at once,
   35 s each. As soon as one miner's manifest is in, its jobs start being generated in a worker
   process, so generation overlaps the manifest wait instead of following it.
3. `_get_total_executor_count`: capped counts; LLM executors get no jobs (INSUFFICIENT_PROMPTS).
4. `_generate_jobs`: collect the generated jobs, register them with the sessions, shuffle.
5. `_multi_send_initial_job_request`: stagger (`accept_deadline − spin-up(class)`), signed JobStarted
   receipts, accept → JobAccepted receipt → ready/failed within each job's window.
6. `_report_ready` / `_wait_for_release`: `batch.shard.ready`, then `batch.released` (or the
   release deadline; with no scheduler, at once). Job requests are serialised before the wait.
7. `_multi_send_job_request`: every ready job's `V0JobRequest`, one writer per miner, back to back
   with a yield to the loop every few milliseconds; then wait `timeout + 120` for the answers.
8. `_score_jobs`, `_send_job_finished_receipts`, `_multi_close_client`, `_db_persist`.

Timing rules (docs/performance.md lessons 1 and 4): every window is measured on the validator's
monotonic clock from the moment *we* actually sent the request, never from a planned moment; an
event-loop monitor records our own stalls, and a job that failed on time alone during such a stall
is excluded from scoring (with a VALIDATOR_FAILURE event) instead of being blamed on the miner.
Any other validator-side failure (a bug, a crash of one miner's reader, a stage that raised) is a
VALIDATOR_FAILURE too: the affected jobs are stored with `excluded_from_scoring = true`, never as
miner failures. Whatever happens, links are closed and everything is persisted in one transaction.

Where each part lives (this module only puts them together):

* `shard_state`: the fields of a run and the helpers every phase shares (events, checkpoints,
  exclusions, the send pacer); `link_events`: what the links report (manifest, accept, ready, final).
* `manifests`: connect, manifests and job collection (stages 2–4).
* `spin_up`: the staggered initial requests and the spin-up wait (stage 5).
* `release`: ready report, release wait and the job requests with their answers (stages 6–7).
* `finish`: scoring and the JobFinished receipts (stage 8); `records`: the rows, telemetry, persist.
* `message_ids`: the ids of the ready/completed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from datetime import timedelta

from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS
from horde_job_runner.synthetic.finish import FinishPhase
from horde_job_runner.synthetic.manifests import ManifestPhase
from horde_job_runner.synthetic.message_ids import completed_message_id, ready_message_id
from horde_job_runner.synthetic.model import BatchDeps, ShardRequest, ShardResult
from horde_job_runner.synthetic.records import ShardRecords
from horde_job_runner.synthetic.release import ReleasePhase
from horde_job_runner.synthetic.shard_state import S, T
from horde_job_runner.synthetic.spin_up import SpinUpPhase

__all__ = ["completed_message_id", "ready_message_id", "run_shard"]

log = logging.getLogger(__name__)

INSUFFICIENT_PROMPTS_EVERY_S = 24 * 3600.0


class ValidatorStageError(RuntimeError):
    """Raised by a stage that cannot go on for a reason of ours."""


async def run_shard(request: ShardRequest, deps: BatchDeps) -> ShardResult:
    """Run one shard of a batch and persist it; see the module docstring.

    Returns a `ShardResult` (never raises for miner behaviour or for a validator failure inside the
    batch: those are recorded). `result.persisted` is False only when every persistence attempt
    failed; the caller decides what to do then (the bus handler lets the message be redelivered).
    """
    return await _ShardRun(request, deps).run()


class _ShardRun(ManifestPhase, SpinUpPhase, ReleasePhase, FinishPhase, ShardRecords):
    """One shard run: the phases' mixins over one `ShardState`, driven stage by stage."""

    async def run(self) -> ShardResult:
        self.monitor.start()
        ticker = self._spawn(self._progress_ticker()) if self.deps.progress is not None else None
        try:
            try:
                await self._stages()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._shard_failure(exc)
            await self._publish_ready_if_needed()
            await self._stage("_multi_close_client", hook=False)
            await self._close_all()
            await self._stage("_db_persist", hook=False)
            # Stored with the rows: the reference wrote BATCH_END after them, in a transaction of its own.
            self._event(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, "BATCH_END", stage="BATCH_END")
            await self._persist()
            self.result.stats["finished_mono"] = self.clock.monotonic()
        except asyncio.CancelledError:
            await asyncio.shield(self._close_all())
            raise
        finally:
            if ticker is not None:
                ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            for task in self.gen_tasks.values():
                task.cancel()
            await self.monitor.stop()
        self.result.jobs = [self._job_result(j) for j in self.jobs]
        self.result.stats["stage_mono"] = dict(self.stage_mono)
        self.result.stats["loop"] = self.monitor.profile()
        origin = self.stage_mono.get("_multi_get_miner_manifest", self._start_mono)
        stalls = [(a, b, c) for (a, b), c in zip(self.monitor.stalls, self.monitor.stall_cpu, strict=False)]
        longest = sorted(stalls, key=lambda sbc: sbc[0] - sbc[1])[:5]
        self.result.stats["longest_stalls"] = [
            {"at": round(a - origin, 3), "s": round(b - a, 3), "cpu_s": round(c, 3)} for a, b, c in longest
        ]
        self.result.stats["pacer_yields"] = self.pacer.yields
        self.result.stats["messages"] = dict(self.message_counts)
        return self.result

    async def _progress_ticker(self) -> None:
        progress = self.deps.progress
        assert progress is not None
        while True:
            await asyncio.sleep(0.25)
            with contextlib.suppress(Exception):
                progress.counts(self._progress_counts())

    def _shard_failure(self, exc: BaseException) -> None:
        log.error(
            "synthetic shard %s/%s failed", self.request.batch_id, self.request.shard_index, exc_info=exc
        )
        self.aborted = True
        self.result.ok = False
        self.result.error = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))[-4000:]
        self._event(
            T.VALIDATOR_FAILURE,
            S.GENERIC_ERROR,
            f"synthetic shard failed: {type(exc).__name__}: {exc}",
            traceback=tb,
            shard_index=self.request.shard_index,
        )
        if not self.scored:
            for job in self.jobs:
                self._exclude_job(job, f"shard failed: {type(exc).__name__}: {exc}", "shard", event=False)

    async def _stages(self) -> None:
        request, deps = self.request, self.deps
        self._event(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, "BATCH_BEGIN", stage="BATCH_BEGIN")
        await self._stage("_db_get_previous_online_executor_count")
        hotkeys = [m.hotkey for m in request.miners]
        if deps.store is not None:
            store = deps.store
            async with asyncio.timeout(self.t.db):
                batch_uuid = await store.batch_uuid(request.batch_id)
                if batch_uuid is None:
                    raise ValidatorStageError(f"batch {request.batch_id} does not exist")
                self.batch_uuid = str(batch_uuid)
                for e in self.events:  # the begin events were recorded before we knew the uuid
                    if isinstance(e.data, dict):
                        e.data["batch_uuid"] = self.batch_uuid
                self.previous_online = await store.previous_online_counts(request.batch_id, hotkeys)
                if deps.dynamic is None:
                    self.dynamic = await store.dynamic_values()
                self.insufficient_prompts_recently = await store.recent_event_exists(
                    str(T.VALIDATOR_TELEMETRY),
                    str(S.INSUFFICIENT_PROMPTS),
                    timedelta(seconds=INSUFFICIENT_PROMPTS_EVERY_S),
                )
        if not request.miners:
            return

        self._open_links()

        await self._stage("_multi_get_miner_manifest")
        await self._manifests()

        await self._stage("_get_total_executor_count")
        llm = sum(c.get(LLM_EXECUTOR_CLASS, 0) for c in self.counts.values())
        if llm:
            await self._insufficient_prompts(llm)
        total = sum(n for c in self.counts.values() for cls, n in c.items() if cls != LLM_EXECUTOR_CLASS)
        if total == 0:
            log.info("batch %s shard %s: no executors available", request.batch_id, request.shard_index)
            return

        await self._stage("_generate_jobs")
        await self._collect_jobs()
        if not self.jobs:
            return

        await self._stage("_multi_send_initial_job_request")
        await self._spin_up()

        await self._stage("_report_ready")
        ready = await self._prepare_job_requests()
        await self._publish_ready(ready)

        if ready:
            await self._stage("_wait_for_release")
            await self._wait_for_release()
            await self._stage("_multi_send_job_request")
            await self._job_requests(ready)

        await self._stage("_score_jobs")
        self._score()
        self.scored = True

        await self._stage("_send_job_finished_receipts")
        await self._finished_receipts()

    async def _close_all(self) -> None:
        if self.links:
            await asyncio.gather(*(link.close(self.t.close) for link in self.links), return_exceptions=True)
