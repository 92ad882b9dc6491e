"""The facilitator link's messages and session against docs/organic.md §1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from horde_common.crypto import keypair_from_seed, verify
from horde_common.protocol.facilitator import (
    HEARTBEAT_PERIOD,
    LINK_TRANSITIONS,
    MAX_ARGS,
    MAX_ENV_ENTRIES,
    MAX_FRAME_BYTES,
    Authenticated,
    AuthFailed,
    ErrorDetail,
    FacilitatorSession,
    FrameError,
    FrameErrorReason,
    IgnoredFrame,
    InvalidFrame,
    JobRequested,
    JobStatus,
    JobStatusMetadata,
    LinkInput,
    LinkState,
    MinerResponse,
    Response,
    ResponseReceived,
    SendRefused,
    UnknownMessage,
    V0AuthenticationRequest,
    V0Heartbeat,
    V0JobRequest,
    V0JobStatusUpdate,
    V0MachineSpecsUpdate,
    V1JobRequest,
    V2JobRequest,
    parse_inbound,
)
from horde_common.protocol.miner import (
    ExecutorClass,
    MultiUpload,
    MultiVolume,
    SingleFileVolume,
    ZipUrlVolume,
)

T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
ALICE = keypair_from_seed("//Alice")

V0_FRAME = (
    '{"type":"job.new","message_type":"V0JobRequest","uuid":"7b0c","miner_hotkey":"5Miner",'
    '"executor_class":"spin_up-4min.gpu-24gb","docker_image":"python:3.11-slim","raw_script":"",'
    '"args":["python","-c","print(1)"],"env":{},"use_gpu":false,"input_url":"","output_url":""}'
)
V1_FRAME = (
    '{"type":"job.new","message_type":"V1JobRequest","uuid":"7b0c","miner_hotkey":"5Miner",'
    '"executor_class":"spin_up-4min.gpu-24gb","docker_image":"python:3.11-slim","raw_script":"",'
    '"args":["python","-c","print(1)"],"env":{},"use_gpu":true,"volume":{"volume_type":"multi_volume",'
    '"volumes":[{"volume_type":"single_file","url":"https://x/input.txt","relative_path":"input.txt"},'
    '{"volume_type":"zip_url","contents":"https://x/in.zip","relative_path":"zip/"}]},'
    '"output_upload":{"output_upload_type":"multi_upload","uploads":[{"output_upload_type":"single_file_put",'
    '"url":"https://s3/out.txt?sig","relative_path":"out.txt","signed_headers":null}],'
    '"system_output":{"output_upload_type":"zip_and_http_put","url":"https://s3/sys.zip?sig"}}}'
)
V2_FRAME_UNSIGNED = (
    '{"type":"job.new","message_type":"V2JobRequest","signature":null,"uuid":"u2",'
    '"executor_class":"always_on.llm.a6000","docker_image":"img","raw_script":"","args":[],"env":{},'
    '"use_gpu":false,"volume":{"volume_type":"zip_url","contents":"https://x/in.zip","relative_path":null},'
    '"output_upload":{"output_upload_type":"zip_and_http_put","url":"https://x/o.zip"}}'
)


def ready_session(signers: frozenset[str] = frozenset()) -> FacilitatorSession:
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), signers)
    session.start(T0)
    assert session.receive(b'{"status":"success","errors":[]}', T0) == [Authenticated(T0)]
    return session


# --------------------------------------------------------------------------- authentication


def test_auth_frame_signs_the_raw_public_key() -> None:
    """docs/organic.md §1.3: the first frame, verified over the 32 raw public-key bytes."""
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    frame = session.start(T0)
    data = json.loads(frame)
    assert list(data) == ["message_type", "public_key", "signature"]
    assert data["message_type"] == "V0AuthenticationRequest"
    assert data["public_key"] == "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
    assert data["signature"].startswith("0x") and len(data["signature"]) == 2 + 128
    assert data["signature"] == data["signature"].lower()
    # Verified over the 32 raw bytes (not their hex), by the signer's SS58 address.
    assert verify(ALICE.ss58_address, bytes.fromhex(data["public_key"]), data["signature"])
    assert not verify(ALICE.ss58_address, data["public_key"], data["signature"])
    assert V0AuthenticationRequest.model_validate_json(frame).verify_signature()
    assert frame == json.dumps(data, separators=(",", ":"))
    assert session.state is LinkState.AUTHENTICATING
    with pytest.raises(RuntimeError):
        session.start(T0)


def test_auth_request_rejects_extras_and_bad_signatures() -> None:
    good = V0AuthenticationRequest.from_keypair(ALICE)
    with pytest.raises(ValueError):
        V0AuthenticationRequest.model_validate({**good.model_dump(), "nonce": 1})
    bob = keypair_from_seed("//Bob")
    forged = V0AuthenticationRequest(
        public_key=good.public_key, signature=V0AuthenticationRequest.from_keypair(bob).signature
    )
    assert not forged.verify_signature()
    assert not V0AuthenticationRequest(public_key="zz", signature="0x00").verify_signature()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            '{"status":"error","errors":[{"msg":"Validator not found","type":"auth.validator_not_found"}]}',
            "refused",
        ),
        ('{"message_type":"V0Heartbeat"}', "did not receive Response"),
        (V0_FRAME, "did not receive Response"),
        ("not json", "did not receive Response"),
        (b"\xff\xfe", "did not receive Response"),
        ('{"status":"success","errors":[],"extra":1}', "did not receive Response"),
    ],
)
def test_anything_but_success_fails_authentication(reply: str | bytes, reason: str) -> None:
    """docs/organic.md §1.3: a non-success or non-Response reply fails the connection (reconnect)."""
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    session.start(T0)
    [event] = session.receive(reply, T0)
    assert isinstance(event, AuthFailed) and reason in event.reason
    assert session.state is LinkState.CLOSED
    assert isinstance(
        session.status_update("u", JobStatus.ACCEPTED, comment="", miner_response=None), SendRefused
    )
    assert session.due_heartbeat(T0 + timedelta(hours=1)) is None


def test_auth_error_keeps_the_facilitator_errors() -> None:
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    session.start(T0)
    [event] = session.receive(
        '{"status":"error","errors":[{"msg":"bad","type":"auth.signature_invalid","loc":["x"]}]}', T0
    )
    assert isinstance(event, AuthFailed)
    assert event.errors[0].type == "auth.signature_invalid" and event.errors[0].help == ""
    assert event.errors[0].model_extra == {"loc": ["x"]}


def test_frames_outside_reading_states_are_ignored() -> None:
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    assert session.receive(V0_FRAME, T0) == [IgnoredFrame(LinkState.CONNECTING, T0)]
    session.start(T0)
    session.receive('{"status":"success"}', T0)
    session.connection_closed()
    assert session.receive(V0_FRAME, T0) == [IgnoredFrame(LinkState.CLOSED, T0)]
    assert session.next_heartbeat_at is None


def test_transition_table_is_closed_and_terminal() -> None:
    states = {target for target in LINK_TRANSITIONS.values()} | {s for s, _ in LINK_TRANSITIONS}
    assert states == set(LinkState)
    assert {t for (s, _), t in LINK_TRANSITIONS.items() if s is LinkState.CLOSED} == {LinkState.CLOSED}
    assert all((s, LinkInput.CONNECTION_CLOSED) in LINK_TRANSITIONS for s in LinkState)


# ------------------------------------------------------------------------------ heartbeats


def test_heartbeat_every_period_only_while_authenticated() -> None:
    """docs/organic.md §1.8: the first heartbeat one period after authentication, then every 60 s."""
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    assert session.due_heartbeat(T0) is None
    session.start(T0)
    assert session.due_heartbeat(T0 + timedelta(minutes=5)) is None
    auth_at = T0 + timedelta(seconds=7)
    session.receive('{"status":"success"}', auth_at)
    assert HEARTBEAT_PERIOD == timedelta(seconds=60)
    assert session.next_heartbeat_at == auth_at + HEARTBEAT_PERIOD
    assert session.due_heartbeat(auth_at) is None
    assert session.due_heartbeat(auth_at + timedelta(seconds=59.999)) is None
    clock = auth_at + timedelta(seconds=60)
    assert session.due_heartbeat(clock) == '{"message_type":"V0Heartbeat"}'
    assert session.due_heartbeat(clock) is None
    # A late tick sends one heartbeat, not a burst, and the cadence restarts from it.
    late = clock + timedelta(seconds=200)
    assert session.due_heartbeat(late) is not None
    assert session.due_heartbeat(late + timedelta(seconds=59)) is None
    assert session.due_heartbeat(late + timedelta(seconds=60)) is not None
    session.connection_closed()
    assert session.due_heartbeat(late + timedelta(hours=1)) is None


def test_heartbeat_has_no_other_fields() -> None:
    assert V0Heartbeat().model_dump_json() == '{"message_type":"V0Heartbeat"}'
    with pytest.raises(ValueError):
        V0Heartbeat.model_validate({"message_type": "V0Heartbeat", "at": 1})


# --------------------------------------------------------------------------- status updates


def test_status_update_refused_before_authentication() -> None:
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), frozenset())
    refused = session.status_update("u", JobStatus.ACCEPTED, comment="", miner_response=None)
    assert refused == SendRefused("V0JobStatusUpdate", LinkState.CONNECTING)
    session.start(T0)
    refused = session.machine_specs_update(miner_hotkey="m", validator_hotkey="v", specs={}, batch_id="b")
    assert refused == SendRefused("V0MachineSpecsUpdate", LinkState.AUTHENTICATING)
    assert session.counters.sends_refused == 2
    assert session.counters.frames_out == 1  # the authentication only


@pytest.mark.parametrize(
    ("status", "comment", "miner_type", "stdout", "expected"),
    [
        (
            JobStatus.ACCEPTED,
            "",
            "V0AcceptJobRequest",
            "",
            '{"message_type":"V0JobStatusUpdate","uuid":"3f0c","status":"accepted","metadata":{"comment":"",'
            '"miner_response":{"job_uuid":"3f0c","message_type":"V0AcceptJobRequest","docker_process_stderr":"",'
            '"docker_process_stdout":""}}}',
        ),
        (
            JobStatus.COMPLETED,
            "Miner 5Fxy(1.2.3.4:8000) finished: stdout='hello\\n' stderr=''",
            "V0JobFinishedRequest",
            "hello\n",
            '{"message_type":"V0JobStatusUpdate","uuid":"3f0c","status":"completed","metadata":{"comment":'
            '"Miner 5Fxy(1.2.3.4:8000) finished: stdout=\'hello\\\\n\' stderr=\'\'","miner_response":{"job_uuid":'
            '"3f0c","message_type":"V0JobFinishedRequest","docker_process_stderr":"","docker_process_stdout":"hello\\n"}}}',
        ),
        (
            JobStatus.FAILED,
            "Miner 5Fxy(1.2.3.4:8000) timed out while preparing executor for job 3f0c after 300 seconds",
            None,
            "",
            '{"message_type":"V0JobStatusUpdate","uuid":"3f0c","status":"failed","metadata":{"comment":"Miner '
            '5Fxy(1.2.3.4:8000) timed out while preparing executor for job 3f0c after 300 seconds",'
            '"miner_response":{"job_uuid":"3f0c","message_type":null,"docker_process_stderr":"",'
            '"docker_process_stdout":""}}}',
        ),
    ],
)
def test_status_update_frames_are_byte_exact(
    status: JobStatus, comment: str, miner_type: str | None, stdout: str, expected: str
) -> None:
    """docs/organic.md §1.4: the frames the original sent for accepted, completed and failed."""
    session = ready_session()
    response = MinerResponse(
        job_uuid="3f0c", message_type=miner_type, docker_process_stderr="", docker_process_stdout=stdout
    )
    frame = session.status_update("3f0c", status, comment=comment, miner_response=response)
    assert frame == expected
    assert isinstance(frame, str)
    assert V0JobStatusUpdate.model_validate_json(frame).model_dump_json() == expected


def test_status_vocabulary_and_metadata_extras() -> None:
    assert [s.value for s in JobStatus] == ["accepted", "rejected", "failed", "completed"]
    with pytest.raises(ValueError):
        V0JobStatusUpdate.model_validate({"uuid": "u", "status": "running", "metadata": None})
    with pytest.raises(ValueError):
        V0JobStatusUpdate.model_validate({"uuid": "u", "status": "failed", "metadata": None, "extra": 1})
    update = V0JobStatusUpdate.model_validate(
        {
            "uuid": "u",
            "status": "rejected",
            "metadata": {"comment": "c", "new": 1, "miner_response": {**_miner_response(), "more": True}},
        }
    )
    assert isinstance(update.metadata, JobStatusMetadata)
    assert update.metadata.model_extra == {"new": 1}
    assert V0JobStatusUpdate(uuid="u", status=JobStatus.REJECTED).model_dump_json() == (
        '{"message_type":"V0JobStatusUpdate","uuid":"u","status":"rejected","metadata":null}'
    )


def _miner_response() -> dict[str, Any]:
    return {"job_uuid": "u", "message_type": None, "docker_process_stderr": "", "docker_process_stdout": ""}


def test_machine_specs_update_frame() -> None:
    session = ready_session()
    specs = {"os": "Ubuntu", "gpu": {"count": 1, "details": [{"name": "NVIDIA RTX A6000"}]}}
    frame = session.machine_specs_update(
        miner_hotkey="5Miner", validator_hotkey="5Val", specs=specs, batch_id="b1"
    )
    assert frame == (
        '{"message_type":"V0MachineSpecsUpdate","miner_hotkey":"5Miner","validator_hotkey":"5Val",'
        '"specs":{"os":"Ubuntu","gpu":{"count":1,"details":[{"name":"NVIDIA RTX A6000"}]}},"batch_id":"b1"}'
    )
    with pytest.raises(ValueError):  # batch_id is required
        V0MachineSpecsUpdate.model_validate({"miner_hotkey": "m", "validator_hotkey": "v", "specs": {}})


# ------------------------------------------------------------------------------ job requests


@pytest.mark.parametrize("frame", [V0_FRAME, V1_FRAME, V2_FRAME_UNSIGNED])
def test_job_requests_round_trip_with_exact_field_names(frame: str) -> None:
    message = parse_inbound(frame)
    assert isinstance(message, V0JobRequest | V1JobRequest | V2JobRequest)
    assert message.model_dump_json() == frame


def test_v0_and_v1_requests_become_jobs() -> None:
    """docs/organic.md §1.4, §1.7: V0 and V1 with `"type":"job.new"` run."""
    session = ready_session()
    [v0] = session.receive(V0_FRAME, T0)
    [v1] = session.receive(V1_FRAME.encode(), T0)
    assert isinstance(v0, JobRequested) and isinstance(v0.request, V0JobRequest)
    assert v0.request.executor_class is ExecutorClass.SPIN_UP_4MIN_GPU_24GB
    assert isinstance(v1, JobRequested) and isinstance(v1.request, V1JobRequest)
    assert isinstance(v1.request.volume, MultiVolume)
    assert isinstance(v1.request.volume.volumes[0], SingleFileVolume)
    assert isinstance(v1.request.volume.volumes[1], ZipUrlVolume)
    assert isinstance(v1.request.output_upload, MultiUpload)
    assert session.counters.jobs_requested == 2


def test_type_field_is_optional_but_fixed() -> None:
    data = json.loads(V0_FRAME)
    del data["type"]
    assert isinstance(parse_inbound(json.dumps(data)), V0JobRequest)
    data["type"] = "job.old"
    error = parse_inbound(json.dumps(data))
    assert isinstance(error, FrameError) and error.reason is FrameErrorReason.INVALID_MESSAGE
    assert error.message_type == "V0JobRequest"


def test_responses_after_auth_are_only_reported() -> None:
    session = ready_session()
    [event] = session.receive('{"status":"error","errors":[{"msg":"m","type":"t"}]}', T0)
    assert isinstance(event, ResponseReceived)
    assert event.response == Response(status="error", errors=[ErrorDetail(msg="m", type="t")])


def _v0(**changes: Any) -> str:
    data = json.loads(V0_FRAME)
    data.update(changes)
    return json.dumps(data)


def _v1(**changes: Any) -> str:
    data = json.loads(V1_FRAME)
    data.update(changes)
    return json.dumps(data)


def _v2(**changes: Any) -> str:
    data = json.loads(V2_FRAME_UNSIGNED)
    data.update(changes)
    return json.dumps(data)


def _without(field: str) -> str:
    data = json.loads(V0_FRAME)
    del data[field]
    return json.dumps(data)


INVALID_FRAMES: list[tuple[str, str | bytes, FrameErrorReason]] = [
    ("bad json", "{not json", FrameErrorReason.BAD_JSON),
    ("empty", "", FrameErrorReason.BAD_JSON),
    ("not utf-8", b'{"status":"\xff"}', FrameErrorReason.NOT_UTF8),
    ("oversize", " " * (MAX_FRAME_BYTES + 1), FrameErrorReason.OVERSIZE),
    ("oversize multibyte", "é" * (MAX_FRAME_BYTES // 2 + 1), FrameErrorReason.OVERSIZE),
    ("array", "[1,2]", FrameErrorReason.NOT_AN_OBJECT),
    ("nested too deep", "[" * 100_000 + "]" * 100_000, FrameErrorReason.BAD_JSON),
    ("legacy bad job", '{"job_request":"invalid"}', FrameErrorReason.INVALID_MESSAGE),
    ("missing field", _without("uuid"), FrameErrorReason.INVALID_MESSAGE),
    ("missing executor class", _without("executor_class"), FrameErrorReason.INVALID_MESSAGE),
    ("extra field", _v0(priority=1), FrameErrorReason.INVALID_MESSAGE),
    ("wrong type args", _v0(args="python"), FrameErrorReason.INVALID_MESSAGE),
    ("wrong type env", _v0(env=["A=1"]), FrameErrorReason.INVALID_MESSAGE),
    ("wrong type use_gpu", _v0(use_gpu=[]), FrameErrorReason.INVALID_MESSAGE),
    ("unknown executor class", _v0(executor_class="always_on.gpu-80gb"), FrameErrorReason.INVALID_MESSAGE),
    ("no image, no script", _v0(docker_image="", raw_script=""), FrameErrorReason.INVALID_MESSAGE),
    ("too many args", _v0(args=["a"] * (MAX_ARGS + 1)), FrameErrorReason.INVALID_MESSAGE),
    (
        "too much env",
        _v0(env={str(i): "" for i in range(MAX_ENV_ENTRIES + 1)}),
        FrameErrorReason.INVALID_MESSAGE,
    ),
    ("huge uuid", _v0(uuid="u" * 10_000), FrameErrorReason.INVALID_MESSAGE),
    ("non-string type", '{"message_type":7}', FrameErrorReason.INVALID_MESSAGE),
    ("bad status", '{"status":"ok"}', FrameErrorReason.INVALID_MESSAGE),
    ("response extra", '{"status":"success","errors":[],"x":1}', FrameErrorReason.INVALID_MESSAGE),
    ("error without type", '{"status":"error","errors":[{"msg":"m"}]}', FrameErrorReason.INVALID_MESSAGE),
    ("bad volume", _v1(volume={"volume_type": "nfs", "path": "/x"}), FrameErrorReason.INVALID_MESSAGE),
    ("v1 with v0 urls", _v1(input_url=""), FrameErrorReason.INVALID_MESSAGE),
    ("v2 with a miner", _v2(miner_hotkey="5Miner"), FrameErrorReason.INVALID_MESSAGE),
    ("bad signature base64", _v2(signature={"signature": "abc"}), FrameErrorReason.INVALID_MESSAGE),
    ("signature extra", _v2(signature={"signature": "", "key": 1}), FrameErrorReason.INVALID_MESSAGE),
]


@pytest.mark.parametrize(("name", "frame", "reason"), INVALID_FRAMES, ids=[c[0] for c in INVALID_FRAMES])
def test_invalid_frames_become_events(name: str, frame: str | bytes, reason: FrameErrorReason) -> None:
    """docs/organic.md §1.7: ignored, no reply, the link stays up and later jobs still run."""
    session = ready_session()
    [event] = session.receive(frame, T0)
    assert isinstance(event, InvalidFrame), event
    assert event.reason is reason
    assert len(event.detail) < 2100
    assert session.state is LinkState.READY
    [job] = session.receive(V0_FRAME, T0)
    assert isinstance(job, JobRequested)
    assert session.counters.frames_invalid == 1 and session.counters.frames_in == 3


@pytest.mark.parametrize("message_type", ["V0JobCheated", "V3JobRequest", "V0Heartbeat", "x" * 1000])
def test_unknown_message_types(message_type: str) -> None:
    session = ready_session()
    [event] = session.receive(json.dumps({"message_type": message_type, "uuid": "u"}), T0)
    assert isinstance(event, UnknownMessage)
    assert event.message_type.startswith(message_type[:64]) and len(event.message_type) <= 67
    assert session.state is LinkState.READY


def test_bool_and_enum_coercion_matches_the_reference_lax_mode() -> None:
    # The original validated in pydantic's default (lax) mode: "true" is a boolean there too.
    message = parse_inbound(_v0(use_gpu="true"))
    assert isinstance(message, V0JobRequest) and message.use_gpu is True
