"""`ShardState`: what one running shard knows, and the helpers every batch phase shares.

The phases of a shard (`manifests`, `spin_up`, `release`, `finish`, `records`) are mixins over this
class, so they read and write one set of fields (the links, the jobs, the events, the pending sets
and their events) exactly as a single object would; `batch._ShardRun` puts them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from horde_common.crypto import sign as crypto_sign
from horde_common.db.models.enums import JobStatus
from horde_common.protocol.miner.executor_class import ExecutorClass
from horde_common.protocol.miner.session import JobRegistry
from horde_common.telemetry import SystemEventRecord, SystemEventSubtype, SystemEventType
from horde_job_runner.generators import JobGenerator
from horde_job_runner.synthetic.link import MinerLink
from horde_job_runner.synthetic.loopmon import LoopMonitor
from horde_job_runner.synthetic.model import BatchDeps, DynamicValues, JobState, ShardRequest, ShardResult

__all__ = ["SendPacer", "ShardState", "drain"]

log = logging.getLogger(__name__)

T = SystemEventType
S = SystemEventSubtype


async def drain() -> None:
    """Let frames that already reached our socket be read before a phase is judged.

    After a deadline (or a stall of ours) the loop may not have polled the sockets yet; a few
    iterations let the transports and readers take what arrived. Their receive stamps are what
    they are: a late stamp is judged late (and excused if we stalled).
    """
    for _ in range(3):
        await asyncio.sleep(0)


class SendPacer:
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


class ShardState:
    """The fields of one shard run and the bookkeeping shared by its phases."""

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
        self.pacer = SendPacer(self.t.send_slice)
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

    def on_link_failure(self, link: MinerLink, exc: BaseException, where: str) -> None:
        log.error("validator failure on %s (%s)", link.name, where, exc_info=exc)
        self._exclude_link(link, f"{where}: {type(exc).__name__}: {exc}", where)

    def _receipt_failure(self, job: JobState, receipt: str, func: str) -> Callable[[BaseException], None]:
        """`on_failure` for a queued receipt: a receipt that did not go out is our RECEIPT_FAILURE
        event, never a miner failure."""

        def failed(exc: BaseException) -> None:
            self._event(
                T.RECEIPT_FAILURE,
                S.RECEIPT_SEND_ERROR,
                f"{receipt} receipt not sent: {type(exc).__name__}: {exc}",
                miner_hotkey=job.miner_hotkey,
                job_uuid=job.job_uuid,
                func=func,
            )

        return failed

    async def _wait_for_pending(
        self, pending: set[JobState], done: asyncio.Event, horizon: Callable[[], float]
    ) -> None:
        """Wait until every `pending` job is resolved (`done` is set) or `horizon()` has passed.

        The horizon is recomputed after each wake-up because the jobs still pending (and so the
        latest window among them) change while we wait.
        """
        while pending:
            remaining = horizon() - self.clock.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), remaining)
