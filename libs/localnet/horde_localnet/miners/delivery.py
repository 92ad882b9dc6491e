"""Which connection hears a job's messages, across reconnects (`ReconnectMode`).

* `real` (the November 2024 miner): a job's messages go to every open connection that joined it:
  the one that carried its initial request, and each later connection of the same validator, which
  joins the validator's unfinished jobs as soon as it opens, before any authentication (the real
  miner's `group_add(executor_token)` in `connect()`). Accept/decline go only to the connection of
  the initial request (the real miner answers on that consumer). At authentication, the connection
  gets the outcomes nobody heard and the ready of jobs that were waiting for a payload when it opened.
* `legacy`: a job's messages go to the validator's latest authenticated connection; at
  authentication it gets the undelivered outcomes and the ready of every job waiting for a payload.

In both modes an outcome that no connection took stays undelivered until the next authentication.
"""

from __future__ import annotations

import time
from typing import Any

from horde_common.protocol.miner import V0ExecutorReadyRequest

from .behaviours import Behaviour, ReconnectMode
from .config import READY_RESEND_MAX_AGE, REJOIN_MAX_AGE, MinerConfig
from .jobs import ACTIVE_STATES, ExecutorPool, JobState, MinerJob, ValidatorLink


class JobDelivery:
    """The delivery half of `SimulatedMiner` (a mixin: the miner owns the state declared here)."""

    config: MinerConfig
    pool: ExecutorPool
    jobs: dict[tuple[str, str], MinerJob]
    _authenticated: dict[str, ValidatorLink]

    def _notify(self) -> None:
        raise NotImplementedError

    @property
    def behaviour(self) -> Behaviour:
        return self.config.behaviour.kind

    @property
    def real_reconnects(self) -> bool:
        """Reconnect mode `real`: connections join unfinished jobs when they open."""
        return self.config.reconnect is ReconnectMode.REAL

    def jobs_of(self, validator_hotkey: str) -> list[MinerJob]:
        return [j for j in self.jobs.values() if j.validator_hotkey == validator_hotkey]

    # --------------------------------------------------------------------------- connection events

    def on_opened(self, conn: ValidatorLink) -> None:
        """A known validator's connection opened, nothing read yet. Mode `real`: join its unfinished jobs."""
        if not self.real_reconnects:
            return
        now = time.monotonic()
        for job in self.jobs_of(conn.validator):
            if job.state not in ACTIVE_STATES:
                continue
            age = now - job.changed_at
            if job.state is JobState.READY:
                if age >= READY_RESEND_MAX_AGE:
                    self._finish_without_outcome(job, JobState.FAILED)
                    continue
                conn.deferred_ready.append(job)  # announced after authentication only
            elif age >= REJOIN_MAX_AGE:
                continue
            job.listeners.add(conn)
        self._notify()

    def register(self, conn: ValidatorLink) -> None:
        """From now on, `send_to(conn.validator)` (and in mode `legacy` every job message of that
        validator) goes out on `conn`; called after the manifest is sent."""
        self._authenticated[conn.validator] = conn

    def on_closed(self, conn: ValidatorLink) -> None:
        if self._authenticated.get(conn.validator) is conn:
            del self._authenticated[conn.validator]
        for job in self.jobs_of(conn.validator):
            job.listeners.discard(conn)
        self._notify()

    async def on_authenticated(self, conn: ValidatorLink) -> None:
        """After the manifest and the queued messages: re-deliver what this validator missed."""
        legacy = not self.real_reconnects
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.validator_hotkey != conn.validator:
                continue
            if job.outcome is not None and not job.outcome_delivered:
                await self.deliver_outcome(job, to=[conn])
            elif legacy and job.state is JobState.READY and job.job_request is None:
                if now - job.changed_at < READY_RESEND_MAX_AGE:
                    await conn.send(V0ExecutorReadyRequest(job_uuid=job.job_uuid))
                else:
                    self._finish_without_outcome(job, JobState.FAILED)
        deferred, conn.deferred_ready = conn.deferred_ready, []
        for job in deferred:
            if job.state is JobState.READY and job.job_request is None:
                await conn.send(V0ExecutorReadyRequest(job_uuid=job.job_uuid))

    # ------------------------------------------------------------------------------------- sending

    def targets(self, job: MinerJob, *, origin_only: bool = False) -> list[ValidatorLink]:
        """The open connections that hear `job`'s messages now (see the module docstring)."""
        if not self.real_reconnects:
            conn = self._authenticated.get(job.validator_hotkey)
            return [] if conn is None else [conn]
        if origin_only:
            listeners = [] if job.origin is None else [job.origin]
        else:
            listeners = sorted(job.listeners, key=lambda c: c.serial)
        return [c for c in listeners if c.is_open]

    async def send_job_message(
        self,
        job: MinerJob,
        message: Any,
        *,
        origin_only: bool = False,
        garbage: bool = True,
        to: list[ValidatorLink] | None = None,
    ) -> bool:
        """Send a message about `job` to its `targets` (or `to`); True if at least one took it."""
        sent = False
        for conn in self.targets(job, origin_only=origin_only) if to is None else to:
            if garbage and self.behaviour is Behaviour.GARBAGE:
                await conn.send_garbage(job.job_uuid)
            sent = await conn.send(message) or sent
        return sent

    async def deliver_outcome(self, job: MinerJob, *, to: list[ValidatorLink] | None = None) -> None:
        if job.outcome is None or job.outcome_delivered:
            return
        job.outcome_delivered = True  # claimed before the await: never sent twice concurrently
        if not await self.send_job_message(job, job.outcome, to=to):
            job.outcome_delivered = False
        self._notify()

    async def send_to(self, validator: str, message: Any) -> bool:
        """Send on `validator`'s authenticated connection, if there is one."""
        conn = self._authenticated.get(validator)
        if conn is None:
            return False
        return await conn.send(message)

    # ----------------------------------------------------------------------------------- job state

    def _finish_without_outcome(self, job: MinerJob, state: JobState) -> None:
        job.set_state(state)
        self._release(job)

    def _release(self, job: MinerJob) -> None:
        if job.holds_executor:
            job.holds_executor = False
            self.pool.release(job.executor_class)
