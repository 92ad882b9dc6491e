"""The states of a `MinerSession` and of each of its jobs, and their transition tables, as data
(docs/miner-protocol.md §2.6).

The session consults these tables instead of scattering guards over flags: an input whose
`(state, input)` pair is in a table moves the machine to the listed state (often the same one: the
input is recorded, nothing else changes); an input whose pair is missing is refused, and the
session reports the refusal as it always has (docs/miner-protocol.md §2.7):

* a second manifest is ignored as a duplicate; an invalid manifest after a valid one gets only the
  malformed-frame reply (no close);
* a job message before the job's initial request is ignored as unexpected ("initial request not
  sent"); otherwise as a duplicate when the job already holds an answer of that kind
  (`JOB_ANSWER_SLOT`: the first wins), else as unexpected ("job already <outcome>");
* the validator's own initial request is never refused: a repeat changes nothing.

Nothing here does I/O or reads a clock, so the tables can be printed, diffed against the docs and
fuzzed.

Two machines, because they change independently:

* `SessionState`: the miner's manifest (it comes once) and whether the session asked the caller to
  close the connection. The connection itself (`connected()`/`disconnected()`) is bookkeeping for
  the caller only: no input is accepted or refused because of it.
* `JobState`, one per registered job: which answers the miner gave (accept, executor, final), the
  first of each kind winning, until an outcome ends the job. Whether the job request was sent is
  not a state: it only labels a final answer "before the job request" and never refuses one.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

__all__ = [
    "JOB_ANSWER_SLOT",
    "JOB_INPUT_OF_MESSAGE",
    "JOB_OUTCOME_OF_STATE",
    "JOB_TERMINAL_STATES",
    "JOB_TRANSITIONS",
    "SESSION_TERMINAL_STATES",
    "SESSION_TRANSITIONS",
    "JobInput",
    "JobOutcome",
    "JobState",
    "SessionInput",
    "SessionState",
]


class JobOutcome(StrEnum):
    """How a job ended on the miner's word; once set, nothing changes it (docs/miner-protocol.md §6 #13)."""

    DECLINED = "declined"
    EXECUTOR_FAILED = "executor_failed"
    FINISHED = "finished"
    FAILED = "failed"


# ------------------------------------------------------------------------------------- session


class SessionState(StrEnum):
    """The session as a whole: manifest received or not, close requested or not."""

    AWAITING_MANIFEST = "awaiting_manifest"
    MANIFEST_RECEIVED = "manifest_received"
    CLOSING = "closing"  # close requested before any manifest came
    CLOSING_AFTER_MANIFEST = "closing_after_manifest"


class SessionInput(StrEnum):
    """What can change the session's state. Every other frame (a plain `GenericError`, an
    `UnauthorizedError`, a malformed frame below the flood limit, job messages) is handled in every
    session state and changes none of it."""

    MANIFEST = "manifest"  # a valid V0ExecutorManifestRequest
    INVALID_MANIFEST = "invalid_manifest"  # a frame of type V0ExecutorManifestRequest that does not parse
    UNAUTHORIZED_ERROR = "unauthorized_error"  # a GenericError "unknown/inactive validator ..." (§1.8)
    MALFORMED_FLOOD = "malformed_flood"  # the malformed-frame limit tripped (`flood`)


_S = SessionState
_SI = SessionInput

SESSION_TRANSITIONS: Final[Mapping[tuple[SessionState, SessionInput], SessionState]] = {
    (_S.AWAITING_MANIFEST, _SI.MANIFEST): _S.MANIFEST_RECEIVED,
    (_S.AWAITING_MANIFEST, _SI.INVALID_MANIFEST): _S.CLOSING,
    (_S.AWAITING_MANIFEST, _SI.UNAUTHORIZED_ERROR): _S.CLOSING,
    (_S.AWAITING_MANIFEST, _SI.MALFORMED_FLOOD): _S.CLOSING,
    (_S.MANIFEST_RECEIVED, _SI.UNAUTHORIZED_ERROR): _S.CLOSING_AFTER_MANIFEST,
    (_S.MANIFEST_RECEIVED, _SI.MALFORMED_FLOOD): _S.CLOSING_AFTER_MANIFEST,
    # The caller stops reading once asked to close, but a frame already in hand is still handled.
    (_S.CLOSING, _SI.MANIFEST): _S.CLOSING_AFTER_MANIFEST,
    (_S.CLOSING, _SI.INVALID_MANIFEST): _S.CLOSING,
    (_S.CLOSING, _SI.UNAUTHORIZED_ERROR): _S.CLOSING,
    (_S.CLOSING, _SI.MALFORMED_FLOOD): _S.CLOSING,
    (_S.CLOSING_AFTER_MANIFEST, _SI.UNAUTHORIZED_ERROR): _S.CLOSING_AFTER_MANIFEST,
    (_S.CLOSING_AFTER_MANIFEST, _SI.MALFORMED_FLOOD): _S.CLOSING_AFTER_MANIFEST,
}

SESSION_TERMINAL_STATES: Final = frozenset({_S.CLOSING_AFTER_MANIFEST})
"""States no input leaves (the close request and the manifest are both for good)."""

# ----------------------------------------------------------------------------------------- jobs


