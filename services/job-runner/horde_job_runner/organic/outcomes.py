"""What each way an organic job can end means for its row, its event and the facilitator
(docs/organic.md, "Running organic jobs: outcomes"). Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from horde_common.db.models.enums import JobStatus
from horde_common.event_types import SystemEventSubtype as Sub
from horde_common.event_types import SystemEventType

__all__ = [
    "Outcome",
    "OutcomeKind",
    "Report",
    "accepted_response",
    "lost_report",
    "miner_name",
    "not_run_report",
    "report",
]


class OutcomeKind(StrEnum):
    FINISHED = "finished"
    CONNECTION_FAILED = "connection_failed"
    NOT_ACCEPTED_IN_TIME = "not_accepted_in_time"
    DECLINED = "declined"
    NOT_READY_IN_TIME = "not_ready_in_time"
    EXECUTOR_FAILED = "executor_failed"
    FINAL_TIMEOUT = "final_timeout"
    JOB_FAILED = "job_failed"


@dataclass(frozen=True)
class Outcome:
    """How one attempt on one miner ended. `detail`: the miner's message as JSON (decline, executor
    failure, job failure) or the connection error."""

    kind: OutcomeKind
    accepted: bool = False
    detail: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Report:
    """The writes of one outcome: row fields, the system event, and the facilitator status."""

    row_status: str
    comment: str
    stdout: str
    stderr: str
    event_type: str
    event_subtype: str
    status: str  # accepted / rejected / failed / completed
    message_type: str | None  # `miner_response.message_type`

    def miner_response(self, job_uuid: str) -> dict[str, Any]:
        return {
            "job_uuid": job_uuid,
            "message_type": self.message_type,
            "docker_process_stderr": self.stderr,
            "docker_process_stdout": self.stdout,
        }


def miner_name(hotkey: str, address: str, port: int) -> str:
    """`{hotkey}({address}:{port})`, how comments name a miner."""
    return f"{hotkey}({address}:{port})"


def accepted_response(job_uuid: str) -> dict[str, Any]:
    """`miner_response` of the `accepted` status (nothing is known yet but the acceptance)."""
    return {
        "job_uuid": job_uuid,
        "message_type": "V0AcceptJobRequest",
        "docker_process_stderr": "",
        "docker_process_stdout": "",
    }


_FAIL = str(SystemEventType.MINER_ORGANIC_JOB_FAILURE)


def report(outcome: Outcome, *, name: str, job_uuid: str, total_s: float, wait_s: float) -> Report:
    """The row, event and status of an attempt that reached the miner (or tried to)."""
    kind = outcome.kind
    failed = str(JobStatus.FAILED)
    not_started = (
        f"Miner {name} timed out while preparing executor for job {job_uuid} after {_secs(wait_s)} seconds"
    )
    if kind is OutcomeKind.FINISHED:
        comment = f"Miner {name} finished: stdout={outcome.stdout!r} stderr={outcome.stderr!r}"
        return Report(
            str(JobStatus.COMPLETED),
            comment,
            outcome.stdout,
            outcome.stderr,
            str(SystemEventType.MINER_ORGANIC_JOB_SUCCESS),
            str(Sub.SUCCESS),
            "completed",
            "V0JobFinishedRequest",
        )
    if kind is OutcomeKind.JOB_FAILED:
        comment = f"Miner {name} failed: {outcome.detail}"
        return Report(
            failed,
            comment,
            outcome.stdout,
            outcome.stderr,
            _FAIL,
            str(Sub.FAILURE),
            "failed",
            "V0JobFailedRequest",
        )
    comment, subtype, status = {
        OutcomeKind.CONNECTION_FAILED: (
            f"Miner connection error: {outcome.detail}",
            Sub.MINER_CONNECTION_ERROR,
            "failed",
        ),
        OutcomeKind.NOT_ACCEPTED_IN_TIME: (not_started, Sub.JOB_NOT_STARTED, "failed"),
        OutcomeKind.DECLINED: (f"Miner {name} won't do job: {outcome.detail}", Sub.JOB_REJECTED, "rejected"),
        OutcomeKind.NOT_READY_IN_TIME: (not_started, Sub.JOB_NOT_STARTED, "failed"),
        OutcomeKind.EXECUTOR_FAILED: (
            f"Miner {name} failed to start executor: {outcome.detail}",
            Sub.JOB_REJECTED,
            "failed",
        ),
        OutcomeKind.FINAL_TIMEOUT: (
            f"Miner {name} timed out after {_secs(total_s)} seconds",
            Sub.JOB_EXECUTION_TIMEOUT,
            "failed",
        ),
    }[kind]
    return Report(failed, comment, "", "", _FAIL, str(subtype), status, None)


def not_run_report(comment: str) -> Report:
    """A job that could not be tried on any miner (unknown miner, no miner available, a request
    that cannot become a miner job): one final `failed` status with the reason as its comment."""
    return Report(str(JobStatus.FAILED), comment, "", "", _FAIL, str(Sub.JOB_NOT_STARTED), "failed", None)


def lost_report(name: str) -> Report:
    """A resumed attempt whose miner said nothing of the job by its deadline (docs/organic.md,
    "Running organic jobs: resuming after a crash"): the outcome may have gone to the consumer that
    died, so the validator, not the miner, is named as the cause."""
    comment = f"job-runner restarted during the job; miner {name} did not report its outcome in time"
    return Report(
        str(JobStatus.FAILED),
        comment,
        "",
        "",
        str(SystemEventType.VALIDATOR_FAILURE),
        str(Sub.ORGANIC_JOB_RESUMED),
        "failed",
        None,
    )


def _secs(value: float) -> str:
    """Seconds as the original printed them: `300`, not `300.0`."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
