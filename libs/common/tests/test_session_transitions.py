"""The `MinerSession` transition tables (`protocol/miner/transitions.py`, docs/miner-protocol.md §2.6):
the tables are closed and their terminal states final, the session follows them when driven with
random sequences of miner messages, and the docs show exactly these tables."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
    ExecutorClass,
    GenericError,
    IgnoredMessage,
    IgnoreReason,
    JobRegistry,
    JobStartedReceiptPayload,
    MinerSession,
    Received,
    V0InitialJobRequest,
    V0JobRequest,
    dumps,
)
from horde_common.protocol.miner.base_messages import JobMessage, V0MachineSpecsRequest
from horde_common.protocol.miner.flood import MalformedFramePolicy
from horde_common.protocol.miner.miner_messages import (
    ExecutorClassManifest,
    ExecutorManifest,
    MinerMessage,
    UnauthorizedError,
    UnauthorizedErrorCode,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
)
from horde_common.protocol.miner.transitions import (
    JOB_ANSWER_SLOT,
    JOB_INPUT_OF_MESSAGE,
    JOB_OUTCOME_OF_STATE,
    JOB_TERMINAL_STATES,
    JOB_TRANSITIONS,
    SESSION_TERMINAL_STATES,
    SESSION_TRANSITIONS,
    JobInput,
    JobState,
    SessionInput,
    SessionState,
)
from horde_common.protocol.miner.values import MachineSpecs

T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
OWN = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
FOREIGN = "33333333-3333-4333-8333-333333333333"
UNKNOWN = "44444444-4444-4444-8444-444444444444"
DOC = Path(__file__).resolve().parents[3] / "docs" / "miner-protocol.md"
S = typing.TypeVar("S")
In = typing.TypeVar("In")
# A low flood limit, so that random sequences of garbage reach the flood-closing transition.
FLOOD_LIMIT = 3


def reachable(table: Mapping[tuple[S, In], S], start: S) -> set[S]:
    """States the table can reach from `start` (including it)."""
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for (source, _), target in table.items():
            if source == state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def derived_terminals(table: Mapping[tuple[S, In], S], states: Iterable[S]) -> set[S]:
    """States every row of which is a self-loop."""
    return {s for s in states if all(target == s for (source, _), target in table.items() if source == s)}


SESSION_REACHABLE = reachable(SESSION_TRANSITIONS, SessionState.AWAITING_MANIFEST)
JOB_REACHABLE = reachable(JOB_TRANSITIONS, JobState.REGISTERED)


# ------------------------------------------------------------------------------------ the tables


def test_tables_are_closed_over_their_enums() -> None:
    for (state, given_input), target in SESSION_TRANSITIONS.items():
        assert isinstance(state, SessionState) and isinstance(given_input, SessionInput)
        assert isinstance(target, SessionState)
    for (job_state, job_input), job_target in JOB_TRANSITIONS.items():
        assert isinstance(job_state, JobState) and isinstance(job_input, JobInput)
        assert isinstance(job_target, JobState)


def test_every_state_is_reachable_and_terminal_states_are_final() -> None:
    assert set(SessionState) == SESSION_REACHABLE
    assert set(JobState) == JOB_REACHABLE
    assert derived_terminals(SESSION_TRANSITIONS, SessionState) == SESSION_TERMINAL_STATES
    assert derived_terminals(JOB_TRANSITIONS, JobState) == JOB_TERMINAL_STATES
    assert set(JOB_OUTCOME_OF_STATE) == JOB_TERMINAL_STATES


def test_every_job_message_kind_has_an_input() -> None:
    job_messages = {
        cls.model_fields["message_type"].default
        for cls in typing.get_args(MinerMessage)
        if issubclass(cls, JobMessage)
    }
    assert set(JOB_INPUT_OF_MESSAGE) == job_messages
    assert set(JOB_ANSWER_SLOT) == set(JobInput) - {JobInput.INITIAL_REQUEST_SENT, JobInput.MACHINE_SPECS}


# ----------------------------------------------------------------------- driving a MinerSession


def _initial(job_uuid: str) -> V0InitialJobRequest:
    payload = JobStartedReceiptPayload(
        job_uuid=job_uuid,
        miner_hotkey="5Miner",
        validator_hotkey="5Vali",
        timestamp=T0,
        executor_class=ExecutorClass.ALWAYS_ON_GPU_24GB,
        max_timeout=53,
        is_organic=False,
        ttl=2,
    )
    return V0InitialJobRequest(
        job_uuid=job_uuid, job_started_receipt_payload=payload, job_started_receipt_signature="0x"
    )


def _job_request(job_uuid: str) -> V0JobRequest:
    return V0JobRequest(
        job_uuid=job_uuid,
        raw_script="x",
        docker_run_options_preset=DockerRunOptionsPreset.NONE,
        docker_run_cmd=[],
    )


# Mostly the job whose initial request is sent at the start, so that runs reach deep job states.
job_ids = st.sampled_from([OWN[0], OWN[0], OWN[0], OWN[1], FOREIGN, UNKNOWN])
job_messages: st.SearchStrategy[MinerMessage] = st.one_of(
    st.builds(V0AcceptJobRequest, job_uuid=job_ids),
    st.builds(V0DeclineJobRequest, job_uuid=job_ids),
    st.builds(V0ExecutorReadyRequest, job_uuid=job_ids),
    st.builds(V0ExecutorFailedRequest, job_uuid=job_ids),
    st.builds(
        V0JobFinishedRequest,
        job_uuid=job_ids,
        docker_process_stdout=st.text(max_size=5),
        docker_process_stderr=st.just(""),
    ),
    st.builds(
        V0JobFailedRequest,
        job_uuid=job_ids,
        docker_process_exit_status=st.none() | st.integers(0, 2),
        docker_process_stdout=st.just(""),
        docker_process_stderr=st.just("e"),
    ),
    st.builds(
        V0MachineSpecsRequest, job_uuid=job_ids, specs=st.builds(MachineSpecs, specs=st.just({"n": 1}))
    ),
)
other_messages: st.SearchStrategy[MinerMessage] = st.one_of(
    st.builds(
        V0ExecutorManifestRequest,
        manifest=st.builds(
            ExecutorManifest,
            executor_classes=st.lists(
                st.builds(
                    ExecutorClassManifest,
                    executor_class=st.sampled_from(ExecutorClass),
                    count=st.integers(0, 3),
                ),
                max_size=2,
            ),
        ),
    ),
    st.builds(
        GenericError, details=st.sampled_from([None, "boom", "Unknown validator x", "inactive validator"])
    ),
    st.builds(UnauthorizedError, code=st.sampled_from(UnauthorizedErrorCode)),
)
INVALID_MANIFEST = '{"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": 1}}'
# A step: a miner message (sent as its wire frame), a raw frame, or something the validator does.
steps = st.lists(
    st.one_of(
        job_messages,
        job_messages,
        job_messages,
        other_messages,
        st.sampled_from([INVALID_MANIFEST, "garbage", b"\x00"]),
        st.tuples(st.sampled_from(["initial", "job_request", "connect", "disconnect"]), job_ids),
    ),
    max_size=30,
)


def _session() -> MinerSession:
    registry = JobRegistry()
    other = MinerSession(
        validator_hotkey="5Vali",
        sign=lambda b: "0x",
        miner_hotkey="5Other",
        miner_address="h",
        miner_port=2,
        registry=registry,
    )
    other.register_job(FOREIGN)
    session = MinerSession(
        validator_hotkey="5Vali",
        sign=lambda b: "0x",
        miner_hotkey="5Miner",
        miner_address="h",
        miner_port=1,
        registry=registry,
        flood=MalformedFramePolicy(limit=FLOOD_LIMIT),
    )
    for job_uuid in OWN:
        session.register_job(job_uuid)
    session.outgoing(_initial(OWN[0]), T0)  # OWN[1] starts in REGISTERED
    return session


def _validator_step(session: MinerSession, action: str, job_uuid: str, now: datetime) -> JobInput | None:
    """Do what the validator does; the only error allowed is the documented one (ValueError for a
    job not registered to the session)."""
    if action == "connect":
        session.connected(now)
        return None
    if action == "disconnect":
        session.disconnected(now)
        return None
    message = _initial(job_uuid) if action == "initial" else _job_request(job_uuid)
    try:
        session.outgoing(message, now)
    except ValueError:
        assert job_uuid not in OWN
        return None
    return JobInput.INITIAL_REQUEST_SENT if action == "initial" else None


def _check_session(session: MinerSession, before: SessionState) -> None:
    after = session.state
    assert after in SESSION_REACHABLE and after in reachable(SESSION_TRANSITIONS, before)
    if before in SESSION_TERMINAL_STATES:
        assert after == before
    assert session.close_requested == (after in (SessionState.CLOSING, SessionState.CLOSING_AFTER_MANIFEST))
    assert (session.manifest is None) == (after in (SessionState.AWAITING_MANIFEST, SessionState.CLOSING))


def _check_jobs(
    session: MinerSession, before: dict[str, JobState], given_input: JobInput | None, result: Received | None
) -> None:
    for job_uuid, view in session.jobs().items():
        old, new = before[job_uuid], view.state
        assert new in JOB_REACHABLE
        assert view.outcome == JOB_OUTCOME_OF_STATE.get(new)
        if old in JOB_TERMINAL_STATES:
            assert new == old, "a job left a terminal state"
        if new != old:
            assert given_input is not None and JOB_TRANSITIONS[(old, given_input)] == new
    if result is None or given_input is None:
        return
    for item in result.events:
        if isinstance(item, IgnoredMessage) and item.job_uuid in before:
            # Refused exactly where the table has no row, for the reason the `transitions` docstring gives.
            old = before[item.job_uuid]
            assert (old, given_input) not in JOB_TRANSITIONS
            if old is not JobState.REGISTERED and item.reason is IgnoreReason.UNEXPECTED_IN_STATE:
                assert item.detail == f"job already {JOB_OUTCOME_OF_STATE[old]}"


_FULL_RUN: list[MinerMessage | str | bytes | tuple[str, str]] = [
    V0ExecutorReadyRequest(job_uuid=OWN[0]),
    V0AcceptJobRequest(job_uuid=OWN[0]),
    V0MachineSpecsRequest(job_uuid=OWN[0], specs=MachineSpecs(specs={})),
    ("job_request", OWN[0]),
    V0JobFinishedRequest(job_uuid=OWN[0], docker_process_stdout="", docker_process_stderr=""),
    V0DeclineJobRequest(job_uuid=OWN[0]),
    V0ExecutorFailedRequest(job_uuid=OWN[0]),
    V0MachineSpecsRequest(job_uuid=OWN[0], specs=MachineSpecs(specs={})),
    V0AcceptJobRequest(job_uuid=OWN[1]),
    ("initial", OWN[1]),
    V0DeclineJobRequest(job_uuid=OWN[1]),
    V0ExecutorReadyRequest(job_uuid=OWN[1]),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
@example(_FULL_RUN)
def test_session_follows_its_tables(sequence: list[MinerMessage | str | bytes | tuple[str, str]]) -> None:
    session = _session()
    for i, step in enumerate(sequence):
        now = T0 + timedelta(seconds=i)
        session_before = session.state
        jobs_before = {job_uuid: view.state for job_uuid, view in session.jobs().items()}
        result: Received | None = None
        given_input: JobInput | None = None
        if isinstance(step, tuple):
            action, job_uuid = step
            given_input = _validator_step(session, action, job_uuid, now)
        else:
            frame = step if isinstance(step, str | bytes) else dumps(step)
            result = session.receive(frame, now)  # never raises
            assert isinstance(result, Received)
            assert not any(
                isinstance(e, IgnoredMessage) and e.reason is IgnoreReason.INTERNAL_ERROR
                for e in result.events
            )
            if isinstance(step, JobMessage):
                given_input = JOB_INPUT_OF_MESSAGE[str(step.message_type)]
        _check_session(session, session_before)
        _check_jobs(session, jobs_before, given_input, result)
    event(f"session ends {session.state}")  # `--hypothesis-show-statistics`: how deep runs go
    for view in session.jobs().values():
        event(f"a job ends {view.state}")


# ------------------------------------------------------------------------------------------ docs


def _doc_rows(name: str) -> set[tuple[str, str, str]]:
    """The rows of the doc's table between `<!-- {name}:start -->` and `<!-- {name}:end -->`."""
    text = DOC.read_text()
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.S)
    assert match is not None, f"docs/miner-protocol.md has no {name} table"
    rows = set()
    for line in match.group(1).splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("State", "") and not set(cells[0]) <= set("-: "):
            rows.add((cells[0], cells[1], cells[2]))
    return rows


def test_docs_show_the_tables() -> None:
    session = {(s.value, i.value, t.value) for (s, i), t in SESSION_TRANSITIONS.items()}
    jobs = {(s.value, i.value, t.value) for (s, i), t in JOB_TRANSITIONS.items()}
    assert _doc_rows("session-transitions") == session
    assert _doc_rows("job-transitions") == jobs