class JobState(StrEnum):
    """One job as the validator sees it. The last four are its `JobOutcome`."""

    REGISTERED = "registered"  # the initial request is not sent yet: the miner has no say
    AWAITING_ANSWER = "awaiting_answer"  # initial request sent, no answer yet
    ACCEPTED = "accepted"
    READY_WITHOUT_ACCEPT = "ready_without_accept"  # e.g. the accept was lost with an old connection
    READY = "ready"  # accepted and executor ready: waiting for the final answer
    DECLINED = "declined"
    EXECUTOR_FAILED = "executor_failed"
    FINISHED = "finished"
    FAILED = "failed"


class JobInput(StrEnum):
    """What can happen to a job: the validator's initial request, or one miner message kind."""

    INITIAL_REQUEST_SENT = "initial_request_sent"
    ACCEPT = "V0AcceptJobRequest"
    DECLINE = "V0DeclineJobRequest"
    EXECUTOR_READY = "V0ExecutorReadyRequest"
    EXECUTOR_FAILED = "V0ExecutorFailedRequest"
    JOB_FINISHED = "V0JobFinishedRequest"
    JOB_FAILED = "V0JobFailedRequest"
    MACHINE_SPECS = "V0MachineSpecsRequest"


JOB_INPUT_OF_MESSAGE: Final[Mapping[str, JobInput]] = {
    i.value: i for i in JobInput if i is not JobInput.INITIAL_REQUEST_SENT
}
"""A miner job message's `message_type` → its input."""

_J = JobState
_JI = JobInput

# Rows are listed by state; a final answer may come at any point after the initial request (the
# miner decides; `before_job_request` labels an early one), machine specs in any state after it.
JOB_TRANSITIONS: Final[Mapping[tuple[JobState, JobInput], JobState]] = {
    (_J.REGISTERED, _JI.INITIAL_REQUEST_SENT): _J.AWAITING_ANSWER,
    (_J.AWAITING_ANSWER, _JI.ACCEPT): _J.ACCEPTED,
    (_J.AWAITING_ANSWER, _JI.DECLINE): _J.DECLINED,
    (_J.AWAITING_ANSWER, _JI.EXECUTOR_READY): _J.READY_WITHOUT_ACCEPT,
    (_J.AWAITING_ANSWER, _JI.EXECUTOR_FAILED): _J.EXECUTOR_FAILED,
    (_J.AWAITING_ANSWER, _JI.JOB_FINISHED): _J.FINISHED,
    (_J.AWAITING_ANSWER, _JI.JOB_FAILED): _J.FAILED,
    (_J.AWAITING_ANSWER, _JI.MACHINE_SPECS): _J.AWAITING_ANSWER,
    (_J.ACCEPTED, _JI.EXECUTOR_READY): _J.READY,
    (_J.ACCEPTED, _JI.EXECUTOR_FAILED): _J.EXECUTOR_FAILED,
    (_J.ACCEPTED, _JI.JOB_FINISHED): _J.FINISHED,
    (_J.ACCEPTED, _JI.JOB_FAILED): _J.FAILED,
    (_J.ACCEPTED, _JI.MACHINE_SPECS): _J.ACCEPTED,
    (_J.READY_WITHOUT_ACCEPT, _JI.ACCEPT): _J.READY,
    (_J.READY_WITHOUT_ACCEPT, _JI.DECLINE): _J.DECLINED,
    (_J.READY_WITHOUT_ACCEPT, _JI.JOB_FINISHED): _J.FINISHED,
    (_J.READY_WITHOUT_ACCEPT, _JI.JOB_FAILED): _J.FAILED,
    (_J.READY_WITHOUT_ACCEPT, _JI.MACHINE_SPECS): _J.READY_WITHOUT_ACCEPT,
    (_J.READY, _JI.JOB_FINISHED): _J.FINISHED,
    (_J.READY, _JI.JOB_FAILED): _J.FAILED,
    (_J.READY, _JI.MACHINE_SPECS): _J.READY,
    # Specs are telemetry (the last one is kept), so they are taken even after an outcome.
    (_J.DECLINED, _JI.MACHINE_SPECS): _J.DECLINED,
    (_J.EXECUTOR_FAILED, _JI.MACHINE_SPECS): _J.EXECUTOR_FAILED,
    (_J.FINISHED, _JI.MACHINE_SPECS): _J.FINISHED,
    (_J.FAILED, _JI.MACHINE_SPECS): _J.FAILED,
}

JOB_OUTCOME_OF_STATE: Final[Mapping[JobState, JobOutcome]] = {
    _J.DECLINED: JobOutcome.DECLINED,
    _J.EXECUTOR_FAILED: JobOutcome.EXECUTOR_FAILED,
    _J.FINISHED: JobOutcome.FINISHED,
    _J.FAILED: JobOutcome.FAILED,
}

JOB_TERMINAL_STATES: Final = frozenset(JOB_OUTCOME_OF_STATE)
"""States no input leaves: the job has its outcome (docs/miner-protocol.md §6 #1, #13)."""

JOB_ANSWER_SLOT: Final[Mapping[JobInput, str]] = {
    _JI.ACCEPT: "accept",
    _JI.DECLINE: "accept",
    _JI.EXECUTOR_READY: "executor",
    _JI.EXECUTOR_FAILED: "executor",
    _JI.JOB_FINISHED: "final",
    _JI.JOB_FAILED: "final",
}
"""The `JobRecord` field that holds the first answer of an input's kind: a refused input whose
field is already set is a duplicate."""
