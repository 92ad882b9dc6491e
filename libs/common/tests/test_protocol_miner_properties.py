"""Property tests: arbitrary and mutated miner frames never crash a `MinerSession` or change a result."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
    ExecutorClass,
    IgnoredMessage,
    IgnoreReason,
    JobRegistry,
    JobStartedReceiptPayload,
    MalformedMessage,
    MinerSession,
    ProtocolError,
    Received,
    V0InitialJobRequest,
    V0JobRequest,
    parse_miner_message,
    parse_validator_message,
)

T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
OWN = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
FOREIGN = "33333333-3333-4333-8333-333333333333"
UNKNOWN = "44444444-4444-4444-8444-444444444444"
ALL_JOBS = [*OWN, FOREIGN, UNKNOWN]


def _session(registry: JobRegistry, miner: str) -> MinerSession:
    return MinerSession(
        validator_hotkey="5Vali",
        sign=lambda blob: "0x" + "00" * 64,
        miner_hotkey=miner,
        miner_address="10.0.0.1",
        miner_port=8000,
        registry=registry,
    )


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


def _setup() -> tuple[MinerSession, MinerSession]:
    registry = JobRegistry()
    own, other = _session(registry, "5Miner"), _session(registry, "5Other")
    own.connected(T0)
    for job_uuid in OWN:
        own.register_job(job_uuid)
        own.outgoing(_initial(job_uuid), T0)
    other.register_job(FOREIGN)
    other.outgoing(_initial(FOREIGN), T0)
    return own, other


def _valid(kind: str, job_uuid: str, variant: int) -> dict[str, Any]:
    body: dict[str, Any] = {"message_type": kind, "job_uuid": job_uuid}
    if kind == "V0JobFinishedRequest":
        body |= {"docker_process_stdout": f"out{variant}", "docker_process_stderr": ""}
    elif kind == "V0JobFailedRequest":
        body |= {
            "docker_process_exit_status": variant,
            "docker_process_stdout": "",
            "docker_process_stderr": "e",
        }
    elif kind == "V0MachineSpecsRequest":
        body |= {"specs": {"specs": {"v": variant}}}
    elif kind == "V0ExecutorManifestRequest":
        body = {
            "message_type": kind,
            "manifest": {"executor_classes": [{"executor_class": "always_on.gpu-24gb", "count": variant}]},
        }
    elif kind == "GenericError":
        body = {"message_type": kind, "details": f"error {variant}"}
    return body


KINDS = [
    "V0AcceptJobRequest",
    "V0DeclineJobRequest",
    "V0ExecutorReadyRequest",
    "V0ExecutorFailedRequest",
    "V0JobFinishedRequest",
    "V0JobFailedRequest",
    "V0MachineSpecsRequest",
    "V0ExecutorManifestRequest",
    "GenericError",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def mutated_frame(draw: st.DrawFn) -> str | bytes:
    body = _valid(draw(st.sampled_from(KINDS)), draw(st.sampled_from(ALL_JOBS)), draw(st.integers(-2, 5)))
    # Half the frames stay valid, so that sequences reach deep job states.
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "set", "type", "bytes", "truncate", "wrap"]))
    if mutation == "drop" and body:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif mutation == "set":
        body[draw(st.sampled_from([*sorted(body), "extra"]))] = draw(json_values)
    elif mutation == "type":
        body["message_type"] = draw(st.sampled_from([*KINDS, "V0JobRequest", "UnauthorizedError", "", "x"]))
    text = json.dumps(body)
    if mutation == "bytes":
        raw = bytearray(text.encode())
        index = draw(st.integers(0, len(raw) - 1))
        raw[index] = draw(st.integers(0, 255))
        return bytes(raw)
    if mutation == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if mutation == "wrap":
        return json.dumps([body])
    return text


def _snapshot(session: MinerSession) -> dict[str, tuple[Any, ...]]:
    return {
        uuid: (
            view.outcome,
            view.accept,
            view.accept_at,
            view.executor,
            view.executor_at,
            view.final,
            view.final_at,
        )
        for uuid, view in session.jobs().items()
    }


def _check_received(result: Received) -> None:
    assert isinstance(result, Received)
    for item in result.events:
        if isinstance(item, IgnoredMessage):
            assert item.reason is not IgnoreReason.INTERNAL_ERROR
        if isinstance(item, MalformedMessage):
            # replies are budgeted (`flood`): small garbage gets none
            assert item.reply is None or item.reply in result.outgoing


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200) | st.text(max_size=200), max_size=10))
def test_random_frames_never_raise(frames: list[str | bytes]) -> None:
    own, _ = _setup()
    for i, raw in enumerate(frames):
        _check_received(own.receive(raw, T0 + timedelta(seconds=i)))


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_parsers_only_raise_protocol_error(raw: str | bytes) -> None:
    for parse in (parse_miner_message, parse_validator_message):
        try:
            parse(raw)
        except ProtocolError as exc:
            assert isinstance(exc.text, str)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(mutated_frame(), st.booleans()),
        max_size=25,
    )
)
def test_mutated_frames_never_raise_and_results_never_change(steps: list[tuple[str | bytes, bool]]) -> None:
    own, other = _setup()
    other_before = _snapshot(other)
    settled: dict[str, tuple[Any, ...]] = {}
    for i, (raw, send_job_request) in enumerate(steps):
        now = T0 + timedelta(seconds=i)
        if send_job_request:
            own.outgoing(
                V0JobRequest(
                    job_uuid=OWN[i % 2],
                    raw_script="x",
                    docker_run_options_preset=DockerRunOptionsPreset.NONE,
                    docker_run_cmd=[],
                ),
                now,
            )
        result = own.receive(raw, now)
        _check_received(result)
        for e in result.events:
            event(type(e).__name__)
        for uuid, state in _snapshot(own).items():
            if uuid in settled:
                assert state == settled[uuid], "a job's result changed after it was settled"
            elif state[0] is not None:  # the outcome
                settled[uuid] = state
    assert set(own.jobs()) == set(OWN)  # unknown and foreign ids never become jobs here
    assert _snapshot(other) == other_before  # nothing said on this connection touches another miner's job


@settings(max_examples=200)
@given(st.lists(mutated_frame(), max_size=25))
def test_first_answer_of_each_kind_is_never_replaced(frames: list[str | bytes]) -> None:
    own, _ = _setup()
    first: dict[tuple[str, str], Any] = {}
    for i, raw in enumerate(frames):
        own.receive(raw, T0 + timedelta(seconds=i))
        for uuid, view in own.jobs().items():
            for kind, value in (("accept", view.accept), ("executor", view.executor), ("final", view.final)):
                if value is None:
                    assert (uuid, kind) not in first
                    continue
                first.setdefault((uuid, kind), value)
                assert first[(uuid, kind)] == value
    manifest = own.manifest
    for i, raw in enumerate(frames):
        own.receive(raw, T0 + timedelta(seconds=100 + i))
    if manifest is not None:
        assert own.manifest == manifest
