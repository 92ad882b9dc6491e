"""`run_shard`: one shard of a synthetic job batch, end to end (docs/synthetic-batch.md).

This module is the only one that knows the order of the phases; read `_Shard.stages` from top to
bottom to follow a shard. Each phase is a function with typed inputs and a typed result, in the
module named on its right (docs/synthetic-batch.md §1):

    read_batch_start -> BatchStart          (batch_start)
    open_links -> Links                     (shard_links)
    collect_manifests -> ManifestOutcome    (manifests)
    collect_jobs -> list[JobState]          (manifests)
    spin_up -> SpinUpOutcome                (spin_up)
    prepare_job_requests / publish_ready / wait_for_release / release_and_run -> ReleaseOutcome
                                            (release)
    score -> Scores, send_finished_receipts (finish)
    build_rows -> ShardRows, persist -> PersistOutcome   (records)

The services a shard shares are created here and passed by name to the phases that need them
(docs/synthetic-batch.md §2): `Signer`, `EventLog`, `Checkpoints`, `SendPacer` (`shard_services`),
`JobLedger` (`ledger`: pending sets and exclusions), `LoopMonitor` (`loopmon`), the message counter;
the links report to a `link_events.ShardListener`.

Timing rules (docs/performance.md lessons 1 and 4; docs/synthetic-batch.md §4): every window is
measured on the validator's monotonic clock from the moment *we* actually sent the request; a job
that failed on time alone during a stall of our event loop is excluded from scoring. Any
validator-side failure is a VALIDATOR_FAILURE with the affected jobs excluded from scoring, never a
miner failure (docs/synthetic-batch.md §5). Whatever happens, links are closed and everything is
persisted in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections import Counter
from datetime import datetime

from horde_common.telemetry import SystemEventSubtype, SystemEventType
from horde_job_runner.synthetic import llm_answers, llm_samples
from horde_job_runner.synthetic.batch_start import BatchStart, read_batch_start
from horde_job_runner.synthetic.excuses import excuse_busy_declines
from horde_job_runner.synthetic.finish import score, send_finished_receipts
from horde_job_runner.synthetic.ledger import JobLedger
from horde_job_runner.synthetic.link_events import ManifestIntake, ShardListener
from horde_job_runner.synthetic.loopmon import LoopMonitor
from horde_job_runner.synthetic.manifests import (
    ManifestOutcome,
    collect_jobs,
    collect_manifests,
)
from horde_job_runner.synthetic.message_ids import completed_message_id, ready_message_id
from horde_job_runner.synthetic.model import BatchDeps, DynamicValues, JobState, ShardRequest, ShardResult
from horde_job_runner.synthetic.records import ShardFacts, build_rows, job_result, persist
from horde_job_runner.synthetic.release import (
    prepare_job_requests,
    publish_ready,
    release_and_run,
    wait_for_release,
)
from horde_job_runner.synthetic.scoring import Scores
from horde_job_runner.synthetic.shard_links import Links, close_links, open_links
from horde_job_runner.synthetic.shard_services import Checkpoints, EventLog, SendPacer, Signer
from horde_job_runner.synthetic.spin_up import spin_up

__all__ = ["completed_message_id", "ready_message_id", "run_shard"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

# How often the debug command's live display gets fresh counts: often enough to look live, rarely
# enough to cost nothing next to the batch.
PROGRESS_EVERY_S = 0.25
# How many of the loop's longest stalls the result's stats list (the bench prints them).
LONGEST_STALLS = 5


async def run_shard(request: ShardRequest, deps: BatchDeps) -> ShardResult:
    """Run one shard of a batch and persist it; see the module docstring.

    Returns a `ShardResult` (never raises for miner behaviour or for a validator failure inside the
    batch: those are recorded). `result.persisted` is False only when every persistence attempt
    failed; the caller decides what to do then (the bus handler lets the message be redelivered).
    """
    return await _Shard(request, deps).run()


class _Shard:
    """One shard run: its shared services, what each phase has produced so far, and their order.

    The phase outcomes start empty and are filled in as the phases return, so that whatever stage
    a shard fails at, what was done is closed, judged as a validator failure and persisted.
    """

    def __init__(self, request: ShardRequest, deps: BatchDeps) -> None:
        self.request = request
        self.deps = deps
        self.t = deps.timeouts
        self.clock = deps.clock
        self.result = ShardResult(batch_id=request.batch_id, shard_index=request.shard_index)
        # The shared services: each goes, by name, only to the phases that use it.
        self.signer = Signer.from_keypair(deps.keypair)
        self.events = EventLog(request.batch_id, self.clock)
        self.checkpoints = Checkpoints(
            self.events,
            self.clock,
            progress=deps.progress,
            progress_counts=self._progress_counts,
            fault=deps.fault,
        )
        self.ledger = JobLedger(self.events)
        self.monitor = LoopMonitor(
            interval=self.t.loop_monitor_interval,
            threshold=self.t.loop_stall_threshold,
            monotonic=self.clock.monotonic,
        )
        self.pacer = SendPacer(self.t.send_slice)
        self.messages: Counter[str] = Counter()
        # What the phases have produced so far.
        self.start = BatchStart(dynamic=deps.dynamic or DynamicValues())
        self.intake: ManifestIntake | None = None
        self.links = Links()
        self.manifests: ManifestOutcome | None = None
        self.jobs: list[JobState] = []
        self.accepting_results_until: datetime | None = None
        self.scores: Scores | None = None
        self.ready_published = False
        self._start_mono = self.clock.monotonic()

    async def run(self) -> ShardResult:
        """The stages, then (whatever happened in them) ready report, close and persist."""
        self.monitor.start()
        ticker = asyncio.ensure_future(self._progress_ticker()) if self.deps.progress is not None else None
        try:
            try:
                await self.stages()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._shard_failure(exc)
            await self._publish_ready_if_needed()
            await self.checkpoints.stage("_multi_close_client", hook=False)
            await close_links(self.links, self.t.close)
            await self.checkpoints.stage("_db_persist", hook=False)
            # Stored with the rows: the reference wrote BATCH_END after them, in a transaction of its own.
            self.events.record(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, "BATCH_END", stage="BATCH_END")
            await self._persist()
            self.result.stats["finished_mono"] = self.clock.monotonic()
        except asyncio.CancelledError:
            await asyncio.shield(close_links(self.links, self.t.close))
            raise
        finally:
            if ticker is not None:
                ticker.cancel()
            if self.intake is not None:
                self.intake.cancel_generation()
            await self.monitor.stop()
        self._finish_result()
        return self.result

    async def stages(self) -> None:
        """The phases in order (docs/synthetic-batch.md §1); a phase that raises ends the shard."""
        request, deps, t, clock = self.request, self.deps, self.t, self.clock
        stage = self.checkpoints.stage
        self.events.record(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, "BATCH_BEGIN", stage="BATCH_BEGIN")
        await stage("_db_get_previous_online_executor_count")
        if deps.store is not None:
            self.start = await read_batch_start(
                deps.store, request, dynamic=deps.dynamic, db_timeout=t.db, events=self.events
            )
        if not request.miners:
            return

        self.intake = ManifestIntake(
            self.events,
            dynamic=self.start.dynamic,
            job_factory=deps.job_factory,
            weights_version=request.weights_version,
            difficulty=deps.difficulty,
        )
        listener = ShardListener(
            intake=self.intake,
            ledger=self.ledger,
            events=self.events,
            signer=self.signer,
            clock=clock,
            messages=self.messages,
            receipt_send_s=t.receipt_send,
        )
        self.links = open_links(list(request.miners), deps, signer=self.signer, listener=listener)

        await stage("_multi_get_miner_manifest")
        self.manifests = manifests = await collect_manifests(
            self.links, self.intake, timeouts=t, events=self.events, ledger=self.ledger
        )

        await stage("_get_total_executor_count")
        if manifests.job_executor_count + manifests.llm_executor_count == 0:
            log.info("batch %s shard %s: no executors available", request.batch_id, request.shard_index)
            return

        await stage("_generate_jobs")
        self.jobs = jobs = await collect_jobs(
            manifests, self.links, timeouts=t, events=self.events, rng=deps.rng
        )
        await llm_samples.add_llm_jobs(  # docs/synthetic-batch.md, "LLM jobs"
            jobs, manifests, self.links, request, self.start, deps.store, t, self.events, deps.rng
        )
        if not jobs:
            return

        await stage("_multi_send_initial_job_request")
        if deps.on_initial_send is not None:
            async with asyncio.timeout(t.db):
                await deps.on_initial_send()
        spun = await spin_up(
            jobs,
            self.links,
            accept_deadline=request.accept_deadline,
            timeouts=t,
            clock=clock,
            signer=self.signer,
            ledger=self.ledger,
            pacer=self.pacer,
            messages=self.messages,
        )

        await stage("_report_ready")
        ready = await prepare_job_requests(jobs, self.links, clock=clock, pacer=self.pacer)
        self.ready_published = True
        await publish_ready(deps.publish_ready, request, ready, events=self.events)

        if ready:
            await stage("_wait_for_release")
            self.result.stats["release"] = await wait_for_release(
                deps.release_waiter, request, clock=clock, timeouts=t
            )
            await stage("_multi_send_job_request")
            self.accepting_results_until = clock.now()
            released = await release_and_run(
                ready,
                self.links,
                timeouts=t,
                clock=clock,
                ledger=self.ledger,
                pacer=self.pacer,
                messages=self.messages,
                checkpoints=self.checkpoints,
            )
            self.result.stats.update(released.stats())
            if llm_answers.answers_to_fetch(jobs):
                await stage(llm_answers.STAGE)
                self.result.stats.update(await llm_answers.download_phase(jobs, self.events, self.ledger))

        await stage("_score_jobs")
        self.scores = score(
            jobs,
            self.links,
            deadline_mono=spun.deadline_mono,
            previous_online=self.start.previous_online,
            dynamic=self.start.dynamic,
            weights_version=request.weights_version,
            monitor=self.monitor,
            timeouts=t,
            clock=clock,
            events=self.events,
            ledger=self.ledger,
        )
        self.result.stats["excused"] = await excuse_busy_declines(  # docs/synthetic-batch.md §9
            jobs, deps.store, clock=clock, events=self.events, ledger=self.ledger, db_timeout=t.db
        )

        await stage("_send_job_finished_receipts")
        await send_finished_receipts(
            jobs,
            self.links,
            signer=self.signer,
            clock=clock,
            timeouts=t,
            pacer=self.pacer,
            messages=self.messages,
            events=self.events,
        )

    # ------------------------------------------------------------------ failure, ready, persist

    def _shard_failure(self, exc: BaseException) -> None:
        """A stage raised: our VALIDATOR_FAILURE, and every job not yet scored is excluded."""
        log.error(
            "synthetic shard %s/%s failed", self.request.batch_id, self.request.shard_index, exc_info=exc
        )
        self.result.ok = False
        self.result.error = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))[-4000:]
        self.events.record(
            T.VALIDATOR_FAILURE,
            S.GENERIC_ERROR,
            f"synthetic shard failed: {type(exc).__name__}: {exc}",
            traceback=tb,
            shard_index=self.request.shard_index,
        )
        if self.scores is None:
            for job in self.jobs:
                self.ledger.exclude_job(
                    job, f"shard failed: {type(exc).__name__}: {exc}", "shard", event=False
                )

    async def _publish_ready_if_needed(self) -> None:
        """A shard that ended early still tells the scheduler (0 ready) so the batch is not held up."""
        if not self.ready_published:
            self.ready_published = True
            with contextlib.suppress(Exception):
                await publish_ready(self.deps.publish_ready, self.request, [], events=self.events)

    async def _persist(self) -> None:
        store = self.deps.store
        if store is None or not self.request.miners:
            return  # no database, or no miners: nothing stored (docs/miner-protocol.md §3.2)
        facts = ShardFacts(
            validator_hotkey=self.signer.hotkey,
            ok=self.result.ok,
            stage_times=self.checkpoints.times,
            stats=self.result.stats,
            messages=self.messages,
            loop_profile=self.monitor.profile(),
            start_mono=self._start_mono,
        )
        rows = build_rows(
            self.request,
            self.jobs,
            self.links,
            counts=self.manifests.counts if self.manifests is not None else {},
            scores=self.scores,
            events=self.events,
            accepting_results_until=self.accepting_results_until,
            facts=facts,
            clock=self.clock,
        )
        rows.consumed_samples = llm_samples.llm_sample_ids(self.jobs)  # stored with the job rows
        outcome = await persist(
            store,
            rows,
            request=self.request,
            events=self.events,
            timeouts=self.t,
            clock=self.clock,
            sleep=self.deps.sleep,
        )
        if outcome.failures:
            self.result.stats["persist_failures"] = outcome.failures
        if outcome.persisted:
            self.result.stats["persist_s"] = outcome.seconds
            self.result.persisted = True
        else:
            self.result.ok = False
            self.result.error = outcome.error

    # ------------------------------------------------------------------ result and progress

    def _finish_result(self) -> None:
        """The jobs as the caller sees them, and the run's timing stats (the bench reads them)."""
        stats = self.result.stats
        self.result.jobs = [job_result(j) for j in self.jobs]
        stats["stage_mono"] = dict(self.checkpoints.mono)
        stats["loop"] = self.monitor.profile()
        origin = self.checkpoints.mono.get("_multi_get_miner_manifest", self._start_mono)
        monitor = self.monitor
        stalls = [(a, b, c) for (a, b), c in zip(monitor.stalls, monitor.stall_cpu, strict=False)]
        longest = sorted(stalls, key=lambda sbc: sbc[0] - sbc[1])[:LONGEST_STALLS]
        stats["longest_stalls"] = [
            {"at": round(a - origin, 3), "s": round(b - a, 3), "cpu_s": round(c, 3)} for a, b, c in longest
        ]
        stats["pacer_yields"] = self.pacer.yields
        stats["messages"] = dict(self.messages)

    def _progress_counts(self) -> dict[str, int]:
        jobs = self.jobs
        return {
            "miners": len(self.links),
            "manifests": self.links.manifest_count,
            "jobs": len(jobs),
            "sent": sum(1 for j in jobs if j.initial_sent_mono is not None),
            "accepted": sum(1 for j in jobs if j.accepted),
            "ready": sum(1 for j in jobs if j.executor_ready),
            "job_requests": sum(1 for j in jobs if j.job_before_sent_mono is not None),
            "answers": sum(1 for j in jobs if j.has_final),
        }

    async def _progress_ticker(self) -> None:
        progress = self.deps.progress
        assert progress is not None
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            with contextlib.suppress(Exception):
                progress.counts(self._progress_counts())
