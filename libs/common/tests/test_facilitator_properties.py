"""Property tests: no frame, however broken, makes `FacilitatorSession.receive` raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.facilitator import (
    FacilitatorSession,
    InvalidFrame,
    JobRequested,
    LinkState,
    ResponseReceived,
    UnknownMessage,
    V0AuthenticationRequest,
    V2JobRejected,
)

T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
AUTH = V0AuthenticationRequest.from_keypair(keypair_from_seed("//Alice"))
SIGNERS = frozenset({keypair_from_seed("//Alice").ss58_address})

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "type",
    "uuid",
    "miner_hotkey",
    "executor_class",
    "docker_image",
    "raw_script",
    "args",
    "env",
    "use_gpu",
    "input_url",
    "output_url",
    "volume",
    "output_upload",
    "signature",
    "status",
    "errors",
]
FIELD_VALUES: dict[str, Any] = {
    "type": st.sampled_from(["job.new", "job.old"]),
    "executor_class": st.sampled_from(["spin_up-4min.gpu-24gb", "always_on.llm.a6000", "x"]),
    "args": st.lists(st.text(max_size=5), max_size=3),
    "env": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    "use_gpu": st.booleans(),
    "volume": st.none()
    | st.fixed_dictionaries(
        {
            "volume_type": st.sampled_from(["zip_url", "inline", "multi_volume"]),
            "contents": st.text(max_size=5),
        }
    ),
    "signature": st.none()
    | st.fixed_dictionaries(
        {"signature": st.text(max_size=90), "signatory": st.text(max_size=50), "timestamp_ns": st.integers()}
    ),
    "status": st.sampled_from(["success", "error", "ok"]),
}
MESSAGE_SHAPES = st.fixed_dictionaries(
    {
        "message_type": st.sampled_from(
            ["V0JobRequest", "V1JobRequest", "V2JobRequest", "V0Heartbeat", "Other"]
        )
    },
    optional={name: FIELD_VALUES.get(name, JSON_VALUES) for name in FIELDS},
) | st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6)

DISPATCH_EVENTS = (InvalidFrame, UnknownMessage, ResponseReceived, JobRequested, V2JobRejected)


def ready() -> FacilitatorSession:
    session = FacilitatorSession(AUTH, SIGNERS)
    session.start(T0)
    session.receive('{"status":"success"}', T0)
    return session


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_bytes_never_raise(frame: bytes | str) -> None:
    for session in (ready(), FacilitatorSession(AUTH, SIGNERS)):
        if session.state is LinkState.CONNECTING:
            session.start(T0)
        events = session.receive(frame, T0)
        assert len(events) == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES | MESSAGE_SHAPES)
def test_random_json_shapes_never_raise(value: Any) -> None:
    session = ready()
    [event] = session.receive(json.dumps(value), T0)
    assert isinstance(event, DISPATCH_EVENTS)
    assert session.state is LinkState.READY
    # The authentication step takes the same frames without raising either.
    fresh = FacilitatorSession(AUTH, SIGNERS)
    fresh.start(T0)
    assert len(fresh.receive(json.dumps(value).encode(), T0)) == 1
