"""What a `MinerSession` knows about one job: a mutable record inside, frozen snapshots outside.

A job changes state about six times (initial request, job request, accept, ready, specs, final).
Copying a frozen dataclass of thirteen fields on each change cost more than the rest of the
session's bookkeeping, so the session updates a slotted record in place and builds a `JobView`
only when a caller asks for one (`MinerSession.job()`/`jobs()`). A view is a snapshot: it does not
change when the session learns more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .base_messages import V0MachineSpecsRequest
from .executor_class import ExecutorClass
from .miner_messages import (
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
)
from .transitions import JOB_OUTCOME_OF_STATE, JobOutcome, JobState

__all__ = ["JobOutcome", "JobRecord", "JobState", "JobView"]


@dataclass(frozen=True, slots=True)
class JobView:
    """A snapshot of what the session knows about one job; the first answer of each kind."""

    job_uuid: str
    executor_class: ExecutorClass | None
    initial_sent_at: datetime | None = None
    accept: V0AcceptJobRequest | V0DeclineJobRequest | None = None
    accept_at: datetime | None = None
    executor: V0ExecutorReadyRequest | V0ExecutorFailedRequest | None = None
    executor_at: datetime | None = None
    job_request_sent_at: datetime | None = None
    final: V0JobFinishedRequest | V0JobFailedRequest | None = None
    final_at: datetime | None = None
    final_before_job_request: bool = False
    machine_specs: V0MachineSpecsRequest | None = None  # the last one
    outcome: JobOutcome | None = None
    state: JobState = JobState.REGISTERED  # see `transitions.JOB_TRANSITIONS`

    @property
    def is_ready(self) -> bool:
        """Eligible for the V0JobRequest: executor ready, no outcome yet."""
        return isinstance(self.executor, V0ExecutorReadyRequest) and self.outcome is None


class JobRecord:
    """The session's own, mutable state of one job (the fields of `JobView`).

    Only `MinerSession` writes it, and only as `transitions.JOB_TRANSITIONS` allows (first answer
    wins, an outcome is final); everyone else gets a `view()`. The outcome is the terminal state's.
    """

    __slots__ = (
        "accept",
        "accept_at",
        "executor",
        "executor_at",
        "executor_class",
        "final",
        "final_at",
        "final_before_job_request",
        "initial_sent_at",
        "job_request_sent_at",
        "job_uuid",
        "machine_specs",
        "state",
    )

    def __init__(self, job_uuid: str, executor_class: ExecutorClass | None) -> None:
        self.job_uuid = job_uuid
        self.executor_class = executor_class
        self.initial_sent_at: datetime | None = None
        self.accept: V0AcceptJobRequest | V0DeclineJobRequest | None = None
        self.accept_at: datetime | None = None
        self.executor: V0ExecutorReadyRequest | V0ExecutorFailedRequest | None = None
        self.executor_at: datetime | None = None
        self.job_request_sent_at: datetime | None = None
        self.final: V0JobFinishedRequest | V0JobFailedRequest | None = None
        self.final_at: datetime | None = None
        self.final_before_job_request = False
        self.machine_specs: V0MachineSpecsRequest | None = None
        self.state = JobState.REGISTERED

    @property
    def outcome(self) -> JobOutcome | None:
        """The job's outcome: set once a terminal state is reached, None before."""
        return JOB_OUTCOME_OF_STATE.get(self.state)

    def view(self) -> JobView:
        """A frozen snapshot of the record as it is now."""
        return JobView(
            job_uuid=self.job_uuid,
            executor_class=self.executor_class,
            initial_sent_at=self.initial_sent_at,
            accept=self.accept,
            accept_at=self.accept_at,
            executor=self.executor,
            executor_at=self.executor_at,
            job_request_sent_at=self.job_request_sent_at,
            final=self.final,
            final_at=self.final_at,
            final_before_job_request=self.final_before_job_request,
            machine_specs=self.machine_specs,
            outcome=self.outcome,
            state=self.state,
        )
