"""A simulated job from the initial request to its outcome, in the miner's current `Behaviour`.

Reserve an executor (or decline), accept, spin up, announce ready, wait for the job request, run
(crack for real, or fail/lie/stall as the behaviour says), report machine specs and the outcome.
Where each message goes is `JobDelivery`'s business.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Awaitable
from typing import Any

from horde_common.protocol.miner import (
    MAX_EXECUTOR_TIMEOUT,
    ExecutorClass,
    GenericError,
    MachineSpecs,
    Receipt,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorReadyRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    spin_up_time,
)

from .behaviours import Behaviour
from .config import SIMULATED_SPECS, Runner
from .delivery import JobDelivery
from .jobs import JobState, MinerJob, ValidatorLink
from .llm_jobs import LlmLimits, llm_job_kind, run_llm_job
from .solver import ExecutionResult, execute

logger = logging.getLogger(__name__)


class JobLifecycle(JobDelivery):
    """The job half of `SimulatedMiner` (a mixin: the miner owns the state declared here)."""

    index: int
    _runner: Runner

    def _spawn(self, coro: Awaitable[Any], job: MinerJob | None = None) -> asyncio.Task[Any]:
        raise NotImplementedError

    def take_receipt(self, payload: Any, signature: str, validator: str) -> Receipt | None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ initial request

    def on_initial_job_request(self, conn: ValidatorLink, msg: V0InitialJobRequest) -> None:
        key = (conn.validator, msg.job_uuid)
        self.take_receipt(msg.job_started_receipt_payload, msg.job_started_receipt_signature, conn.validator)
        if key in self.jobs:
            logger.warning("miner %d: duplicate initial request for %s", self.index, msg.job_uuid)
            return
        executor_class = msg.executor_class or ExecutorClass.SPIN_UP_4MIN_GPU_24GB
        job = MinerJob(msg.job_uuid, conn.validator, executor_class, msg, notify=self._notify)
        job.origin = conn
        job.listeners.add(conn)
        self.jobs[key] = job
        self._notify()
        self._spawn(self._prepare(job), job)

    async def _prepare(self, job: MinerJob) -> None:
        behaviour = self.behaviour
        if behaviour is Behaviour.DECLINE or not await self.pool.reserve(
            job.executor_class, self.config.executor_wait
        ):
            job.set_state(JobState.DECLINED)
            await self.send_job_message(job, V0DeclineJobRequest(job_uuid=job.job_uuid), origin_only=True)
            return
        job.holds_executor = True
        job.set_state(JobState.SPINNING_UP)
        await self.send_job_message(job, V0AcceptJobRequest(job_uuid=job.job_uuid), origin_only=True)
        self._spawn(self._reservation_watchdog(job), job)
        if behaviour is not Behaviour.INSTANT and self.config.spin_up_delay > 0:
            await asyncio.sleep(self.config.spin_up_delay)
        if behaviour is Behaviour.EXECUTOR_FAIL:
            if job.state is not JobState.SPINNING_UP:
                return  # the reservation watchdog gave it up during the spin-up wait
            self._finish_without_outcome(job, JobState.EXECUTOR_FAILED)
            await self.send_job_message(job, V0ExecutorFailedRequest(job_uuid=job.job_uuid))
            return
        if job.state is not JobState.SPINNING_UP:
            return
        job.set_state(JobState.READY)
        await self.send_job_message(job, V0ExecutorReadyRequest(job_uuid=job.job_uuid))

    async def _reservation_watchdog(self, job: MinerJob) -> None:
        """Free the executor of a job whose request never came: `min(360, spin_up + timeout + 30)`."""
        timeout = job.initial.timeout_seconds or 0
        await asyncio.sleep(min(MAX_EXECUTOR_TIMEOUT, spin_up_time(job.executor_class) + timeout + 30))
        if job.state in (JobState.SPINNING_UP, JobState.READY):
            self._finish_without_outcome(job, JobState.ABANDONED)

    # ---------------------------------------------------------------------------------- job request

    async def on_job_request(self, conn: ValidatorLink, msg: V0JobRequest) -> None:
        job = self.jobs.get((conn.validator, msg.job_uuid))
        if job is not None and self.real_reconnects and conn not in job.listeners:
            job = None  # the real miner knows only the jobs this connection joined
        if job is None:
            await conn.send(GenericError(details=f"Received JobRequest for unknown job_uuid: {msg.job_uuid}"))
            return
        if job.initial.volume is not None and msg.volume is not None:
            await conn.send(GenericError(details=f"Received job volume twice job_uuid: {msg.job_uuid}"))
            return
        if job.job_request is not None or job.state is not JobState.READY:
            logger.warning("miner %d: job request for %s in state %s", self.index, job.job_uuid, job.state)
            return
        job.job_request = msg
        job.set_state(JobState.RUNNING)
        self._spawn(self._run(job), job)
        if self.behaviour is Behaviour.DISCONNECT:
            conn.abort()

    async def _run(self, job: MinerJob) -> None:
        request = job.job_request
        assert request is not None
        behaviour = self.behaviour
        if behaviour is Behaviour.TIMEOUT:
            return  # never answers; the watchdog frees the executor
        try:
            if behaviour is Behaviour.JOB_FAIL:
                result = ExecutionResult(1, "", "simulated job failure")
            elif behaviour is Behaviour.WRONG_ANSWER:
                result = ExecutionResult(0, base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n", "")
            else:
                try:
                    result = await self._execute(job, request)
                except Exception as exc:  # e.g. a broken worker pool: the executor fails the job
                    logger.exception("miner %d: execution of %s failed", self.index, job.job_uuid)
                    result = ExecutionResult(1, "", f"executor error: {type(exc).__name__}: {exc}")
            if self.config.behaviour.final_delay > 0:
                await asyncio.sleep(self.config.behaviour.final_delay)
            outcome: V0JobFinishedRequest | V0JobFailedRequest
            if result.ok:
                outcome = V0JobFinishedRequest(
                    job_uuid=job.job_uuid,
                    docker_process_stdout=result.stdout,
                    docker_process_stderr=result.stderr,
                )
                job.set_state(JobState.FINISHED)
            else:
                outcome = V0JobFailedRequest(
                    job_uuid=job.job_uuid,
                    docker_process_exit_status=result.exit_status,
                    docker_process_stdout=result.stdout,
                    docker_process_stderr=result.stderr,
                )
                job.set_state(JobState.FAILED)
        finally:
            self._release(job)
        job.outcome = outcome
        self._notify()
        if result.ok and self.config.send_machine_specs:
            specs = V0MachineSpecsRequest(job_uuid=job.job_uuid, specs=MachineSpecs(specs=SIMULATED_SPECS))
            await self.send_job_message(job, specs, garbage=False)
        await self.deliver_outcome(job)

    async def _execute(self, job: MinerJob, request: V0JobRequest) -> ExecutionResult:
        volume = job.initial.volume if job.initial.volume is not None else request.volume
        limit = job.initial.timeout_seconds
        kind = llm_job_kind(request)
        if kind is not None:  # the LLM images: real downloads and uploads (llm_jobs)
            config = self.config
            limits = LlmLimits(
                config.llm_max_download_bytes, config.llm_download_timeout, config.llm_upload_timeout
            )
            wrong = self.behaviour is Behaviour.WRONG_LLM_ANSWERS
            try:
                return await asyncio.wait_for(
                    run_llm_job(kind, volume, request, limits, wrong_answers=wrong), limit
                )
            except TimeoutError:
                return ExecutionResult(None, "", f"job timed out after {limit} s")
        spec = {
            "volume": None if volume is None else volume.model_dump(mode="json"),
            "raw_script": request.raw_script,
            "docker_run_cmd": list(request.docker_run_cmd),
            "docker_image_name": request.docker_image_name,
            "output_upload": None
            if request.output_upload is None
            else request.output_upload.model_dump(mode="json"),
            "run_scripts": self.config.run_scripts,
        }
        try:
            return await asyncio.wait_for(self._runner(execute, spec), limit)
        except TimeoutError:
            return ExecutionResult(None, "", f"job timed out after {limit} s")

    # ------------------------------------------------------------------------------------- receipts

    def on_accepted_receipt(self, conn: ValidatorLink, msg: V0JobAcceptedReceiptRequest) -> None:
        self.take_receipt(msg.payload, msg.signature, conn.validator)

    def on_finished_receipt(self, conn: ValidatorLink, msg: V0JobFinishedReceiptRequest) -> None:
        if self.take_receipt(msg.payload, msg.signature, conn.validator) is None:
            return
        job = self.jobs.get((conn.validator, msg.payload.job_uuid))
        if job is None:
            logger.warning("miner %d: finished receipt for unknown job %s", self.index, msg.payload.job_uuid)
            return
        job.time_took_us = msg.payload.time_took_us
        job.score_str = msg.payload.score_str
        self._notify()
