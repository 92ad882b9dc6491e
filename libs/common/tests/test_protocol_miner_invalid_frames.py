"""Invalid validator <-> miner frames: each rejected with the error docs/miner-protocol.md §1.5 and §2
describe."""

from __future__ import annotations

import json
from typing import Any

import pytest

from horde_common.protocol.miner import (
    ProtocolError,
    V0InitialJobRequest,
    V0JobRequest,
    parse_miner_message,
    parse_validator_message,
)
from testing.miner_frames import STARTED_PAYLOAD, VALIDATOR_EXAMPLES, initial_frame, job_request_frame


def _errors(exc: ProtocolError) -> list[dict[str, Any]]:
    errors = json.loads(exc.text)
    assert isinstance(errors, list) and errors
    return errors


# ---------------------------------------------------------------------------------- invalid frames


def test_bad_json_error_text_is_the_decoder_message() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_miner_message("")
    assert info.value.text == "Expecting value: line 1 column 1 (char 0)"
    with pytest.raises(ProtocolError) as info:
        parse_miner_message('{"message_type": ')
    assert info.value.text.startswith("Expecting value: line 1 column")


@pytest.mark.parametrize(
    "raw",
    [
        '{"message_type":"V0FutureRequest","job_uuid":"a"}',
        '{"job_uuid":"a"}',
        '{"message_type":null}',
        "[]",
        "42",
        '"V0AcceptJobRequest"',
        # validator → miner types are not valid from a miner
        json.dumps(job_request_frame()),
        VALIDATOR_EXAMPLES[0],
        # later protocol versions (Appendix A) are unknown here
        '{"message_type":"V0StreamingJobReadyRequest","job_uuid":"a"}',
        '{"message_type":"V0VolumesReadyRequest","job_uuid":"a"}',
    ],
)
def test_unknown_or_missing_message_type_from_miner(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(raw)
    errors = _errors(info.value)
    assert all("input" not in e and "url" not in e for e in errors)


@pytest.mark.parametrize(
    "raw",
    [
        '{"message_type":"V0AcceptJobRequest"}',  # missing job_uuid
        '{"message_type":"V0AcceptJobRequest","job_uuid":123}',  # wrong type
        '{"message_type":"V0JobFinishedRequest","job_uuid":"a","docker_process_stdout":""}',
        '{"message_type":"V0JobFailedRequest","job_uuid":"a","docker_process_stdout":"","docker_process_stderr":""'
        ',"docker_process_exit_status":"x"}',
        '{"message_type":"UnauthorizedError","code":"NOPE"}',
        '{"message_type":"UnauthorizedError"}',
        '{"message_type":"V0MachineSpecsRequest","job_uuid":"a","specs":{}}',
        '{"message_type":"V0MachineSpecsRequest","job_uuid":"a","specs":[1]}',
        '{"message_type":"V0ExecutorManifestRequest","manifest":{}}',
        '{"message_type":"V0ExecutorManifestRequest","manifest":{"executor_classes":[{"executor_class":0}]}}',
        # an unknown class string makes the whole manifest invalid (docs/miner-protocol.md §6 #15)
        '{"message_type":"V0ExecutorManifestRequest","manifest":{"executor_classes":['
        '{"executor_class":"spin_up-4min.gpu-24gb","count":3},{"executor_class":"always_on.gpu-80gb","count":1}]}}',
    ],
)
def test_schema_errors_from_miner(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(raw)
    _errors(info.value)


@pytest.mark.parametrize(
    "data",
    [
        initial_frame(volume={"volume_type": "inline", "contents": "x"}, volume_type="inline"),
        initial_frame(executor_class="always_on.gpu-80gb"),
        initial_frame(volume_type="floppy"),
        initial_frame(job_started_receipt_signature=None),
        {k: v for k, v in initial_frame().items() if k != "job_started_receipt_payload"},
        initial_frame(job_started_receipt_payload=STARTED_PAYLOAD | {"receipt_type": "JobFinishedReceipt"}),
        initial_frame(job_started_receipt_payload=STARTED_PAYLOAD | {"executor_class": "x"}),
        initial_frame(job_started_receipt_payload={k: v for k, v in STARTED_PAYLOAD.items() if k != "ttl"}),
        job_request_frame(docker_image_name=None, raw_script=None),
        job_request_frame(docker_image_name="", raw_script=""),
        job_request_frame(docker_run_options_preset="all"),
        {k: v for k, v in job_request_frame().items() if k != "docker_run_options_preset"},
        {k: v for k, v in job_request_frame().items() if k != "docker_run_cmd"},
        job_request_frame(volume={"volume_type": "floppy", "contents": "x"}),
        job_request_frame(volume={"contents": "x"}),
        job_request_frame(volume={"volume_type": "single_file", "url": "u"}),  # relative_path required
        job_request_frame(
            volume={
                "volume_type": "multi_volume",
                "volumes": [{"volume_type": "multi_volume", "volumes": []}],
            }
        ),
        job_request_frame(output_upload={"output_upload_type": "single_file_put", "url": "u"}),
        job_request_frame(
            output_upload={
                "output_upload_type": "multi_upload",
                "uploads": [{"output_upload_type": "zip_and_http_put", "url": "u"}],
            }
        ),
        {
            "message_type": "V0AuthenticateRequest",
            "payload": {"validator_hotkey": "v", "miner_hotkey": "m"},
            "signature": "0x",
        },
        {"message_type": "V0AcceptJobRequest", "job_uuid": "a"},  # miner → validator type
    ],
)
def test_invalid_validator_messages(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_validator_message(json.dumps(data))


def test_volume_or_volume_type_alone_is_fine() -> None:
    assert isinstance(
        parse_validator_message(json.dumps(initial_frame(volume_type="inline"))), V0InitialJobRequest
    )
    with_volume = parse_validator_message(
        json.dumps(initial_frame(volume={"volume_type": "zip_url", "contents": "u"}))
    )
    assert isinstance(with_volume, V0InitialJobRequest) and with_volume.volume_type is None


def test_raw_script_alone_is_fine() -> None:
    message = parse_validator_message(
        json.dumps(job_request_frame(docker_image_name=None, raw_script="print(1)"))
    )
    assert isinstance(message, V0JobRequest) and message.docker_image_name is None


def test_huge_bad_frames_are_not_echoed_in_the_error() -> None:
    secretish = "A" * 100_000
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(json.dumps({"message_type": "V0AcceptJobRequest", "job_uuid": [secretish]}))
    assert secretish[:100] not in info.value.text
    with pytest.raises(ProtocolError) as info:
        parse_miner_message("[" * 100_000)
    assert len(info.value.text) < 1000


def test_error_text_never_exceeds_the_cap() -> None:
    many = [{"executor_class": "bad", "count": "x"}] * 5000
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(
            json.dumps({"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": many}})
        )
    assert len(info.value.text) <= 10_100
