"""`run_shard`: one shard of a synthetic job batch, end to end (spec A §3.2–§3.12).

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

Timing rules (reference-measurements lessons 1 and 4): every window is measured on the validator's
monotonic clock from the moment *we* actually sent the request, never from a planned moment; an
event-loop monitor records our own stalls, and a job that failed on time alone during such a stall
is excluded from scoring (with a VALIDATOR_FAILURE event) instead of being blamed on the miner.
Any other validator-side failure (a bug, a crash of one miner's reader, a stage that raised) is a
VALIDATOR_FAILURE too: the affected jobs are stored with `excluded_from_scoring = true`, never as
miner failures. Whatever happens, links are closed and everything is persisted in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from horde_common.bus.messages import BatchShardReady, MinerEndpoint
from horde_common.crypto import sign as crypto_sign
from horde_common.db.models.enums import JobStatus
from horde_common.protocol.miner.executor_class import LLM_EXECUTOR_CLASS, ExecutorClass
from horde_common.protocol.miner.parsing import dumps
from horde_common.protocol.miner.session import JobRegistry, MinerSession
from horde_common.protocol.miner.validator_messages import (
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobRequest,
)
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType
from horde_job_runner.generators import JobGenerator
from horde_job_runner.synthetic import receipts as rc
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.loopmon import LoopMonitor
from horde_job_runner.synthetic.model import (
    BatchDeps,
    DynamicValues,
    JobResult,
    JobState,
    ShardRequest,
    ShardResult,
)
from horde_job_runner.synthetic.persistence import ShardRows
from horde_job_runner.synthetic.scoring import (
    FinalKind,
    JobVerdict,
    NoFinalReason,
    cap_executor_counts,
    manifest_multiplier,
    score_job,
    score_str,
)
from horde_job_runner.synthetic.transport import MinerConnectionError

__all__ = ["ready_message_id", "run_shard"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype

# Message ids derived from the shard request: a re-sent ready/completed message is deduplicated
# by its consumer instead of being counted twice.
_IDS = uuid.UUID("8d5b7c1e-3f0a-4c8e-9a51-6f2f3c4b1d20")
INSUFFICIENT_PROMPTS_EVERY_S = 24 * 3600.0


def ready_message_id(shard_message_id: uuid.UUID | None, batch_id: int, shard_index: int) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"{shard_message_id or batch_id}/{shard_index}/ready")


def completed_message_id(shard_message_id: uuid.UUID | None, batch_id: int, shard_index: int) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"{shard_message_id or batch_id}/{shard_index}/completed")


class ValidatorStageError(RuntimeError):
    """Raised by a stage that cannot go on for a reason of ours."""


async def run_shard(request: ShardRequest, deps: BatchDeps) -> ShardResult:
    """Run one shard of a batch and persist it; see the module docstring.

    Returns a `ShardResult` (never raises for miner behaviour or for a validator failure inside the
    batch: those are recorded). `result.persisted` is False only when every persistence attempt
    failed; the caller decides what to do then (the bus handler lets the message be redelivered).
    """
    return await _ShardRun(request, deps).run()


async def _drain() -> None:
    """Let frames that already reached our socket be read before a phase is judged.

    After a deadline (or a stall of ours) the loop may not have polled the sockets yet; a few
    iterations let the transports and readers take what arrived. Their receive stamps are what
    they are: a late stamp is judged late (and excused if we stalled).
    """
    for _ in range(3):
        await asyncio.sleep(0)


class _SendPacer:
    """Shared by every writer: yield to the loop once per `slice_s` of back-to-back sends."""

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self._last = time.perf_counter()
        self.yields = 0

    async def tick(self) -> None:
        now = time.perf_counter()
        if now - self._last >= self.slice_s:
            self.yields += 1
            await asyncio.sleep(0)
            self._last = time.perf_counter()


class _ShardRun:
    def __init__(self, request: ShardRequest, deps: BatchDeps) -> None:
        self.request = request
        self.deps = deps
        self.t = deps.timeouts
        self.clock = deps.clock
        keypair = deps.keypair
        self.validator_hotkey: str = keypair.ss58_address
        self.sign = lambda blob: crypto_sign(keypair, blob)
        self.result = ShardResult(batch_id=request.batch_id, shard_index=request.shard_index)
        self.events: list[SystemEventRecord] = []
        self.batch_uuid = ""
        self.dynamic = deps.dynamic or DynamicValues()
        self.previous_online: dict[str, dict[str, int]] = {}
        self.links: list[MinerLink] = []
        self.link_by_hotkey: dict[str, MinerLink] = {}
        self.counts: dict[str, dict[ExecutorClass, int]] = {}
        self.gen_tasks: dict[str, asyncio.Task[list[JobGenerator]]] = {}
        self.jobs: list[JobState] = []
        self.registry = JobRegistry()
        self.monitor = LoopMonitor(
            interval=self.t.loop_monitor_interval,
            threshold=self.t.loop_stall_threshold,
            monotonic=self.clock.monotonic,
        )
        self.pacer = _SendPacer(self.t.send_slice)
        self.spinup_pending: set[JobState] = set()
        self.spinup_done = asyncio.Event()
        self.final_pending: set[JobState] = set()
        self.final_done = asyncio.Event()
        self.deadline_mono = 0.0
        self.stage_times: dict[str, str] = {}
        self.stage_mono: dict[str, float] = {}
        self.accepting_results_until: datetime | None = None
        self.ready_published = False
        self.insufficient_prompts_recently = False
        self.scored = False
        self.aborted = False
        self.send_times: list[float] = []
        self.message_counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._start_mono = self.clock.monotonic()

    # ------------------------------------------------------------------------------ helpers

    def _event(
        self,
        type_: SystemEventType,
        subtype: SystemEventSubtype | str,
        description: str = "",
        **data: Any,
    ) -> None:
        payload = {"batch_uuid": self.batch_uuid, "batch_id": self.request.batch_id}
        payload.update({k: v for k, v in data.items() if v is not None})
        self.events.append(SystemEventRecord(type_, subtype, description, payload, self.clock.now()))

    async def _stage(self, name: str, *, hook: bool = True) -> None:
        now = self.clock.now()
        self.stage_times[name] = now.isoformat()
        self.stage_mono[name] = self.clock.monotonic()
        self._event(T.VALIDATOR_TELEMETRY, S.CHECKPOINT, name, time=now.isoformat(), stage=name)
        if self.deps.progress is not None:
            with contextlib.suppress(Exception):
                self.deps.progress.stage(name)
                self.deps.progress.counts(self._progress_counts())
        if hook:
            await self._hook(name)

    async def _hook(self, name: str) -> None:
        """Test seam: `deps.fault(name)` may raise (a validator bug) or block (a stall)."""
        if self.deps.fault is not None:
            outcome = self.deps.fault(name)
            if inspect.isawaitable(outcome):
                await outcome

    def _progress_counts(self) -> dict[str, int]:
        jobs = self.jobs
        return {
            "miners": len(self.links),
            "manifests": sum(1 for link in self.links if link.manifest is not None),
            "jobs": len(jobs),
            "sent": sum(1 for j in jobs if j.initial_sent_mono is not None),
            "accepted": sum(1 for j in jobs if j.accepted),
            "ready": sum(1 for j in jobs if j.executor_ready),
            "job_requests": sum(1 for j in jobs if j.job_before_sent_mono is not None),
            "answers": sum(1 for j in jobs if j.has_final),
        }

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _exclude_link(self, link: MinerLink, reason: str, stage: str) -> None:
        """A validator-side failure hit this miner: its jobs are kept out of scoring."""
        self._event(
            T.VALIDATOR_FAILURE,
            S.GENERIC_ERROR,
            f"validator failure while handling miner {link.name}: {reason}",
            miner_hotkey=link.hotkey,
            stage=stage,
        )
        for job in link.jobs.values():
            self._exclude_job(job, reason, stage, event=False)

    def _exclude_job(self, job: JobState, reason: str, stage: str, *, event: bool = True) -> None:
        if job.excluded:
            return
        job.excluded = True
        job.success = False
        job.score = 0.0
        job.status = str(JobStatus.FAILED)
        job.comment = f"validator failure: {reason}"
        job.exception = reason
        job.exception_stage = stage
        if event:
            self._event(
                T.VALIDATOR_FAILURE,
                S.GENERIC_ERROR,
                f"job {job.job_uuid} excluded from scoring: {reason}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                stage=stage,
            )
        self.spinup_pending.discard(job)
        self.final_pending.discard(job)
        self._check_done()

    def _check_done(self) -> None:
        if not self.spinup_pending:
            self.spinup_done.set()
        if not self.final_pending:
            self.final_done.set()

    # --------------------------------------------------------------------- LinkListener

    def on_manifest(self, link: MinerLink) -> None:
        manifest = link.manifest
        if manifest is None or link.hotkey in self.counts:
            return
        invalid = manifest.invalid_classes()
        if invalid:
            # Reference quirk 6 raised on the first bad entry; we keep every valid entry and report.
            self._event(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.MANIFEST_ERROR,
                f"manifest of {link.name} has unknown integer executor classes {invalid}",
                miner_hotkey=link.hotkey,
            )
        capped = cap_executor_counts(manifest.executor_counts(), self.dynamic.miner_max_executors_per_class)
        self.counts[link.hotkey] = capped
        hashcat = [(str(c), n) for c, n in capped.items() if c != LLM_EXECUTOR_CLASS]
        if hashcat:
            self.gen_tasks[link.hotkey] = asyncio.ensure_future(
                self.deps.job_factory.generate(
                    link.hotkey, hashcat, self.request.weights_version, self.deps.difficulty
                )
            )

    def on_accepted(self, link: MinerLink, job: JobState, at: datetime) -> None:
        """Sign the JobAccepted receipt now and queue it on the link's writer (5 s to go out)."""
        try:
            payload, signature = rc.accepted_receipt(
                self.sign,
                job_uuid=job.job_uuid,
                miner_hotkey=job.miner_hotkey,
                validator_hotkey=self.validator_hotkey,
                time_accepted=at,
                now=self.clock.now(),
            )
            job.accepted_receipt = (payload, signature)
            frame = dumps(V0JobAcceptedReceiptRequest(payload=payload, signature=signature))
        except Exception as exc:
            self.on_link_failure(link, exc, "_send_initial_job_request")
            return

        def failed(exc: BaseException) -> None:
            self._event(
                T.RECEIPT_FAILURE,
                S.RECEIPT_SEND_ERROR,
                f"JobAccepted receipt not sent: {type(exc).__name__}: {exc}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                func="_send_initial_job_request",
            )

        self.message_counts["V0JobAcceptedReceiptRequest"] += 1
        link.post(frame, timeout_s=self.t.receipt_send, on_failure=failed)

    def on_spin_up_resolved(self, link: MinerLink, job: JobState) -> None:
        job.spin_up_resolved = True
        self.spinup_pending.discard(job)
        if not self.spinup_pending:
            self.spinup_done.set()

    def on_final(self, link: MinerLink, job: JobState) -> None:
        self.on_spin_up_resolved(link, job)
        self.final_pending.discard(job)
        if not self.final_pending:
            self.final_done.set()

    def on_miner_event(self, link: MinerLink, subtype: str, description: str, data: dict[str, Any]) -> None:
        self._event(T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data)

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        log.error("validator failure on %s (%s)", link.name, where, exc_info=exc)
        self._exclude_link(link, f"{where}: {type(exc).__name__}: {exc}", where)

    # ------------------------------------------------------------------------------ run

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

        miners: list[MinerEndpoint] = list(request.miners)
        deps.rng.shuffle(miners)
        for endpoint in miners:
            if endpoint.hotkey in self.link_by_hotkey:
                continue  # one connection per miner, even if listed twice
            link = MinerLink(
                endpoint,
                self._make_session(endpoint),
                clock=self.clock,
                listener=self,
                transport_factory=deps.transport_factory,
                transport_settings=deps.transport_settings,
                sleep=deps.sleep,
                rng=deps.rng.random,
            )
            self.links.append(link)
            self.link_by_hotkey[endpoint.hotkey] = link

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

    def _make_session(self, endpoint: MinerEndpoint) -> MinerSession:
        if self.deps.session_factory is not None:
            return self.deps.session_factory(endpoint, self.registry)
        return MinerSession(
            validator_hotkey=self.validator_hotkey,
            sign=self.sign,
            miner_hotkey=endpoint.hotkey,
            miner_address=endpoint.address,
            miner_port=endpoint.port,
            registry=self.registry,
        )

    # ----------------------------------------------------------------------- manifests

    async def _manifests(self) -> None:
        await asyncio.gather(*(self._manifest_of(link) for link in self.links))
        self._event(
            T.VALIDATOR_TELEMETRY,
            S.CHECKPOINT,
            "manifests",
            stage="manifests_done",
            manifests=sum(1 for link in self.links if link.manifest is not None),
        )

    async def _manifest_of(self, link: MinerLink) -> None:
        failure: tuple[str, str, dict[str, Any]] | None = None
        try:
            async with asyncio.timeout(self.t.manifest):
                await link.open()
                await link.manifest_event.wait()
            if link.manifest is None:
                failure = (
                    "MANIFEST_ERROR",
                    "connection closed by the validator after an UNAUTHORIZED error",
                    {},
                )
        except MinerConnectionError as exc:
            failure = ("MINER_CONNECTION_ERROR", str(exc), {"func": "connect"})
        except TimeoutError:
            failure = ("MANIFEST_TIMEOUT", f"no manifest from {link.name} within {self.t.manifest:g} s", {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not a link error we know: our bug. The miner gets no jobs, and no failure is stored.
            log.exception("manifest of %s", link.name)
            self._exclude_link(link, f"{type(exc).__name__}: {exc}", "_multi_get_miner_manifest")
            failure = None
            await link.close(self.t.close)
            return
        if failure is not None:
            subtype, description, data = failure
            self.counts.pop(link.hotkey, None)
            gen_task = self.gen_tasks.pop(link.hotkey, None)
            if gen_task is not None:
                gen_task.cancel()
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, subtype, description, miner_hotkey=link.hotkey, **data)
            await link.close(self.t.close)

    async def _insufficient_prompts(self, llm_count: int) -> None:
        """LLM executors get no jobs until prompt samples exist (cross-validation); tell once a day."""
        if self.insufficient_prompts_recently:
            return
        self._event(
            T.VALIDATOR_TELEMETRY,
            S.INSUFFICIENT_PROMPTS,
            "not enough answered prompt samples: no LLM jobs in this batch",
            llm_executor_count=llm_count,
            prompt_samples_available=0,
        )

    # ----------------------------------------------------------------------- generation

    async def _collect_jobs(self) -> None:
        jobs: list[JobState] = []
        if self.gen_tasks:
            # Generation started as the manifests came in; bound what is left of it.
            await asyncio.wait(list(self.gen_tasks.values()), timeout=self.t.generation)
        for hotkey, task in self.gen_tasks.items():
            link = self.link_by_hotkey[hotkey]
            try:
                if not task.done():
                    task.cancel()
                    raise TimeoutError(f"job generation took longer than {self.t.generation:g} s")
                generators = task.result()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("job generation for %s", link.name)
                self._event(
                    T.VALIDATOR_FAILURE,
                    S.GENERIC_ERROR,
                    f"job generation failed for {link.name}: {type(exc).__name__}: {exc}",
                    miner_hotkey=hotkey,
                    stage="_generate_jobs",
                )
                continue
            for gen in generators:
                executor_class = ExecutorClass(gen.executor_class)
                timeout = (
                    self.t.job_timeout if self.t.job_timeout is not None else float(gen.timeout_seconds())
                )
                job = JobState(
                    job_uuid=str(gen.job_uuid),
                    miner_hotkey=hotkey,
                    executor_class=executor_class,
                    generator=gen,
                    spin_up=self.t.spin_up_for(executor_class),
                    timeout=timeout,
                )
                link.session.register_job(job.job_uuid, executor_class)
                link.jobs[job.job_uuid] = job
                jobs.append(job)
        self.deps.rng.shuffle(jobs)
        self.jobs = jobs

    # ----------------------------------------------------------------------- spin-up

    async def _spin_up(self) -> None:
        clock = self.clock
        classes = {job.executor_class for job in self.jobs}
        max_spin_up = max(self.t.spin_up_for(c) for c in classes)
        now_mono = clock.monotonic()
        if self.request.accept_deadline is not None:
            self.deadline_mono = now_mono + (self.request.accept_deadline - clock.now()).total_seconds()
        else:
            self.deadline_mono = now_mono + max_spin_up
        self.spinup_pending = set(self.jobs)
        self.spinup_done.clear()

        # Stagger: every class is sent `spin-up(class)` before the common deadline.
        groups: dict[float, list[JobState]] = {}
        for job in self.jobs:
            groups.setdefault(self.deadline_mono - job.spin_up, []).append(job)
        for planned in sorted(groups):
            delay = planned - clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_initial_requests(groups[planned])

        while self.spinup_pending:
            horizon = self.deadline_mono
            for job in self.spinup_pending:
                if job.window_end_mono is not None and job.window_end_mono > horizon:
                    horizon = job.window_end_mono
            remaining = horizon - clock.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.spinup_done.wait(), remaining)
        await _drain()
        self._not_sent([j for j in self.jobs if j.initial_sent_mono is None], "spin-up window over")

    async def _send_initial_requests(self, jobs: list[JobState]) -> None:
        """One sender for the whole group, in the shuffled job order: build (signed JobStarted
        receipt), then write the frame straight to the miner's socket. A miner whose link cannot
        take it right now (reconnecting) gets the frame through its own writer instead, so one slow
        miner never holds up the others. The loop yields to the event loop every few milliseconds,
        which lets the accepts and readies of the first jobs be handled while the rest go out."""
        clock = self.clock
        for job in jobs:
            link = self.link_by_hotkey[job.miner_hotkey]
            if link.closed_by_us:
                self._not_sent([job], "connection closed")
                continue
            try:
                gen = job.generator
                now = clock.now()
                payload, signature = rc.started_receipt(
                    self.sign,
                    job_uuid=job.job_uuid,
                    miner_hotkey=job.miner_hotkey,
                    validator_hotkey=self.validator_hotkey,
                    executor_class=job.executor_class,
                    max_timeout=gen.timeout_seconds(),
                    now=now,
                )
                job.started_receipt = (payload, signature)
                message = V0InitialJobRequest(
                    job_uuid=job.job_uuid,
                    executor_class=job.executor_class,
                    base_docker_image_name=gen.base_docker_image_name(),
                    timeout_seconds=gen.timeout_seconds(),
                    volume=gen.initial_request_volume(),  # type: ignore[arg-type]
                    job_started_receipt_payload=payload,
                    job_started_receipt_signature=signature,
                )
                frame = link.session.outgoing(message, now)
                wire = link.transport.prebuild(frame)
            except Exception as exc:
                self.on_link_failure(link, exc, "_send_initial_job_request")
                continue
            job.initial_sent_at = now
            if wire is not None and link.transport.write_prebuilt(wire):
                self._initial_sent(job)
            else:
                link.post(
                    frame,
                    timeout_s=max(0.0, self.deadline_mono - clock.monotonic()) + job.spin_up,
                    on_sent=lambda job=job: self._initial_sent(job),  # type: ignore[misc]
                    on_failure=lambda exc, job=job: self._not_sent([job], str(exc)),  # type: ignore[misc]
                )
            await self.pacer.tick()

    def _initial_sent(self, job: JobState) -> None:
        job.initial_sent_mono = sent = self.clock.monotonic()
        job.window_end_mono = max(self.deadline_mono, sent + job.spin_up)
        self.message_counts["V0InitialJobRequest"] += 1

    def _not_sent(self, jobs: Iterable[JobState], reason: str) -> None:
        for job in jobs:
            if job.initial_sent_mono is None and job.exception is None:
                job.exception = f"initial request not sent: {reason}"
                job.exception_stage = "_send_initial_job_request"
            self.spinup_pending.discard(job)
        self._check_done()

    # ----------------------------------------------------------------------- release

    async def _prepare_job_requests(self) -> list[JobState]:
        """Serialise every ready job's `V0JobRequest` now, so the release is only sends."""
        ready: list[JobState] = []
        for job in self.jobs:
            if not job.executor_ready or job.has_final or job.excluded:
                continue
            link = self.link_by_hotkey[job.miner_hotkey]
            if link.closed_by_us:
                continue
            gen = job.generator
            message = V0JobRequest(
                job_uuid=job.job_uuid,
                executor_class=job.executor_class,
                docker_image_name=gen.docker_image_name(),
                raw_script=gen.raw_script(),
                docker_run_options_preset=gen.docker_run_options_preset(),  # type: ignore[arg-type]
                docker_run_cmd=gen.docker_run_cmd(),
                volume=gen.job_request_volume(),  # type: ignore[arg-type]
                output_upload=gen.output_upload(),  # type: ignore[arg-type]
            )
            job.job_frame = link.session.outgoing(message, self.clock.now())
            job.job_wire = link.transport.prebuild(job.job_frame)
            ready.append(job)
            await self.pacer.tick()
        return ready

    async def _publish_ready(self, ready: list[JobState]) -> None:
        self.ready_published = True
        if self.deps.publish_ready is None:
            return
        by_class = Counter(str(j.executor_class) for j in ready)
        msg = BatchShardReady(
            message_id=ready_message_id(
                self.request.message_id, self.request.batch_id, self.request.shard_index
            ),
            batch_id=self.request.batch_id,
            shard_index=self.request.shard_index,
            ready_executor_count=len(ready),
            ready_by_class=dict(by_class),
        )
        try:
            await asyncio.wait_for(self.deps.publish_ready(msg), 15.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The scheduler releases at its deadline anyway; this only costs time.
            log.warning("could not publish batch.shard.ready: %s", exc)
            self._event(
                T.VALIDATOR_FAILURE,
                S.GENERIC_ERROR,
                f"batch.shard.ready not published: {type(exc).__name__}: {exc}",
                stage="_report_ready",
            )

    async def _publish_ready_if_needed(self) -> None:
        """A shard that ended early still tells the scheduler (0 ready) so the batch is not held up."""
        if not self.ready_published:
            with contextlib.suppress(Exception):
                await self._publish_ready([])

    async def _wait_for_release(self) -> None:
        waiter = self.deps.release_waiter
        if waiter is None:
            self.result.stats["release"] = "immediate"
            return
        if self.request.release_deadline is not None:
            timeout = (self.request.release_deadline - self.clock.now()).total_seconds()
        else:
            timeout = self.t.release_wait_max
        released_at = await waiter.wait(self.request.batch_id, max(0.0, timeout))
        if released_at is None:
            log.warning("batch %s: no batch.released before the deadline; releasing", self.request.batch_id)
            self.result.stats["release"] = "deadline"
        else:
            self.result.stats["release"] = "released"

    # ----------------------------------------------------------------------- job requests

    async def _job_requests(self, ready: list[JobState]) -> None:
        clock = self.clock
        self.accepting_results_until = clock.now()
        eligible = [j for j in ready if not j.has_final and not j.excluded]
        self.final_pending = set(eligible)
        self.final_done.clear()
        self._check_done()
        release_mono = clock.monotonic()
        per_link: dict[str, list[JobState]] = {}
        for job in eligible:
            per_link.setdefault(job.miner_hotkey, []).append(job)
        extra = self.t.job_wait_extra
        # The burst: each miner's pre-built frames in one write, back to back (a few ms for thousands
        # of jobs). A link that cannot take pre-built frames (reconnecting, compression) gets a writer.
        fallback: list[tuple[MinerLink, list[JobState]]] = []
        for hotkey, jobs in per_link.items():
            link = self.link_by_hotkey[hotkey]
            jobs = [j for j in jobs if not j.has_final and not j.excluded]
            if not jobs:
                continue
            wires = [j.job_wire for j in jobs]
            if any(w is None for w in wires):
                fallback.append((link, jobs))
                continue
            before_at, before = clock.now(), clock.monotonic()
            if not link.transport.write_prebuilt(b"".join(w for w in wires if w is not None)):
                fallback.append((link, jobs))
                continue
            after = clock.monotonic()
            for job in jobs:
                job.job_before_sent_at, job.job_before_sent_mono = before_at, before
                job.job_after_sent_mono = after
                job.wait_end_mono = before + job.timeout + extra
                job.job_frame = job.job_wire = None
            self.message_counts["V0JobRequest"] += len(jobs)
            await self.pacer.tick()
        for job in eligible:
            if job.has_final and job.job_before_sent_mono is None:
                self.final_pending.discard(job)  # answered before its request: out of order
        self._check_done()
        for link, jobs in fallback:
            for job in jobs:
                if job.job_frame is None:
                    continue
                job.job_before_sent_at, job.job_before_sent_mono = clock.now(), clock.monotonic()
                link.post(
                    job.job_frame,
                    timeout_s=job.timeout + extra,
                    on_sent=lambda job=job: self._job_request_sent(job),  # type: ignore[misc]
                    on_failure=lambda exc, job=job: self._job_request_failed(job, exc),  # type: ignore[misc]
                )
        await asyncio.sleep(0)
        await self._hook("_await_job_responses")
        while self.final_pending:
            horizon = release_mono
            for job in self.final_pending:
                end = (
                    job.wait_end_mono if job.wait_end_mono is not None else release_mono + job.timeout + extra
                )
                horizon = max(horizon, end)
            remaining = horizon - clock.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.final_done.wait(), remaining)
        await _drain()
        sent = [j.job_before_sent_mono for j in eligible if j.job_before_sent_mono is not None]
        if sent:
            self.result.stats["send_skew_s"] = max(sent) - min(sent)
            durations = [
                j.job_after_sent_mono - j.job_before_sent_mono
                for j in eligible
                if j.job_after_sent_mono is not None and j.job_before_sent_mono is not None
            ]
            self.result.stats["average_job_send_time_s"] = (
                sum(durations) / len(durations) if durations else 0.0
            )
            self.result.stats["first_job_request_mono"] = min(sent)
            self.result.stats["last_job_request_mono"] = max(sent)

    def _job_request_sent(self, job: JobState) -> None:
        """A job request that went through the link's writer (the slow path) is out now."""
        job.job_after_sent_mono = self.clock.monotonic()
        if job.job_before_sent_mono is not None:
            job.wait_end_mono = job.job_before_sent_mono + job.timeout + self.t.job_wait_extra
        job.job_frame = job.job_wire = None
        self.message_counts["V0JobRequest"] += 1

    def _job_request_failed(self, job: JobState, exc: BaseException) -> None:
        job.job_before_sent_mono = None
        job.job_before_sent_at = None
        job.exception = f"job request not sent: {type(exc).__name__}: {exc}"
        job.exception_stage = "_send_job_request"
        self.final_pending.discard(job)
        self._check_done()

    # ----------------------------------------------------------------------- scoring

    def _score(self) -> None:
        for job in self.jobs:
            if job.excluded:
                continue
            try:
                verdict = self._verdict(job)
            except Exception as exc:
                log.exception("scoring job %s", job.job_uuid)
                self._exclude_job(job, f"scoring error: {type(exc).__name__}: {exc}", "_score_jobs")
                continue
            if verdict.time_failure:
                start, end = self._window(job)
                stalled = self.monitor.stalled_within(start, end)
                if stalled >= self.t.stall_excuse:
                    self._exclude_job(
                        job,
                        f"the validator stalled {stalled:.2f} s during the job's window ({verdict.comment})",
                        "_score_jobs",
                    )
                    continue
            job.success = verdict.success
            job.correct = verdict.correct
            job.comment = verdict.comment
            job.score = verdict.score if verdict.success else 0.0
            self._job_events(job, verdict)

        online: dict[str, Counter[str]] = {}
        for job in self.jobs:
            if job.success:
                online.setdefault(job.miner_hotkey, Counter())[str(job.executor_class)] += 1
        self.online = online
        d = self.dynamic
        for job in self.jobs:
            if not job.success:
                job.status = str(JobStatus.FAILED)
                continue
            job.status = str(JobStatus.COMPLETED)
            previous = self.previous_online.get(job.miner_hotkey, {}).get(str(job.executor_class))
            current = online[job.miner_hotkey][str(job.executor_class)]
            multiplier = manifest_multiplier(
                previous,
                current,
                weights_version=self.request.weights_version,
                multiplier=d.manifest_score_multiplier,
                threshold=d.manifest_dance_ratio_threshold,
            )
            job.multiplier = multiplier
            if multiplier is not None:
                job.score *= multiplier

    def _verdict(self, job: JobState) -> JobVerdict:
        if job.final_kind is None:
            if job.declined:
                reason = NoFinalReason.DECLINED
            elif job.executor_failed:
                reason = NoFinalReason.EXECUTOR_FAILED
            elif job.initial_sent_mono is None:
                reason = NoFinalReason.NOT_SENT
            elif job.job_before_sent_mono is None and job.executor_ready and not self._late_ready(job):
                reason = NoFinalReason.NOT_SENT  # ready in time, but the link failed us at the send
            else:
                reason = NoFinalReason.TIMED_OUT
            return score_job(final=None, no_final_reason=reason, timeout=job.timeout)
        if job.final_kind == "failed":
            return score_job(final=FinalKind.FAILED, exit_status=job.exit_status, timeout=job.timeout)
        time_took: float | None = None
        if (
            job.job_before_sent_mono is not None
            and job.final_mono is not None
            and not job.final_before_job_request
        ):
            time_took = job.final_mono - job.job_before_sent_mono
        job.time_took = time_took
        gen = job.generator

        def verify(stdout: str, took: float) -> tuple[bool, str, float]:
            verdict = gen.verify(stdout, took)
            return verdict.correct, verdict.comment, verdict.score

        return score_job(
            final=FinalKind.FINISHED,
            stdout=job.stdout,
            time_took=time_took,
            timeout=job.timeout,
            verify=verify,
        )

    @staticmethod
    def _late_ready(job: JobState) -> bool:
        """Ready only after its spin-up window (e.g. the miner waited for a busy executor)."""
        return (
            job.executor_mono is not None
            and job.window_end_mono is not None
            and job.executor_mono > job.window_end_mono
        )

    def _window(self, job: JobState) -> tuple[float, float]:
        """The stretch of our clock a time-based verdict depends on."""
        now = self.clock.monotonic()
        if job.job_before_sent_mono is not None:
            end = job.final_mono if job.final_mono is not None else (job.wait_end_mono or now)
            return job.job_before_sent_mono, min(end, now)
        start = job.initial_sent_mono if job.initial_sent_mono is not None else self.deadline_mono
        return start, min(job.window_end_mono or now, now)

    def _job_events(self, job: JobState, verdict: JobVerdict) -> None:
        common = {"miner_hotkey": job.miner_hotkey, "job_uuid": job.job_uuid}
        if job.final_kind is None:
            if job.declined or job.executor_failed:
                self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.JOB_NOT_STARTED, "refused", **common)
            elif job.initial_sent_mono is not None:
                func = (
                    "_send_job_request"
                    if job.job_before_sent_mono is not None
                    else "_send_initial_job_request"
                )
                self._event(
                    T.MINER_SYNTHETIC_JOB_FAILURE,
                    S.JOB_EXECUTION_TIMEOUT,
                    verdict.comment,
                    func=func,
                    **common,
                )
            return
        if job.final_kind == "failed":
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **common)
            return
        if verdict.out_of_order or verdict.took_too_long:
            self._event(
                T.MINER_SYNTHETIC_JOB_FAILURE,
                S.JOB_EXECUTION_TIMEOUT,
                verdict.comment,
                func="_score_job",
                **common,
            )
            return
        data = {**common, "executor_class": str(job.executor_class)}
        if verdict.success:
            self._event(T.MINER_SYNTHETIC_JOB_SUCCESS, S.SUCCESS, verdict.comment, **data)
        else:
            self._event(T.MINER_SYNTHETIC_JOB_FAILURE, S.FAILURE, verdict.comment, **data)

    # ----------------------------------------------------------------------- receipts

    async def _finished_receipts(self) -> None:
        per_link: dict[str, list[tuple[JobState, str]]] = {}
        for job in self.jobs:
            if not job.has_final or job.excluded:
                continue
            if job.job_before_sent_at is None:
                self._event(
                    T.RECEIPT_FAILURE,
                    S.RECEIPT_SEND_ERROR,
                    "no JobFinished receipt: the final response came before the job request",
                    miner_hotkey=job.miner_hotkey,
                    job_uuid=job.job_uuid,
                    func="_send_job_finished_receipts",
                )
                continue
            time_took_us = int(job.time_took * 1_000_000) if job.time_took is not None else 0
            payload, signature = rc.finished_receipt(
                self.sign,
                job_uuid=job.job_uuid,
                miner_hotkey=job.miner_hotkey,
                validator_hotkey=self.validator_hotkey,
                time_started=job.job_before_sent_at,
                time_took_us=time_took_us,
                score_str=score_str(job.score),
                now=self.clock.now(),
            )
            job.finished_receipt = (payload, signature)
            frame = dumps(V0JobFinishedReceiptRequest(payload=payload, signature=signature))
            per_link.setdefault(job.miner_hotkey, []).append((job, frame))
            await self.pacer.tick()
        for hotkey, items in per_link.items():
            link = self.link_by_hotkey[hotkey]
            for job, frame in items:
                link.post(frame, timeout_s=self.t.receipt_send, on_failure=self._finished_failed(job))
                self.message_counts["V0JobFinishedReceiptRequest"] += 1
        # Each receipt has its own 5 s; a link's receipts go out one after the other.
        await asyncio.gather(
            *(
                self.link_by_hotkey[hk].flush(self.t.receipt_send * len(items) + 1.0)
                for hk, items in per_link.items()
            )
        )

    def _finished_failed(self, job: JobState) -> Callable[[BaseException], None]:
        def failed(exc: BaseException) -> None:
            self._event(
                T.RECEIPT_FAILURE,
                S.RECEIPT_SEND_ERROR,
                f"JobFinished receipt not sent: {type(exc).__name__}: {exc}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                func="_send_job_finished_receipts",
            )

        return failed

    # ----------------------------------------------------------------------- closing

    async def _close_all(self) -> None:
        if self.links:
            await asyncio.gather(*(link.close(self.t.close) for link in self.links), return_exceptions=True)

    # ----------------------------------------------------------------------- persistence

    def _rows(self) -> ShardRows:
        request = self.request
        rows = ShardRows(batch_id=request.batch_id, accepting_results_until=self.accepting_results_until)
        online: dict[str, Counter[str]] = getattr(self, "online", {})
        for job in self.jobs:
            link = self.link_by_hotkey[job.miner_hotkey]
            rows.jobs.append(
                {
                    "job_uuid": uuid.UUID(job.job_uuid),
                    "batch_id": request.batch_id,
                    "miner_hotkey": job.miner_hotkey,
                    "miner_address": link.address,
                    "miner_address_ip_version": link.ip_version,
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
