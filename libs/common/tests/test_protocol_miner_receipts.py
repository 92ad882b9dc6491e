"""Manifests, signatures and receipts, and executor classes of the validator <-> miner protocol
(docs/miner-protocol.md §2, §5)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from horde_common.crypto import keypair_from_seed, sign, verify
from horde_common.protocol.miner import (
    DEFAULT_EXECUTOR_CLASS,
    AuthenticationPayload,
    ExecutorClass,
    ExecutorManifest,
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    Receipt,
    UnauthorizedError,
    UnauthorizedErrorCode,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0MachineSpecsRequest,
    VolumeType,
    dumps,
    job_spin_up_time,
    max_spin_up_time,
    parse_miner_message,
    parse_validator_message,
    spin_up_time,
)
from testing.miner_frames import JOB_UUID, MINER_EXAMPLES


def test_manifest_integer_zero_is_the_default_class() -> None:
    message = parse_miner_message(
        '{"message_type":"V0ExecutorManifestRequest","manifest":{"executor_classes":['
        '{"executor_class":0,"count":2},{"executor_class":"spin_up-4min.gpu-24gb","count":3},'
        '{"executor_class":"always_on.llm.a6000","count":0},{"executor_class":"always_on.gpu-24gb","count":-4},'
        '{"executor_class":7,"count":5}]}}'
    )
    assert isinstance(message, V0ExecutorManifestRequest)
    manifest = message.manifest
    assert manifest.executor_counts() == {DEFAULT_EXECUTOR_CLASS: 5}
    assert manifest.invalid_classes() == [7]
    assert manifest.total_count == 5
    # the integer form is kept on the wire as it came
    assert '"executor_class":0' in dumps(message)


def test_empty_manifest_counts_nothing() -> None:
    assert ExecutorManifest(executor_classes=[]).executor_counts() == {}


# ------------------------------------------------------------------------------ signatures & receipts


def test_authenticate_request_verifies_like_the_miner_checks_it() -> None:
    keypair = keypair_from_seed("//horde-validator-0")
    payload = AuthenticationPayload(
        validator_hotkey=keypair.ss58_address, miner_hotkey="5Fminer", timestamp=1732795200
    )
    request = V0AuthenticateRequest(payload=payload, signature=sign(keypair, payload.blob_for_signing()))
    received = parse_validator_message(dumps(request))
    assert isinstance(received, V0AuthenticateRequest)
    blob = json.dumps(json.loads(dumps(received))["payload"], sort_keys=True)  # the miner's own recomputation
    assert blob == received.blob_for_signing()
    assert verify(keypair.ss58_address, blob, received.signature)


@pytest.mark.parametrize("microsecond", [0, 1, 120000, 999999])
def test_receipts_verify_after_a_miner_style_reparse(microsecond: int) -> None:
    """docs/miner-protocol.md §1.7: the miner re-parses the payload and re-serialises it before verifying."""
    keypair = keypair_from_seed("//horde-validator-0")
    t = datetime(2024, 11, 28, 10, 0, 1, microsecond, tzinfo=UTC)
    common = {"job_uuid": JOB_UUID, "miner_hotkey": "5Fminer", "validator_hotkey": keypair.ss58_address}
    started = JobStartedReceiptPayload(
        **common,
        timestamp=t,
        executor_class=ExecutorClass.ALWAYS_ON_LLM_A6000,
        max_timeout=48,
        is_organic=False,
        ttl=240,
    )
    accepted = JobAcceptedReceiptPayload(**common, timestamp=t, time_accepted=t, ttl=360)
    finished = JobFinishedReceiptPayload(
        **common, timestamp=t, time_started=t, time_took_us=-5, score_str="0.333333"
    )
    frames = [
        V0InitialJobRequest(
            job_uuid=JOB_UUID,
            executor_class=ExecutorClass.ALWAYS_ON_LLM_A6000,
            job_started_receipt_payload=started,
            job_started_receipt_signature=sign(keypair, started.blob_for_signing()),
        ),
        V0JobAcceptedReceiptRequest(payload=accepted, signature=sign(keypair, accepted.blob_for_signing())),
        V0JobFinishedReceiptRequest(payload=finished, signature=sign(keypair, finished.blob_for_signing())),
    ]
    for frame in frames:
        wire = json.loads(dumps(frame))
        if isinstance(frame, V0InitialJobRequest):
            payload_json, signature = (
                wire["job_started_receipt_payload"],
                wire["job_started_receipt_signature"],
            )
        else:
            payload_json, signature = wire["payload"], wire["signature"]
        for key in ("timestamp", "time_accepted", "time_started"):
            if key in payload_json:
                assert payload_json[key].endswith("Z")
                assert ("." in payload_json[key]) == bool(microsecond)
        reparsed = parse_validator_message(json.dumps(wire))
        reparsed_payload = getattr(reparsed, "payload", None) or reparsed.job_started_receipt_payload  # type: ignore[union-attr]
        assert (
            json.dumps(reparsed_payload.model_dump(mode="json"), sort_keys=True)
            == reparsed_payload.blob_for_signing()
        )
        assert verify(keypair.ss58_address, reparsed_payload.blob_for_signing(), signature)


def test_receipt_model_verifies_both_signatures() -> None:
    validator, miner = keypair_from_seed("//horde-validator-0"), keypair_from_seed("//horde-miner-0")
    payload = JobFinishedReceiptPayload(
        job_uuid=JOB_UUID,
        miner_hotkey=miner.ss58_address,
        validator_hotkey=validator.ss58_address,
        timestamp=datetime(2024, 11, 28, tzinfo=UTC),
        time_started=datetime(2024, 11, 28, tzinfo=UTC),
        time_took_us=0,
        score_str="0",
    )
    receipt = Receipt(
        payload=payload,
        validator_signature=sign(validator, payload.blob_for_signing()),
        miner_signature=sign(miner, payload.blob_for_signing()),
    )
    again = Receipt.model_validate_json(receipt.model_dump_json())
    assert again.verify_validator_signature() and again.verify_miner_signature()
    swapped = again.model_copy(update={"miner_signature": again.validator_signature})
    assert not swapped.verify_miner_signature()
    assert not Receipt(payload=payload, validator_signature="0x").verify_validator_signature()
    assert not Receipt(payload=payload, validator_signature="0x").verify_miner_signature()


def test_unauthorized_error_codes() -> None:
    for code in UnauthorizedErrorCode:
        message = parse_miner_message(json.dumps({"message_type": "UnauthorizedError", "code": code.value}))
        assert message == UnauthorizedError(code=code)


def test_machine_specs_keep_free_form_content() -> None:
    message = parse_miner_message(MINER_EXAMPLES[7])
    assert isinstance(message, V0MachineSpecsRequest)
    assert message.specs.specs["gpu"]["details"][0]["name"] == "NVIDIA GeForce RTX 4090"


def test_finished_request_keeps_stdout_verbatim() -> None:
    message = parse_miner_message(MINER_EXAMPLES[5])
    assert isinstance(message, V0JobFinishedRequest)
    assert message.docker_process_stdout == "5IAeOQb3qzcApWUHtBzfLzYb-d0akK_K6fqTRsfFfr4=\n"


# -------------------------------------------------------------------------------- executor classes


def test_executor_class_wire_values_and_timing() -> None:
    assert [c.value for c in ExecutorClass] == [
        "spin_up-4min.gpu-24gb",
        "always_on.gpu-24gb",
        "always_on.llm.a6000",
    ]
    assert DEFAULT_EXECUTOR_CLASS is ExecutorClass.SPIN_UP_4MIN_GPU_24GB
    assert spin_up_time(ExecutorClass.ALWAYS_ON_GPU_24GB) == 0
    assert job_spin_up_time(ExecutorClass.ALWAYS_ON_GPU_24GB) == 2
    assert job_spin_up_time(ExecutorClass.SPIN_UP_4MIN_GPU_24GB) == 240
    assert job_spin_up_time(ExecutorClass.ALWAYS_ON_LLM_A6000) == 240
    assert max_spin_up_time({ExecutorClass.ALWAYS_ON_GPU_24GB}) == 2
    assert max_spin_up_time([ExecutorClass.ALWAYS_ON_GPU_24GB, ExecutorClass.ALWAYS_ON_LLM_A6000]) == 240
    assert max_spin_up_time([]) == 2
    assert VolumeType("huggingface_volume") is VolumeType.HUGGINGFACE_VOLUME


def test_protocol_package_imports_no_io_library() -> None:
    code = (
        "import sys, horde_common.protocol.miner\n"
        "bad = [m for m in ('websockets','aio_pika','sqlalchemy','asyncpg','httpx','boto3','fastapi') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
