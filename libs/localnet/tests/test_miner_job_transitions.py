"""The simulated miner's job states (`horde_localnet.miners.jobs.JOB_TRANSITIONS`): the table is
closed, its final states are final, and `MinerJob.set_state` refuses every move it does not list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde_common.protocol.miner import ExecutorClass, JobStartedReceiptPayload, V0InitialJobRequest
from horde_localnet.miners.jobs import (
    ACTIVE_STATES,
    JOB_TRANSITIONS,
    TERMINAL_STATES,
    IllegalTransition,
    JobState,
    MinerJob,
)

JOB_UUID = "11111111-1111-4111-8111-111111111111"
T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)


def _reachable(start: JobState) -> set[JobState]:
    seen, todo = {start}, [start]
    while todo:
        for target in JOB_TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


REACHABLE = _reachable(JobState.RESERVING)


def _job(notified: list[JobState]) -> MinerJob:
    payload = JobStartedReceiptPayload(
        job_uuid=JOB_UUID,
        miner_hotkey="5Miner",
        validator_hotkey="5Vali",
        timestamp=T0,
        executor_class=ExecutorClass.ALWAYS_ON_GPU_24GB,
        max_timeout=53,
        is_organic=False,
        ttl=2,
    )
    initial = V0InitialJobRequest(
        job_uuid=JOB_UUID, job_started_receipt_payload=payload, job_started_receipt_signature="0x"
    )
    job = MinerJob(JOB_UUID, "5Vali", ExecutorClass.ALWAYS_ON_GPU_24GB, initial)
    job.notify = lambda: notified.append(job.state)
    return job


def test_table_is_closed_and_every_state_reachable() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert all(targets <= set(JobState) for targets in JOB_TRANSITIONS.values())
    assert set(JobState) == REACHABLE
    assert all(state not in targets for state, targets in JOB_TRANSITIONS.items()), "no self-loops"
    assert TERMINAL_STATES == {
        JobState.DECLINED,
        JobState.EXECUTOR_FAILED,
        JobState.FINISHED,
        JobState.FAILED,
        JobState.ABANDONED,
    }
    # A validator's new connection joins only jobs that can still change.
    assert not ACTIVE_STATES & TERMINAL_STATES


def test_illegal_transition_is_refused_with_a_clear_error() -> None:
    notified: list[JobState] = []
    job = _job(notified)
    with pytest.raises(IllegalTransition, match="illegal transition reserving -> running"):
        job.set_state(JobState.RUNNING)
    assert job.state is JobState.RESERVING and notified == []


def test_the_honest_path_is_legal() -> None:
    notified: list[JobState] = []
    job = _job(notified)
    path = [JobState.SPINNING_UP, JobState.READY, JobState.RUNNING, JobState.FINISHED]
    for state in path:
        job.set_state(state)
    assert notified == path


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(JobState), max_size=20))
def test_random_moves_follow_the_table(moves: list[JobState]) -> None:
    notified: list[JobState] = []
    job = _job(notified)
    for target in moves:
        before, changed_at = job.state, job.changed_at
        if target in JOB_TRANSITIONS[before]:
            job.set_state(target)
            assert job.state is target and notified[-1] is target
        else:
            with pytest.raises(IllegalTransition):
                job.set_state(target)
            assert job.state is before and job.changed_at == changed_at
        assert job.state in REACHABLE
        if before in TERMINAL_STATES:
            assert job.state is before, "a job left a final state"
