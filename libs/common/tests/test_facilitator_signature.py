"""Bit-exact V2 job-request signatures (docs/organic.md §1.6)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from horde_common.crypto import keypair_from_seed
from horde_common.protocol.facilitator import (
    FacilitatorSession,
    JobRequested,
    SignatureErrorKind,
    V0AuthenticationRequest,
    V2JobRejected,
    V2JobRequest,
    parse_inbound,
    parse_signers,
    sign_v2_request,
    signed_fields_json,
    signing_digest,
    verify_v2_request,
)

T0 = datetime(2024, 11, 28, 10, 0, tzinfo=UTC)
ALICE = keypair_from_seed("//Alice")
BOB = keypair_from_seed("//Bob")
SIGNERS = frozenset({ALICE.ss58_address})
TS = 1729622861880448856

BASE: dict[str, Any] = {
    "type": "job.new",
    "message_type": "V2JobRequest",
    "signature": None,
    "uuid": "u2",
    "executor_class": "always_on.llm.a6000",
    "docker_image": "img",
    "raw_script": "",
    "args": [],
    "env": {},
    "use_gpu": False,
    "volume": {"volume_type": "zip_url", "contents": "https://x/in.zip", "relative_path": None},
    "output_upload": {"output_upload_type": "zip_and_http_put", "url": "https://x/o.zip"},
}
MULTI: dict[str, Any] = {
    **BASE,
    "args": ["python", "-c", "print(1)"],
    "env": {"B": "2", "A": "1"},
    "use_gpu": True,
    "volume": {
        "volume_type": "multi_volume",
        "volumes": [
            {"volume_type": "single_file", "url": "https://x/input.txt", "relative_path": "input.txt"},
            {"volume_type": "huggingface_volume", "repo_id": "org/model"},
            {"volume_type": "inline", "contents": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
        ],
    },
    "output_upload": {
        "output_upload_type": "multi_upload",
        "uploads": [
            {
                "output_upload_type": "single_file_put",
                "url": "https://s3/out.txt?sig",
                "relative_path": "out.txt",
            },
            {"output_upload_type": "single_file_post", "url": "https://s3/p", "relative_path": "p.txt"},
        ],
        "system_output": {"output_upload_type": "zip_and_http_put", "url": "https://s3/sys.zip?sig"},
    },
}


def request(data: dict[str, Any]) -> V2JobRequest:
    message = parse_inbound(json.dumps(data))
    assert isinstance(message, V2JobRequest), message
    return message


def signed(data: dict[str, Any], signer: Any = ALICE, ts: int = TS) -> dict[str, Any]:
    """The wire form of `data` signed by `signer`."""
    result: dict[str, Any] = json.loads(sign_v2_request(request(data), signer, ts).model_dump_json())
    return result


def test_generic_digest_vector() -> None:
    payload = {"b": 2, "array": [1, 2, 3], "dict": {"subdict:": {"null": None}}}
    assert signing_digest(payload, 1718845323456788992).hex() == (
        "2a22a1498ee1ce0fc6ee7414dd61d2a635790346ec02ea3acb761cfb0353aa2a"
        "b895eea87a70148ac7cf2b185367b8d387ab8b22c5e0eed955409078a1d2e3a8"
    )
    assert signing_digest(b"raw", 1) == hashlib.blake2b(b"\x00" * 7 + b"\x01" + b"raw").digest()


def test_signed_fields_of_a_single_volume_and_upload() -> None:
    assert signed_fields_json(request(BASE)) == (
        '{"executor_class":"always_on.llm.a6000","docker_image":"img","raw_script":"","args":"","env":{},'
        '"use_gpu":false,"volumes":[{"volume_type":"zip_url","contents":"https://x/in.zip","relative_path":null}],'
        '"uploads":[{"output_upload_type":"zip_and_http_put","url":"https://x/o.zip"}]}'
    )


def test_signed_fields_of_multi_volume_and_upload() -> None:
    """Inner entries only, every field in schema order with nulls; `system_output` is not signed."""
    assert signed_fields_json(request(MULTI)) == (
        '{"executor_class":"always_on.llm.a6000","docker_image":"img","raw_script":"","args":"python -c print(1)",'
        '"env":{"B":"2","A":"1"},"use_gpu":true,"volumes":['
        '{"volume_type":"single_file","url":"https://x/input.txt","relative_path":"input.txt"},'
        '{"volume_type":"huggingface_volume","repo_id":"org/model","revision":null,"relative_path":null},'
        '{"volume_type":"inline","contents":"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==","relative_path":null}],'
        '"uploads":[{"output_upload_type":"single_file_put","url":"https://s3/out.txt?sig","relative_path":"out.txt",'
        '"signed_headers":null},{"output_upload_type":"single_file_post","url":"https://s3/p","form_fields":null,'
        '"relative_path":"p.txt","signed_headers":null}]}'
    )
    no_volumes = {**BASE, "volume": None, "output_upload": None}
    assert signed_fields_json(request(no_volumes)).endswith('"volumes":[],"uploads":[]}')


def test_the_signed_message_is_the_json_string_literal_of_s() -> None:
    """S keeps non-ASCII raw; the signed bytes are S re-encoded as a JSON string with ASCII escapes."""
    data = {**BASE, "env": {"NAME": 'é"\\'}}
    s = signed_fields_json(request(data))
    assert '"env":{"NAME":"é\\"\\\\"}' in s
    message = json.dumps(s).encode()
    assert b"\\u00e9" in message and message.startswith(b'"{\\"executor_class')
    expected = hashlib.blake2b(TS.to_bytes(8, "big") + message).digest()
    assert signing_digest(s, TS) == expected
    wire = signed(data)
    raw = base64.b64decode(wire["signature"]["signature"])
    assert ALICE.verify(expected, raw)


def test_valid_signature_runs_the_job() -> None:
    """docs/organic.md §1.6: a correct signature by a whitelisted signer is accepted."""
    wire = signed(MULTI)
    assert list(wire)[:4] == ["type", "message_type", "signature", "uuid"]
    assert list(wire["signature"]) == ["signature_type", "signatory", "timestamp_ns", "signature"]
    assert wire["signature"]["signature_type"] == "bittensor"
    assert len(base64.b64decode(wire["signature"]["signature"])) == 64
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), SIGNERS)
    session.start(T0)
    session.receive('{"status":"success"}', T0)
    [event] = session.receive(json.dumps(wire, separators=(",", ":")), T0)
    assert isinstance(event, JobRequested) and isinstance(event.request, V2JobRequest)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("executor_class", "always_on.gpu-24gb"),
        ("docker_image", "img2"),
        ("raw_script", "print(2)"),
        ("args", ["python", "-c", "print(2)"]),
        ("env", {"A": "1", "B": "2"}),  # same entries, another order: another signed text
        ("use_gpu", False),
        ("volume", None),
        ("output_upload", {"output_upload_type": "zip_and_http_put", "url": "https://evil/o.zip"}),
    ],
)
def test_tampered_payload_is_rejected(field: str, value: Any) -> None:
    wire = signed(MULTI)
    wire[field] = value
    error = verify_v2_request(request(wire), SIGNERS)
    assert error is not None and error.kind is SignatureErrorKind.MISMATCH
    assert error.signatory == ALICE.ss58_address


def test_unsigned_fields_can_change() -> None:
    """As in the original: the uuid, the zip of stdout/stderr and how args split are not signed."""
    wire = signed(MULTI)
    wire["uuid"] = "other"
    wire["output_upload"]["system_output"] = {
        "output_upload_type": "zip_and_http_put",
        "url": "https://other",
    }
    wire["args"] = ["python -c", "print(1)"]
    assert verify_v2_request(request(wire), SIGNERS) is None


def test_changed_timestamp_is_rejected() -> None:
    wire = signed(BASE)
    wire["signature"]["timestamp_ns"] += 1
    error = verify_v2_request(request(wire), SIGNERS)
    assert error is not None and error.kind is SignatureErrorKind.MISMATCH


def test_no_expiry() -> None:
    """The timestamp is signed but never checked for age: a 1970 signature still verifies."""
    assert verify_v2_request(request(signed(BASE, ts=1)), SIGNERS) is None


def test_unsigned_request_is_rejected() -> None:
    error = verify_v2_request(request(BASE), SIGNERS)
    assert error is not None and error.kind is SignatureErrorKind.MISSING


def test_signer_not_whitelisted() -> None:
    session = FacilitatorSession(V0AuthenticationRequest.from_keypair(ALICE), SIGNERS)
    session.start(T0)
    session.receive('{"status":"success"}', T0)
    [event] = session.receive(json.dumps(signed(BASE, signer=BOB)), T0)
    assert isinstance(event, V2JobRejected)
    assert (
        event.error.kind is SignatureErrorKind.NOT_WHITELISTED and event.error.signatory == BOB.ss58_address
    )
    assert session.counters.v2_rejected == 1 and session.counters.jobs_requested == 0
    error = verify_v2_request(request(signed(BASE)), frozenset())
    assert error is not None and error.kind is SignatureErrorKind.NOT_WHITELISTED


def test_signed_by_another_key_than_the_signatory() -> None:
    wire = signed(BASE, signer=BOB)
    wire["signature"]["signatory"] = ALICE.ss58_address
    error = verify_v2_request(request(wire), SIGNERS)
    assert error is not None and error.kind is SignatureErrorKind.MISMATCH


def test_unsupported_signature_type() -> None:
    wire = signed(BASE)
    wire["signature"]["signature_type"] = "ed25519"
    error = verify_v2_request(request(wire), SIGNERS)
    assert error is not None and error.kind is SignatureErrorKind.UNSUPPORTED_TYPE


@pytest.mark.parametrize(
    ("change", "signers"),
    [
        ({"signature": base64.b64encode(b"\x00" * 63).decode()}, SIGNERS),
        ({"signature": ""}, SIGNERS),
        ({"timestamp_ns": -1}, SIGNERS),
        ({"timestamp_ns": 2**64}, SIGNERS),
        ({"signatory": "not-ss58"}, frozenset({"not-ss58"})),
    ],
)
def test_malformed_signatures(change: dict[str, Any], signers: frozenset[str]) -> None:
    wire = signed(BASE)
    wire["signature"].update(change)
    error = verify_v2_request(request(wire), signers)
    assert error is not None and error.kind is SignatureErrorKind.MALFORMED


def test_parse_signers() -> None:
    text = f" {ALICE.ss58_address}, ,{BOB.ss58_address},{ALICE.ss58_address} "
    assert parse_signers(text) == frozenset({ALICE.ss58_address, BOB.ss58_address})
    assert parse_signers("") == frozenset()
    with pytest.raises(ValueError, match="not an SS58 address"):
        parse_signers(f"{ALICE.ss58_address},5Typo")
