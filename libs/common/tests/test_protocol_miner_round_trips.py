"""Round trips of the validator <-> miner messages through their models, against the example frames
of docs/miner-protocol.md §2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from horde_common.protocol.miner import (
    DockerRunOptionsPreset,
    GenericError,
    HuggingfaceVolume,
    InlineVolume,
    MultiUpload,
    MultiVolume,
    SingleFilePostUpload,
    SingleFilePutUpload,
    SingleFileVolume,
    V0AcceptJobRequest,
    V0JobFailedRequest,
    V0JobRequest,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
    ZipUrlVolume,
    dumps,
    parse_miner_message,
    parse_validator_message,
)
from testing.miner_frames import MINER_EXAMPLES, VALIDATOR_EXAMPLES, initial_frame, job_request_frame


@pytest.mark.parametrize("raw", VALIDATOR_EXAMPLES)
def test_validator_examples_round_trip_exactly(raw: str) -> None:
    message = parse_validator_message(raw)
    assert json.loads(dumps(message)) == json.loads(raw)
    assert parse_validator_message(dumps(message)) == message


@pytest.mark.parametrize("raw", MINER_EXAMPLES)
def test_miner_examples_round_trip_exactly(raw: str) -> None:
    message = parse_miner_message(raw)
    assert json.loads(dumps(message)) == json.loads(raw)
    assert parse_miner_message(dumps(message)) == message


def test_binary_frames_are_accepted() -> None:
    assert parse_miner_message(MINER_EXAMPLES[1].encode()) == parse_miner_message(MINER_EXAMPLES[1])
    assert isinstance(parse_miner_message(bytearray(MINER_EXAMPLES[1].encode())), V0AcceptJobRequest)


def test_dumps_is_compact_and_writes_every_field_with_null() -> None:
    assert dumps(V0AcceptJobRequest(job_uuid="a")) == '{"job_uuid":"a","message_type":"V0AcceptJobRequest"}'
    failed = parse_miner_message(
        '{"job_uuid":"a","message_type":"V0JobFailedRequest","docker_process_stdout":"","docker_process_stderr":""}'
    )
    assert isinstance(failed, V0JobFailedRequest)
    assert failed.docker_process_exit_status is None
    assert '"docker_process_exit_status":null' in dumps(failed)
    initial = parse_validator_message(json.dumps(initial_frame()))
    assert json.loads(dumps(initial)) == initial_frame(
        executor_class=None, base_docker_image_name=None, timeout_seconds=None, volume=None, volume_type=None
    )
    assert json.loads(dumps(GenericError())) == {"message_type": "GenericError", "details": None}


def test_omitted_and_null_optionals_are_the_same() -> None:
    assert parse_validator_message(json.dumps(initial_frame())) == parse_validator_message(
        json.dumps(initial_frame(executor_class=None, volume=None, volume_type=None, timeout_seconds=None))
    )
    assert parse_miner_message('{"message_type":"GenericError"}') == GenericError(details=None)


def test_unknown_fields_are_ignored_everywhere() -> None:
    raw = job_request_frame(
        extra=1, volume={"volume_type": "inline", "contents": "x", "future": True}, output_upload=None
    )
    raw["docker_run_options_preset"] = "none"
    message = parse_validator_message(json.dumps(raw))
    assert isinstance(message, V0JobRequest)
    assert message.docker_run_options_preset is DockerRunOptionsPreset.NONE
    assert "extra" not in dumps(message) and "future" not in dumps(message)
    accept = parse_miner_message('{"job_uuid":"a","message_type":"V0AcceptJobRequest","reason":"busy"}')
    assert accept == V0AcceptJobRequest(job_uuid="a")


@pytest.mark.parametrize(
    "volume",
    [
        InlineVolume(contents="UEsDBA==", relative_path="sub"),
        ZipUrlVolume(contents="https://example.com/v.zip"),
        SingleFileVolume(url="https://example.com/p.txt", relative_path="p.txt"),
        HuggingfaceVolume(repo_id="org/model", revision="main"),
        MultiVolume(
            volumes=[
                InlineVolume(contents="UEsDBA=="),
                ZipUrlVolume(contents="https://e/x.zip", relative_path="z"),
                SingleFileVolume(url="https://e/y", relative_path="y"),
                HuggingfaceVolume(repo_id="r"),
            ]
        ),
    ],
)
def test_every_volume_variant_round_trips(volume: Any) -> None:
    message = V0JobRequest(
        job_uuid="a",
        raw_script="print(1)",
        docker_run_options_preset=DockerRunOptionsPreset.NONE,
        docker_run_cmd=[],
        volume=volume,
    )
    parsed = parse_validator_message(dumps(message))
    assert parsed == message
    assert isinstance(parsed, V0JobRequest) and type(parsed.volume) is type(volume)


@pytest.mark.parametrize(
    "upload",
    [
        ZipAndHttpPostUpload(url="https://e/p", form_fields={"k": "v"}),
        ZipAndHttpPutUpload(url="https://e/p"),
        SingleFilePostUpload(
            url="https://e/p", relative_path="a.json", form_fields=None, signed_headers={"h": "v"}
        ),
        SingleFilePutUpload(url="https://e/p", relative_path="a.json"),
        MultiUpload(
            uploads=[
                SingleFilePutUpload(url="https://e/1", relative_path="1"),
                SingleFilePostUpload(url="u", relative_path="2"),
            ],
            system_output=ZipAndHttpPutUpload(url="https://e/sys"),
        ),
    ],
)
def test_every_output_upload_variant_round_trips(upload: Any) -> None:
    message = V0JobRequest(
        job_uuid="a",
        docker_image_name="img",
        docker_run_options_preset=DockerRunOptionsPreset.NVIDIA_ALL,
        docker_run_cmd=["x"],
        output_upload=upload,
    )
    parsed = parse_validator_message(dumps(message))
    assert parsed == message
    assert isinstance(parsed, V0JobRequest) and type(parsed.output_upload) is type(upload)
