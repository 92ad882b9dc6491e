"""Wire-format tests of the validator ↔ miner messages against the examples and rules of
docs/miner-protocol.md §1.5, §2, §5."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from horde_common.crypto import keypair_from_seed, sign, verify
from horde_common.protocol.miner import (
    DEFAULT_EXECUTOR_CLASS,
    AuthenticationPayload,
    DockerRunOptionsPreset,
    ExecutorClass,
    ExecutorManifest,
    GenericError,
    HuggingfaceVolume,
    InlineVolume,
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    MultiUpload,
    MultiVolume,
    ProtocolError,
    Receipt,
    SingleFilePostUpload,
    SingleFilePutUpload,
    SingleFileVolume,
    UnauthorizedError,
    UnauthorizedErrorCode,
    V0AcceptJobRequest,
    V0AuthenticateRequest,
    V0ExecutorManifestRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    VolumeType,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
    ZipUrlVolume,
    dumps,
    job_spin_up_time,
    max_spin_up_time,
    parse_miner_message,
    parse_validator_message,
    spin_up_time,
)

# Example frames of each message of docs/miner-protocol.md §2, as the original library writes them.
VALIDATOR_EXAMPLES = [
    r'{"message_type":"V0AuthenticateRequest","payload":{"validator_hotkey":"5Gvali...","miner_hotkey":"5Fminer...","timestamp":1732795200},"signature":"0x4a1f...c80e"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0InitialJobRequest","executor_class":"spin_up-4min.gpu-24gb","base_docker_image_name":"backenddevelopersltd/compute-horde-job:v1-latest","timeout_seconds":53,"volume":{"volume_type":"inline","contents":"UEsDBBQAAAAAA...","relative_path":null},"volume_type":null,"job_started_receipt_payload":{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:00:00.120000Z","receipt_type":"JobStartedReceipt","executor_class":"spin_up-4min.gpu-24gb","max_timeout":53,"is_organic":false,"ttl":240},"job_started_receipt_signature":"0x9c2e...11"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0JobRequest","executor_class":"spin_up-4min.gpu-24gb","docker_image_name":"backenddevelopersltd/compute-horde-job:v1-latest","raw_script":"import hashlib\nimport pickle\n...","docker_run_options_preset":"nvidia_all","docker_run_cmd":["/script.py","5Fminer...-aZ3k...48chars"],"volume":null,"output_upload":null}',
    r'{"job_uuid":"...","message_type":"V0JobRequest","executor_class":"always_on.llm.a6000","docker_image_name":"docker.io/backenddevelopersltd/compute-horde-prompt-solver:v0-latest","raw_script":null,"docker_run_options_preset":"nvidia_all","docker_run_cmd":["--temperature=0.5","--top-p=0.8","--max-tokens=256","--seed","1234567","/volume/7d0c...e1.txt"],"volume":null,"output_upload":{"output_upload_type":"multi_upload","uploads":[{"output_upload_type":"single_file_put","url":"https://s3.amazonaws.com/<answers-bucket>/solved/7d0c...e1.json?X-Amz-...","relative_path":"7d0c...e1.json","signed_headers":null}],"system_output":null}}',
    r'{"message_type":"V0JobAcceptedReceiptRequest","payload":{"job_uuid":"3fa8...","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:00:01.503211Z","receipt_type":"JobAcceptedReceipt","time_accepted":"2024-11-28T10:00:01.502977Z","ttl":360},"signature":"0x..."}',
    r'{"message_type":"V0JobFinishedReceiptRequest","payload":{"job_uuid":"3fa8...","miner_hotkey":"5Fminer...","validator_hotkey":"5Gvali...","timestamp":"2024-11-28T10:05:10.000100Z","receipt_type":"JobFinishedReceipt","time_started":"2024-11-28T10:04:01.000200Z","time_took_us":31234567,"score_str":"1.3"},"signature":"0x..."}',
    r'{"message_type":"GenericError","details":"Malformed message from miner 5Fminer...(1.2.3.4:8000): Expecting value: line 1 column 1 (char 0)"}',
]
MINER_EXAMPLES = [
    r'{"message_type":"V0ExecutorManifestRequest","manifest":{"executor_classes":[{"executor_class":"spin_up-4min.gpu-24gb","count":3},{"executor_class":"always_on.llm.a6000","count":1}]}}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0AcceptJobRequest"}',
    r'{"job_uuid":"3fa85f64-5717-4562-b3fc-2c963f66afa6","message_type":"V0DeclineJobRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0ExecutorReadyRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0ExecutorFailedRequest"}',
    r'{"job_uuid":"3fa8...","message_type":"V0JobFinishedRequest","docker_process_stdout":"5IAeOQb3qzcApWUHtBzfLzYb-d0akK_K6fqTRsfFfr4=\n","docker_process_stderr":""}',
    r'{"job_uuid":"3fa8...","message_type":"V0JobFailedRequest","docker_process_exit_status":1,"docker_process_stdout":"","docker_process_stderr":"hashcat: ..."}',
    r'{"job_uuid":"3fa8...","message_type":"V0MachineSpecsRequest","specs":{"specs":{"gpu":{"count":1,"details":[{"name":"NVIDIA GeForce RTX 4090","driver":"550.54","capacity":"24564","cuda":"8.9","power_limit":"450.00","graphics_speed":"2520","memory_speed":"10501","uuid":"GPU-...","serial":"[N/A]"}]},"cpu":{"count":32,"model":"...","clocks":[3000.0]},"ram":{"total":131072000,"free":1,"available":1,"used":1},"hard_disk":{"total":1,"used":1,"free":1},"os":"Ubuntu 22.04.4 LTS"}}}',
    r'{"message_type":"GenericError","details":"Unknown validator: 5Gvali..."}',
    r'{"message_type":"UnauthorizedError","code":"TOKEN_TOO_OLD","details":"..."}',
]

JOB_UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
STARTED_PAYLOAD: dict[str, Any] = {
    "job_uuid": JOB_UUID,
    "miner_hotkey": "5Fminer",
    "validator_hotkey": "5Gvali",
    "timestamp": "2024-11-28T10:00:00.120000Z",
    "receipt_type": "JobStartedReceipt",
    "executor_class": "spin_up-4min.gpu-24gb",
    "max_timeout": 53,
    "is_organic": False,
    "ttl": 240,
}


def _initial(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_type": "V0InitialJobRequest",
        "job_uuid": JOB_UUID,
        "job_started_receipt_payload": STARTED_PAYLOAD,
        "job_started_receipt_signature": "0x00",
    }
    return base | fields


def _job_request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_type": "V0JobRequest",
        "job_uuid": JOB_UUID,
        "docker_image_name": "backenddevelopersltd/compute-horde-job:v1-latest",
        "docker_run_options_preset": "nvidia_all",
        "docker_run_cmd": [],
    }
    return base | fields


def _errors(exc: ProtocolError) -> list[dict[str, Any]]:
    errors = json.loads(exc.text)
    assert isinstance(errors, list) and errors
    return errors


# --------------------------------------------------------------------------------- round trips


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
    initial = parse_validator_message(json.dumps(_initial()))
    assert json.loads(dumps(initial)) == _initial(
        executor_class=None, base_docker_image_name=None, timeout_seconds=None, volume=None, volume_type=None
    )
    assert json.loads(dumps(GenericError())) == {"message_type": "GenericError", "details": None}


def test_omitted_and_null_optionals_are_the_same() -> None:
    assert parse_validator_message(json.dumps(_initial())) == parse_validator_message(
        json.dumps(_initial(executor_class=None, volume=None, volume_type=None, timeout_seconds=None))
    )
    assert parse_miner_message('{"message_type":"GenericError"}') == GenericError(details=None)


def test_unknown_fields_are_ignored_everywhere() -> None:
    raw = _job_request(
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
        json.dumps(_job_request()),
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
        _initial(volume={"volume_type": "inline", "contents": "x"}, volume_type="inline"),
        _initial(executor_class="always_on.gpu-80gb"),
        _initial(volume_type="floppy"),
        _initial(job_started_receipt_signature=None),
        {k: v for k, v in _initial().items() if k != "job_started_receipt_payload"},
        _initial(job_started_receipt_payload=STARTED_PAYLOAD | {"receipt_type": "JobFinishedReceipt"}),
        _initial(job_started_receipt_payload=STARTED_PAYLOAD | {"executor_class": "x"}),
        _initial(job_started_receipt_payload={k: v for k, v in STARTED_PAYLOAD.items() if k != "ttl"}),
        _job_request(docker_image_name=None, raw_script=None),
        _job_request(docker_image_name="", raw_script=""),
        _job_request(docker_run_options_preset="all"),
        {k: v for k, v in _job_request().items() if k != "docker_run_options_preset"},
        {k: v for k, v in _job_request().items() if k != "docker_run_cmd"},
        _job_request(volume={"volume_type": "floppy", "contents": "x"}),
        _job_request(volume={"contents": "x"}),
        _job_request(volume={"volume_type": "single_file", "url": "u"}),  # relative_path required
        _job_request(
            volume={
                "volume_type": "multi_volume",
                "volumes": [{"volume_type": "multi_volume", "volumes": []}],
            }
        ),
        _job_request(output_upload={"output_upload_type": "single_file_put", "url": "u"}),
        _job_request(
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
        parse_validator_message(json.dumps(_initial(volume_type="inline"))), V0InitialJobRequest
    )
    with_volume = parse_validator_message(
        json.dumps(_initial(volume={"volume_type": "zip_url", "contents": "u"}))
    )
    assert isinstance(with_volume, V0InitialJobRequest) and with_volume.volume_type is None


def test_raw_script_alone_is_fine() -> None:
    message = parse_validator_message(json.dumps(_job_request(docker_image_name=None, raw_script="print(1)")))
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


# ------------------------------------------------------------------------------------- manifests


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


# ------------------------------------------------------------------- bounded frames (issue 6 §1)


def _manifest_json(entries: list[dict[str, Any]], **extra: Any) -> str:
    body = {"message_type": "V0ExecutorManifestRequest", "manifest": {"executor_classes": entries}}
    return json.dumps({**body, **extra})


def _finished_json(stdout: str, **extra: Any) -> str:
    return json.dumps(
        {
            "message_type": "V0JobFinishedRequest",
            "job_uuid": "a",
            "docker_process_stdout": stdout,
            "docker_process_stderr": "",
            **extra,
        }
    )


def test_manifest_entries_are_capped() -> None:
    from horde_common.protocol.miner.miner_messages import MAX_MANIFEST_ENTRIES

    entry = {"executor_class": "always_on.gpu-24gb", "count": 1}
    ok = parse_miner_message(_manifest_json([entry] * MAX_MANIFEST_ENTRIES))
    assert isinstance(ok, V0ExecutorManifestRequest)
    assert ok.manifest.executor_counts() == {ExecutorClass.ALWAYS_ON_GPU_24GB: MAX_MANIFEST_ENTRIES}
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(_manifest_json([entry] * (MAX_MANIFEST_ENTRIES + 1)))
    assert "too_long" in info.value.text


def test_a_manifest_of_100000_entries_is_refused_before_decoding() -> None:
    import time
    import tracemalloc

    raw = _manifest_json([{"executor_class": "always_on.gpu-24gb", "count": 1}] * 100_000)
    for frame in (raw, raw.encode()):
        tracemalloc.start()
        started = time.process_time()
        try:
            with pytest.raises(ProtocolError) as info:
                parse_miner_message(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "too large for V0ExecutorManifestRequest" in info.value.text
        # Nothing of the 5 MB frame was decoded into objects (a binary frame is only made text).
        assert peak < 1_000_000 + (len(frame) if isinstance(frame, bytes) else 0)
        assert time.process_time() - started < 0.5


def test_frame_limits_follow_the_message_type() -> None:
    from horde_common.protocol.miner.parsing import MAX_MANIFEST_FRAME, MAX_OTHER_FRAME

    # A manifest padded past its limit (here with an ignored field), below the small-frame size too.
    padded = _manifest_json([{"executor_class": 0, "count": 1}], pad="x" * MAX_MANIFEST_FRAME)
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(padded)
    assert "too large for V0ExecutorManifestRequest" in info.value.text
    # A job's final answer may carry megabytes of output.
    big = parse_miner_message(_finished_json("y" * 3_000_000))
    assert isinstance(big, V0JobFinishedRequest) and len(big.docker_process_stdout) == 3_000_000
    # Any other message is small.
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(
            json.dumps({"message_type": "V0AcceptJobRequest", "job_uuid": "a", "pad": "z" * MAX_OTHER_FRAME})
        )
    assert "too large for V0AcceptJobRequest" in info.value.text


def test_a_large_frame_must_be_made_of_strings() -> None:
    # A final answer whose bulk is 100,000 tiny JSON values would decode to far more than its size.
    with pytest.raises(ProtocolError) as info:
        parse_miner_message(_finished_json("", junk=[[]] * 100_000))
    assert "JSON tokens" in info.value.text
    # Braces and quotes inside a string are not structure.
    ok = parse_miner_message(_finished_json('{"a": [1, 2]}, ' * 20_000))
    assert isinstance(ok, V0JobFinishedRequest)


def test_a_decoy_message_type_does_not_buy_a_larger_limit() -> None:
    # The decoder keeps the last of repeated keys and decodes escapes in them: so does the size check.
    entries = [{"executor_class": "always_on.gpu-24gb", "count": 1}] * 5_000
    body = json.dumps({"executor_classes": entries})
    for spelled in ('"message_type"', '"message\\u005ftype"'):
        raw = (
            '{"message_type": "V0JobFinishedRequest", "nested": {"message_type": "V0JobFailedRequest"}, '
            f'{spelled}: "V0ExecutorManifestRequest", "manifest": {body}}}'
        )
        with pytest.raises(ProtocolError) as info:
            parse_miner_message(raw)
        assert "too large for V0ExecutorManifestRequest" in info.value.text
